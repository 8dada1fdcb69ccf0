//! Web identity tokens (OIDC JWTs) that STS `AssumeRoleWithWebIdentity` exchanges for a role
//! session: from GitHub Actions' token service, from a file (`AWS_WEB_IDENTITY_TOKEN_FILE`,
//! Kubernetes), or from an environment variable (GitLab `id_tokens`).
//!
//! GitHub: `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=<aud>` with
//! `Authorization: Bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN` answers `{"value": "<jwt>"}`
//! (<https://docs.github.com/en/actions/security-for-github-actions/security-hardening-your-deployments/about-security-hardening-with-openid-connect>).
//! The JWT lives about five minutes; the request token lasts the job, so a fresh JWT can be
//! minted whenever the role session has to be renewed.

use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;

use super::AwsError;
use crate::secret::Secret;

/// Where the web identity token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    GitHub {
        request_url: String,
        request_token: Secret,
        audience: String,
    },
    File(PathBuf),
    EnvVar {
        name: String,
        value: Secret,
    },
}

impl TokenSource {
    pub fn describe(&self) -> String {
        match self {
            Self::GitHub { .. } => "the GitHub Actions OIDC token".into(),
            Self::File(path) => format!("the web identity token file {}", path.display()),
            Self::EnvVar { name, .. } => format!("the web identity token in ${name}"),
        }
    }

    /// A token, fetched or read now (GitHub tokens are short-lived: never cache one).
    pub async fn token(&self) -> Result<Secret, AwsError> {
        match self {
            Self::GitHub {
                request_url,
                request_token,
                audience,
            } => fetch_github_token(request_url, request_token, audience).await,
            Self::File(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    AwsError::Identity(format!(
                        "cannot read the web identity token file {}: {e}",
                        path.display()
                    ))
                })?;
                non_empty(text.trim(), &self.describe())
            }
            Self::EnvVar { value, .. } => non_empty(value.expose().trim(), &self.describe()),
        }
    }
}

fn non_empty(token: &str, what: &str) -> Result<Secret, AwsError> {
    if token.is_empty() {
        Err(AwsError::Identity(format!("{what} is empty")))
    } else {
        Ok(Secret::new(token))
    }
}

#[derive(Deserialize)]
struct GitHubTokenResponse {
    value: String,
}

async fn fetch_github_token(
    request_url: &str,
    request_token: &Secret,
    audience: &str,
) -> Result<Secret, AwsError> {
    let mut url = url::Url::parse(request_url).map_err(|e| {
        AwsError::Identity(format!("ACTIONS_ID_TOKEN_REQUEST_URL is not a URL: {e}"))
    })?;
    url.query_pairs_mut().append_pair("audience", audience);
    let failed = |detail: String| {
        AwsError::Identity(format!(
            "could not get the GitHub OIDC token ({detail}); check that the job has \
             `permissions: id-token: write`"
        ))
    };
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(request_token.expose())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!(
            "the token service answered HTTP {}",
            status.as_u16()
        )));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    let body: GitHubTokenResponse =
        serde_json::from_slice(&bytes).map_err(|e| failed(format!("unexpected answer: {e}")))?;
    non_empty(&body.value, "the GitHub OIDC token")
}

/// The claims of a token that explain a trust-policy mismatch. The token is not verified here
/// (STS does that); these are shown to the user, never the token itself.
#[derive(Debug, Default, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub aud: Vec<String>,
}

fn string_or_list<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

impl Claims {
    /// Reads the payload of a JWT (`header.payload.signature`); `None` if it is not one.
    pub fn peek(token: &Secret) -> Option<Self> {
        let payload = token.expose().split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn describe(&self) -> String {
        format!(
            "sub={:?}, aud={:?}, iss={:?}",
            self.sub.as_deref().unwrap_or("?"),
            self.aud.join(","),
            self.iss.as_deref().unwrap_or("?")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> Secret {
        let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        Secret::new(format!(
            "{}.{}.sig",
            encode(r#"{"alg":"RS256"}"#),
            encode(payload)
        ))
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        let token = jwt(
            r#"{"sub":"repo:org/app:ref:refs/heads/main","aud":"sts.amazonaws.com","iss":"https://token.actions.githubusercontent.com"}"#,
        );
        let claims = Claims::peek(&token).unwrap();
        assert_eq!(
            claims.sub.as_deref(),
            Some("repo:org/app:ref:refs/heads/main")
        );
        assert_eq!(claims.aud, vec!["sts.amazonaws.com"]);
        let described = claims.describe();
        assert!(described.contains("repo:org/app"), "{described}");
        assert!(!described.contains("sig"), "the signature is never shown");
    }

    #[test]
    fn audience_may_be_a_list() {
        let claims = Claims::peek(&jwt(r#"{"aud":["a","b"]}"#)).unwrap();
        assert_eq!(claims.aud, vec!["a", "b"]);
    }

    #[test]
    fn non_jwt_tokens_have_no_claims() {
        assert!(Claims::peek(&Secret::new("opaque")).is_none());
    }
}
