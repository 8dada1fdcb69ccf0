//! The AWS API emulator (`moto_server`, from `PyPI` `moto[server]`) for STS and ECR, on 127.0.0.1.
//!
//! Facts relied on (moto 5): `GetAuthorizationToken` returns `AWS:<account>-auth-token`, so a
//! registry's htpasswd can be pre-seeded; `AssumeRoleWithWebIdentity` accepts any token and the
//! session's account is the role's.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, require_tool};

pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    pub fn start() -> Self {
        require_tool("moto_server", "pip install 'moto[server]'");
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if reqwest::blocking::get(format!("{}/moto-api/", moto.url()))
                .is_ok_and(|r| r.status().is_success())
            {
                return moto;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto_server did not start on port {port}");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Calls an ECR API action (JSON protocol) in `account`, for setting up and asserting.
    pub fn ecr(&self, account: &str, action: &str, body: &serde_json::Value) -> serde_json::Value {
        let access_key = self.access_key_of(account);
        self.call(
            &access_key,
            "AmazonEC2ContainerRegistry_V20150921",
            "ecr",
            action,
            body,
        )
    }

    /// moto decides the account of a request by its access key: a key from a role session in
    /// `account` acts there.
    fn access_key_of(&self, account: &str) -> String {
        let response = reqwest::blocking::Client::new()
            .post(self.url())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!(
                "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A{account}%3Arole%2Ftest-harness&RoleSessionName=test-harness&WebIdentityToken=harness-token"
            ))
            .send()
            .expect("AssumeRoleWithWebIdentity on moto")
            .text()
            .unwrap_or_default();
        let start = response
            .find("<AccessKeyId>")
            .expect("an access key in the STS answer")
            + "<AccessKeyId>".len();
        let end = response[start..].find('<').unwrap() + start;
        response[start..end].to_owned()
    }

    fn call(
        &self,
        access_key: &str,
        prefix: &str,
        service: &str,
        action: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        // moto does not check signatures, but routes requests by the service in the credential
        // scope of the Authorization header.
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={access_key}/20240101/eu-west-1/{service}/aws4_request, SignedHeaders=host, Signature=0"
        );
        let response = reqwest::blocking::Client::new()
            .post(self.url())
            .header("X-Amz-Target", format!("{prefix}.{action}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("Authorization", authorization)
            .body(body.to_string())
            .send()
            .expect("call moto");
        let status = response.status();
        let text = response.text().unwrap_or_default();
        assert!(
            status.is_success(),
            "moto {action} failed ({status}): {text}"
        );
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Puts an image into moto's ECR (images pushed to the registry do not appear in moto; tests
    /// that need the ECR API to know an image put its manifest here too, with the real digest).
    pub fn put_image(
        &self,
        account: &str,
        repository: &str,
        manifest: &[u8],
        media_type: &str,
        tag: &str,
    ) {
        self.ecr(
            account,
            "PutImage",
            &serde_json::json!({
                "registryId": account,
                "repositoryName": repository,
                "imageManifest": String::from_utf8(manifest.to_vec()).expect("a JSON manifest"),
                "imageManifestMediaType": media_type,
                "imageTag": tag,
                "imageDigest": super::sha256(manifest),
            }),
        );
    }

    /// Makes moto answer `DescribeImageScanFindings` for `repository@digest` with `answer`.
    pub fn set_scan_findings(&self, account: &str, region: &str, answer: &serde_json::Value) {
        let response = reqwest::blocking::Client::new()
            .post(format!(
                "{}/moto-api/static/ecr/scan-finding-results",
                self.url()
            ))
            .header("Content-Type", "application/json")
            .body(
                serde_json::json!({"results": [answer], "region": region, "account_id": account})
                    .to_string(),
            )
            .send()
            .expect("configure moto scan findings");
        assert!(
            response.status().is_success(),
            "moto scan findings: {}",
            response.status()
        );
    }
}
