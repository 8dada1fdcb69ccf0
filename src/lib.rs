//! `ecr-push`: push an image that a build already produced (docker save tarball, OCI layout,
//! oci-archive) to Amazon ECR or any OCI registry, layer by layer over the distribution API,
//! with no Docker daemon, and verify what the registry serves.
//!
//! Data flow: [`settings`] validates the inputs; [`source`] reads the image into a graph of
//! documents and re-openable [`blob`] sources; [`push`] uploads through the [`registry`] client;
//! [`verify`] reads it back; [`report`] is the only module that prints.

pub mod app;
pub mod aws;
pub mod blob;
pub mod cli;
pub mod clock;
pub mod compress;
pub mod docker_config;
pub mod env;
pub mod github;
pub mod ops;
pub mod push;
pub mod registry;
pub mod report;
pub mod reuse;
pub mod secret;
pub mod settings;
pub mod source;
pub mod verify;
