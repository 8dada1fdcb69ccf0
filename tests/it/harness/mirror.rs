//! The registry as ECR would be: a proxy in front of the real registry that mirrors every
//! manifest the registry accepts into moto's ECR API (`PutImage` with the exact bytes, media
//! type, tag and digest), before the client gets the answer.
//!
//! In real ECR an image pushed over the registry API is in the ECR API at once (`DescribeImages`,
//! scans, `BatchDeleteImage`); in the harness, the registry (data plane) and moto (control plane)
//! know nothing of each other. With the mirror, an end-to-end test can go push → ECR API sees
//! it → scan, status, images, tag, cleanup, as against ECR.
//!
//! Errors from moto are kept (a test asserts there were none) rather than panicking in the
//! proxy's thread; re-putting a manifest under a tag it already has is not an error (ECR
//! accepts the same PUT again).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::moto::{access_key, ecr_call};
use super::proxy::{Action, Proxy, PutManifest, Seen};
use super::sha256;

pub struct Mirror {
    proxy: Proxy,
    errors: Arc<Mutex<Vec<String>>>,
    mirrored: Arc<Mutex<Vec<PutManifest>>>,
}

/// Where the images go in moto.
#[derive(Clone)]
struct Target {
    moto_url: String,
    access_key: String,
    account: String,
    region: String,
}

impl Mirror {
    /// A mirror in front of `registry_url` into moto at `moto_url`, as `account` in `region`.
    pub fn start(registry_url: &str, moto_url: &str, account: &str, region: &str) -> Self {
        Self::start_with(registry_url, moto_url, account, region, |_| Action::Forward)
    }

    /// [`Mirror::start`], with `hook` deciding about each request as in [`Proxy::start`].
    pub fn start_with(
        registry_url: &str,
        moto_url: &str,
        account: &str,
        region: &str,
        hook: impl Fn(&Seen) -> Action + Send + Sync + 'static,
    ) -> Self {
        let target = Target {
            moto_url: moto_url.to_owned(),
            access_key: access_key(moto_url, account),
            account: account.to_owned(),
            region: region.to_owned(),
        };
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mirrored = Arc::new(Mutex::new(Vec::new()));
        // Digests already put untagged: moto mishandles an untagged PutImage of a manifest it
        // has (it records a null tag), and ECR would change nothing.
        let known: Mutex<HashSet<(String, String)>> = Mutex::new(HashSet::new());
        let (errors_seen, mirrored_seen) = (Arc::clone(&errors), Arc::clone(&mirrored));
        let proxy = Proxy::start_observing_manifests(registry_url, hook, move |put| {
            let digest = sha256(&put.body);
            let tag = (!put.reference.starts_with("sha256:")).then_some(put.reference.as_str());
            let key = (put.repository.clone(), digest.clone());
            if tag.is_none() && !known.lock().unwrap().insert(key) {
                return;
            }
            if let Err(error) = target.put_image(put, &digest, tag) {
                errors_seen.lock().unwrap().push(error);
            }
            mirrored_seen.lock().unwrap().push(put.clone());
        });
        Self {
            proxy,
            errors,
            mirrored,
        }
    }

    /// The registry URL to give ecr-push.
    pub fn url(&self) -> String {
        self.proxy.url()
    }

    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// What moto refused, one message each.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Every manifest PUT mirrored so far, in order.
    pub fn mirrored(&self) -> Vec<PutManifest> {
        self.mirrored.lock().unwrap().clone()
    }

    /// Panics with moto's refusals, if there were any.
    #[track_caller]
    pub fn assert_no_errors(&self) {
        let errors = self.errors();
        assert!(
            errors.is_empty(),
            "moto refused mirrored manifests: {errors:#?}"
        );
    }
}

impl Target {
    fn put_image(&self, put: &PutManifest, digest: &str, tag: Option<&str>) -> Result<(), String> {
        let manifest = std::str::from_utf8(&put.body)
            .map_err(|_| format!("{}: a manifest that is not UTF-8", put.reference))?;
        let mut body = json!({
            "registryId": self.account,
            "repositoryName": put.repository,
            "imageManifest": manifest,
            "imageManifestMediaType": put.media_type,
            "imageDigest": digest,
        });
        if let Some(tag) = tag {
            body["imageTag"] = json!(tag);
        }
        match ecr_call(
            &self.moto_url,
            &self.access_key,
            &self.region,
            "PutImage",
            &body,
        ) {
            Ok(_) => Ok(()),
            // The same manifest under the same tag again: ECR accepts such a PUT.
            Err((_, text)) if text.contains("ImageAlreadyExistsException") => Ok(()),
            Err((status, text)) => Err(format!(
                "PutImage {}:{} ({digest}): {status} {text}",
                put.repository, put.reference
            )),
        }
    }
}
