//! End-to-end tests: the real `ecr-push` binary against real servers started here (see
//! `harness`). One test binary, so the harness is compiled once.

mod harness;

mod action;
mod bad_input;
mod ecr;
mod fanout;
mod faults;
mod formats;
mod harness_selftest;
mod ops;
mod secrets;
mod single_platform;
