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
        self.ecr_in(account, DEFAULT_REGION, action, body)
    }

    /// [`Moto::ecr`] in another region (moto keeps repositories per region).
    pub fn ecr_in(
        &self,
        account: &str,
        region: &str,
        action: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let access_key = access_key(&self.url(), account);
        ecr_call(&self.url(), &access_key, region, action, body)
            .unwrap_or_else(|(status, text)| panic!("moto {action} failed ({status}): {text}"))
    }
}

/// The region the harness works in unless told otherwise.
pub const DEFAULT_REGION: &str = "eu-west-1";

/// moto decides the account of a request by its access key: a key from a role session in
/// `account` acts there.
pub fn access_key(moto_url: &str, account: &str) -> String {
    let response = reqwest::blocking::Client::new()
        .post(moto_url)
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

/// One ECR API call (JSON protocol); an error answer is `(status, body)`.
pub fn ecr_call(
    moto_url: &str,
    access_key: &str,
    region: &str,
    action: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, (u16, String)> {
    // moto does not check signatures, but routes requests by the service in the credential
    // scope of the Authorization header, and takes the region from it.
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/20240101/{region}/ecr/aws4_request, SignedHeaders=host, Signature=0"
    );
    let response = reqwest::blocking::Client::new()
        .post(moto_url)
        .header(
            "X-Amz-Target",
            format!("AmazonEC2ContainerRegistry_V20150921.{action}"),
        )
        .header("Content-Type", "application/x-amz-json-1.1")
        .header("Authorization", authorization)
        .body(body.to_string())
        .send()
        .map_err(|e| (0, e.to_string()))?;
    let status = response.status();
    let text = response.text().unwrap_or_default();
    if !status.is_success() {
        return Err((status.as_u16(), text));
    }
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
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
