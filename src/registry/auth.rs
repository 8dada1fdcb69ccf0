//! Registry authentication: Basic (ECR, htpasswd registries) and the Bearer token flow
//! (<https://distribution.github.io/distribution/spec/auth/token/>), learned from the
//! `WWW-Authenticate` challenge of the first 401.
//!
//! ECR answers `/v2/` with `WWW-Authenticate: Basic` and wants the authorization token from
//! `GetAuthorizationToken` on every request; there is no token exchange. Credentials come from a
//! [`CredentialProvider`], which can be asked for fresh ones when the registry refuses the old
//! (an ECR token or STS session that expired during a long push).
//!
//! The token service a Bearer challenge names (its `realm`) gets our user name and password,
//! so a challenge cannot aim them anywhere: a plain-`http` realm is followed only for a
//! registry that is itself plain `http` on the same host, and a realm on a loopback, private
//! or link-local address only for a registry on such an address too (see [`check_realm`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::RegistryError;
use crate::report::DebugLog;
use crate::secret::Secret;

/// A user name and password for Basic auth (and for fetching bearer tokens).
#[derive(Clone, Debug)]
pub struct BasicCredentials {
    pub username: String,
    pub password: Secret,
}

impl BasicCredentials {
    /// `Basic base64(user:password)`. Made once per set of credentials (see
    /// [`Authenticator`]), not per request: the encoded form is a secret of its own, announced
    /// to the runner here (for ECR it is the authorization token, announced already).
    fn header_value(&self) -> Secret {
        let raw = format!("{}:{}", self.username, self.password.expose());
        let encoded = Secret::new(base64::engine::general_purpose::STANDARD.encode(raw));
        Secret::derived(format!("Basic {}", encoded.expose()))
    }
}

/// Supplies registry credentials. `refresh` is true after the registry refused the previous
/// ones: a provider that can mint new ones (ECR) does so; a static one returns the same.
pub trait CredentialProvider: Send + Sync {
    fn credentials(
        &self,
        refresh: bool,
    ) -> BoxFuture<'_, Result<Option<BasicCredentials>, RegistryError>>;
}

/// Fixed credentials (or none, for anonymous access).
pub struct StaticCredentials(pub Option<BasicCredentials>);

impl CredentialProvider for StaticCredentials {
    fn credentials(
        &self,
        _refresh: bool,
    ) -> BoxFuture<'_, Result<Option<BasicCredentials>, RegistryError>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses `Basic realm="..."` or `Bearer realm="...",service="...",scope="..."`.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Self::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        Some(Self::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// `key="value", key2=value2` → map, honouring quotes (scopes contain commas).
fn parse_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_owned());
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    params
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// What the client knows about how to authenticate, shared by all concurrent requests.
pub struct Authenticator {
    provider: Box<dyn CredentialProvider>,
    state: Mutex<State>,
    /// One more than the newest auth generation the registry has accepted (answered other
    /// than 401/403), so a refusal can tell expired credentials from ones never good.
    accepted: AtomicU64,
    /// The registry's own URL, which decides where a token service may be.
    registry: url::Url,
    log: DebugLog,
}

#[derive(Default)]
struct State {
    /// Learned from the first challenge; until then Basic is sent pre-emptively when
    /// credentials exist (saves a round trip on ECR).
    challenge: Option<Challenge>,
    credentials: Option<BasicCredentials>,
    /// The Basic `Authorization` header of `credentials`.
    basic_header: Option<Secret>,
    /// Whether the provider has been asked yet (it may have answered "none").
    credentials_loaded: bool,
    /// Scope → the Bearer `Authorization` header with its token.
    bearer: HashMap<String, Secret>,
    /// Bumped whenever credentials or tokens change, so concurrent requests that all got a 401
    /// refresh once, not once each.
    generation: u64,
    /// The generation whose credentials were minted again after a refusal.
    reminted: Option<u64>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authenticator")
    }
}

/// The `Authorization` header to send, and the auth generation it belongs to.
pub struct Authorization {
    pub header: Option<Secret>,
    pub generation: u64,
}

impl Authenticator {
    pub fn new(provider: Box<dyn CredentialProvider>, registry: &url::Url, log: DebugLog) -> Self {
        Self {
            provider,
            state: Mutex::new(State::default()),
            accepted: AtomicU64::new(0),
            registry: registry.clone(),
            log,
        }
    }

    /// Notes that the registry accepted a request sent with `sent`.
    pub fn accepted(&self, sent: &Authorization) {
        self.accepted
            .fetch_max(sent.generation + 1, Ordering::Relaxed);
    }

    /// The header for a request needing `scope` (`repository:<name>:pull,push`).
    pub async fn authorization(&self, scope: &str) -> Result<Authorization, RegistryError> {
        let mut state = self.state.lock().await;
        let generation = state.generation;
        let header = match state.challenge.clone() {
            Some(Challenge::Bearer { .. }) => state.bearer.get(scope).cloned(),
            Some(Challenge::Basic) | None => {
                self.credentials(&mut state, false).await?;
                state.basic_header.clone()
            }
        };
        Ok(Authorization { header, generation })
    }

    async fn credentials(
        &self,
        state: &mut State,
        refresh: bool,
    ) -> Result<Option<BasicCredentials>, RegistryError> {
        if refresh || !state.credentials_loaded {
            self.log.line(|| {
                if refresh {
                    "auth: asking for new registry credentials".to_owned()
                } else {
                    "auth: loading the registry credentials".to_owned()
                }
            });
            state.credentials = self.provider.credentials(refresh).await?;
            state.basic_header = state
                .credentials
                .as_ref()
                .map(BasicCredentials::header_value);
            state.credentials_loaded = true;
            let found = state.credentials.is_some();
            self.log.line(|| {
                if found {
                    "auth: registry credentials ready".to_owned()
                } else {
                    "auth: no registry credentials (anonymous)".to_owned()
                }
            });
        }
        Ok(state.credentials.clone())
    }

    /// Reacts to a refusal of the credentials (a 401, or a 403 that says so). Returns
    /// `Ok(true)` when the request should be tried again with new authorization, `Ok(false)`
    /// when nothing more can be done.
    ///
    /// Credentials are minted again once per refusal: a request refused again after that
    /// (`already_refreshed`), or any request refused with credentials fresh from a re-mint
    /// that the registry never accepted, is final. Credentials that worked and are refused
    /// later have expired (a push longer than the ECR token), and are minted again.
    pub async fn on_refused(
        &self,
        http: &reqwest::Client,
        challenge_header: Option<&str>,
        scope: &str,
        sent: &Authorization,
        already_refreshed: bool,
    ) -> Result<bool, RegistryError> {
        let mut state = self.state.lock().await;
        if state.generation != sent.generation {
            // Someone else already renewed the authorization since this request was sent.
            return Ok(true);
        }
        if state.reminted == Some(sent.generation)
            && self.accepted.load(Ordering::Relaxed) <= sent.generation
        {
            return Ok(false);
        }
        let challenge = challenge_header.and_then(Challenge::parse);
        self.log.line(|| match &challenge {
            Some(Challenge::Basic) => "auth: HTTP 401, the registry asks for Basic auth".into(),
            Some(Challenge::Bearer { realm, .. }) => format!(
                "auth: HTTP 401, the registry asks for a bearer token from {}",
                describe_url(realm)
            ),
            None => "auth: HTTP 401 without a challenge this tool knows".into(),
        });
        if let Some(challenge) = &challenge {
            state.challenge = Some(challenge.clone());
        }
        let (retry, reminted) = match state.challenge.clone() {
            Some(Challenge::Bearer {
                realm,
                service,
                scope: challenged,
            }) => {
                let had_token = state.bearer.contains_key(scope);
                if had_token && already_refreshed {
                    return Ok(false);
                }
                let realm = check_realm(&self.registry, &realm)?;
                let credentials = self.credentials(&mut state, had_token).await?;
                let wanted = challenged.filter(|s| s != scope);
                let token = fetch_token(
                    http,
                    realm,
                    service.as_deref(),
                    scope,
                    wanted.as_deref(),
                    credentials.as_ref(),
                    &self.log,
                )
                .await?;
                let header = Secret::derived(format!("Bearer {}", token.expose()));
                state.bearer.insert(scope.to_owned(), header);
                (true, had_token)
            }
            Some(Challenge::Basic) | None => {
                // Retry only with credentials newer than the refused ones (an ECR token or role
                // session that expired mid-push is minted again by the provider).
                let remint = !(sent.header.is_none() || already_refreshed);
                let retry = remint && self.credentials(&mut state, true).await?.is_some();
                (retry, remint)
            }
        };
        state.generation += 1;
        if reminted {
            state.reminted = Some(state.generation);
        }
        self.log.line(|| {
            if retry {
                "auth: trying again with renewed authorization".into()
            } else {
                "auth: nothing left to try".into()
            }
        });
        Ok(retry)
    }
}

/// `scheme://host[:port]/path` of a URL given as text, without its query (or the text
/// itself if it is not a URL), for messages.
fn describe_url(text: &str) -> String {
    url::Url::parse(text).map_or_else(
        |_| format!("{text:?}"),
        |url| {
            format!(
                "{}://{}{}{}",
                url.scheme(),
                url.host_str().unwrap_or_default(),
                url.port().map(|p| format!(":{p}")).unwrap_or_default(),
                url.path()
            )
        },
    )
}

/// Whether a host is a loopback, private or link-local address (or `localhost`): the runner's
/// own network, where a hostile registry could aim our credentials.
fn is_internal(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => {
            let domain = domain.to_ascii_lowercase();
            domain == "localhost" || domain.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => !super::is_public(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !super::is_public(std::net::IpAddr::V6(ip)),
        None => true,
    }
}

/// The token service URL of a Bearer challenge, if the registry at `registry` may send our
/// credentials there: `https`, or plain `http` only on the registry's own host when the
/// registry is plain `http` itself (a local test registry); and not on a loopback, private or
/// link-local address unless the registry is on one too.
pub(crate) fn check_realm(registry: &url::Url, realm: &str) -> Result<url::Url, RegistryError> {
    let refuse = |why: &str| {
        RegistryError::Protocol(format!(
            "the registry {} named the token service {} ({why}); refusing to send credentials \
             there. Use the registry's https:// address, or report this registry's \
             configuration to its operator",
            describe_url(registry.as_str()),
            describe_url(realm)
        ))
    };
    let url = url::Url::parse(realm).map_err(|_| refuse("not a URL"))?;
    match url.scheme() {
        "https" => {}
        "http"
            if registry.scheme() == "http"
                && url.host_str().is_some()
                && url.host_str() == registry.host_str() => {}
        "http" => {
            return Err(refuse(
                "plain http, which is allowed only on the host of a plain-http registry",
            ));
        }
        _ => return Err(refuse("neither https nor http")),
    }
    if is_internal(&url) && !is_internal(registry) {
        return Err(refuse(
            "a loopback, private or link-local address, while the registry is not on one",
        ));
    }
    Ok(url)
}

/// GET `<realm>?service=..&scope=..` with Basic credentials if any; the answer is
/// `{"token": ...}` or `{"access_token": ...}`.
async fn fetch_token(
    http: &reqwest::Client,
    mut url: url::Url,
    service: Option<&str>,
    scope: &str,
    extra_scope: Option<&str>,
    credentials: Option<&BasicCredentials>,
    log: &DebugLog,
) -> Result<Secret, RegistryError> {
    let described = describe_url(url.as_str());
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = service {
            query.append_pair("service", service);
        }
        query.append_pair("scope", scope);
        if let Some(extra) = extra_scope {
            query.append_pair("scope", extra);
        }
    }
    let mut request = http.get(url);
    if let Some(credentials) = credentials {
        request = request.basic_auth(&credentials.username, Some(credentials.password.expose()));
    }
    let operation = "get a registry token";
    let sent = request.send().await;
    log.line(|| {
        format!(
            "auth: {operation} for {scope}: GET {described} -> {}",
            super::answered(&sent)
        )
    });
    let response = sent.map_err(|e| RegistryError::transport(operation, &e))?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(RegistryError::Unauthorized {
            operation: operation.into(),
            status: status.as_u16(),
            said: String::new(),
            hint: if credentials.is_some() {
                "the token service refused the user name and password".into()
            } else {
                "the registry needs credentials: pass --username and set ECR_PUSH_PASSWORD".into()
            },
        });
    }
    if !status.is_success() {
        return Err(RegistryError::from_response(operation, response).await);
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| RegistryError::transport(operation, &e))?;
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
        RegistryError::Protocol(format!(
            "the token service answered with something that is not a token: {e}"
        ))
    })?;
    parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .map(Secret::new)
        .ok_or_else(|| RegistryError::Protocol("the token service answered without a token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_quoted_commas() {
        let challenge = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            challenge,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
    }

    #[test]
    fn parses_basic_challenge() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="ecr""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(
            Challenge::parse("Bearer service=\"x\""),
            None,
            "realm is required"
        );
    }

    /// Every type that holds a secret, filled with distinctive values: its `Debug` (which
    /// `{:?}` in a log line, an error or a panic would print) shows none of them.
    #[tokio::test]
    async fn debug_of_every_type_holding_a_secret_is_redacted() {
        use crate::aws::AwsSettings;
        use crate::aws::identity::TokenSource;

        let secrets = [
            "pw-4f1c9e-password",
            "req-7b2d-request-token",
            "jwt-9a8e-oidc-token",
            "bearer-3c5f-registry-token",
        ];
        let credentials = BasicCredentials {
            username: "AWS".into(),
            password: Secret::new(secrets[0]),
        };
        let github = TokenSource::GitHub {
            request_url: "https://token.actions.example/id?x=1".into(),
            request_token: Secret::new(secrets[1]),
            audience: "sts.amazonaws.com".into(),
        };
        let env_var = TokenSource::EnvVar {
            name: "GITLAB_OIDC_TOKEN".into(),
            value: Secret::new(secrets[2]),
        };
        let settings = AwsSettings {
            token: Some(github.clone()),
            ..AwsSettings::default()
        };

        // The auth state, holding credentials, a bearer token and the header made of them.
        let authenticator = Authenticator::new(
            Box::new(StaticCredentials(Some(credentials.clone()))),
            &url::Url::parse("https://registry.example").unwrap(),
            DebugLog::default(),
        );
        let authorization = authenticator.authorization("repository:a:pull,push").await;
        let header = authorization.unwrap().header.expect("a Basic header");
        authenticator
            .state
            .lock()
            .await
            .bearer
            .insert("repository:a:pull,push".into(), Secret::new(secrets[3]));
        let client = super::super::Client::new(
            url::Url::parse("https://registry.example").unwrap(),
            Box::new(StaticCredentials(Some(credentials.clone()))),
            &super::super::ClientOptions::default(),
        )
        .unwrap();

        let shown = format!(
            "{credentials:?} {:?} {github:?} {env_var:?} {settings:?} {authenticator:?} \
             {header:?} {client:?} {:#?} {:#?}",
            credentials.password,
            Some(&credentials),
            (&github, &env_var),
        );
        for secret in secrets {
            assert!(!shown.contains(secret), "{secret} shown in: {shown}");
        }
        let encoded = header.expose().trim_start_matches("Basic ").to_owned();
        assert!(
            !shown.contains(&encoded),
            "the encoded Basic header is shown"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    /// Credentials that count how often they were minted again.
    struct Minting(std::sync::Arc<AtomicU64>);

    impl CredentialProvider for Minting {
        fn credentials(
            &self,
            refresh: bool,
        ) -> BoxFuture<'_, Result<Option<BasicCredentials>, RegistryError>> {
            if refresh {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
            let n = self.0.load(Ordering::SeqCst);
            Box::pin(async move {
                Ok(Some(BasicCredentials {
                    username: "AWS".into(),
                    password: Secret::new(format!("password-{n}")),
                }))
            })
        }
    }

    #[tokio::test]
    async fn credentials_are_minted_again_once_per_refusal() {
        let http = reqwest::Client::new();
        let scope = "repository:a:pull,push";
        let basic = Some(r#"Basic realm="ecr""#);
        let minted = std::sync::Arc::new(AtomicU64::new(0));
        let auth = Authenticator::new(
            Box::new(Minting(std::sync::Arc::clone(&minted))),
            &url::Url::parse("https://registry.example").unwrap(),
            DebugLog::default(),
        );

        // Credentials that worked, then are refused (expired): minted again, and retried.
        let first = auth.authorization(scope).await.unwrap();
        auth.accepted(&first);
        assert!(
            auth.on_refused(&http, basic, scope, &first, false)
                .await
                .unwrap()
        );
        assert_eq!(minted.load(Ordering::SeqCst), 1);
        let second = auth.authorization(scope).await.unwrap();
        assert_ne!(
            first.header.as_ref().unwrap().expose(),
            second.header.as_ref().unwrap().expose()
        );

        // Another request refused with the old ones: retried with the new, not minted again.
        assert!(
            auth.on_refused(&http, basic, scope, &first, false)
                .await
                .unwrap()
        );
        assert_eq!(minted.load(Ordering::SeqCst), 1);

        // The new ones refused before the registry ever took them: final, for every request.
        assert!(
            !auth
                .on_refused(&http, basic, scope, &second, true)
                .await
                .unwrap()
        );
        assert!(
            !auth
                .on_refused(&http, basic, scope, &second, false)
                .await
                .unwrap()
        );
        assert_eq!(minted.load(Ordering::SeqCst), 1);

        // Had they worked for a while, a later refusal (they expired too) mints again.
        auth.accepted(&second);
        assert!(
            auth.on_refused(&http, basic, scope, &second, false)
                .await
                .unwrap()
        );
        assert_eq!(minted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn anonymous_requests_are_not_retried_after_a_refusal() {
        let http = reqwest::Client::new();
        let auth = Authenticator::new(
            Box::new(StaticCredentials(None)),
            &url::Url::parse("https://registry.example").unwrap(),
            DebugLog::default(),
        );
        let sent = auth.authorization("repository:a:pull,push").await.unwrap();
        assert!(sent.header.is_none());
        assert!(
            !auth
                .on_refused(&http, None, "repository:a:pull,push", &sent, false)
                .await
                .unwrap()
        );
    }

    #[test]
    fn token_services_that_would_leak_credentials_are_refused() {
        let allowed = [
            ("https://ghcr.io", "https://ghcr.io/token"),
            ("https://registry.example", "https://auth.example/token?x=1"),
            // A local test registry on plain http, with its token service on the same host.
            ("http://127.0.0.1:5000", "http://127.0.0.1:5001/token"),
            ("http://localhost:5000", "http://localhost:5000/token"),
            // A registry in a private network, with its token service there too.
            ("https://10.1.2.3:5000", "https://10.1.2.4/token"),
            ("http://127.0.0.1:5000", "https://[::1]:8443/token"),
        ];
        for (registry, realm) in allowed {
            let registry = url::Url::parse(registry).unwrap();
            assert!(
                check_realm(&registry, realm).is_ok(),
                "{realm} for {registry}: {:?}",
                check_realm(&registry, realm).err()
            );
        }
        let refused = [
            (
                "https://registry.example",
                "http://auth.example/token",
                "plain http",
            ),
            (
                "http://127.0.0.1:5000",
                "http://auth.example/token",
                "plain http",
            ),
            (
                "http://127.0.0.1:5000",
                "http://10.0.0.1/token",
                "plain http",
            ),
            (
                "https://registry.example",
                "https://127.0.0.1/token",
                "loopback",
            ),
            (
                "https://registry.example",
                "https://10.0.0.7/token",
                "private",
            ),
            (
                "https://registry.example",
                "https://192.168.1.1/token",
                "private",
            ),
            (
                "https://registry.example",
                "https://169.254.169.254/latest",
                "link-local",
            ),
            (
                "https://registry.example",
                "https://[::1]/token",
                "loopback",
            ),
            (
                "https://registry.example",
                "https://[fe80::1]/token",
                "link-local",
            ),
            (
                "https://registry.example",
                "https://localhost/token",
                "loopback",
            ),
            (
                "https://registry.example",
                "ftp://auth.example/token",
                "neither https",
            ),
            ("https://registry.example", "not a url", "not a URL"),
        ];
        for (registry, realm, why) in refused {
            let registry = url::Url::parse(registry).unwrap();
            let error = check_realm(&registry, realm)
                .expect_err(&format!("{realm} must be refused for {registry}"))
                .to_string();
            assert!(error.contains(why), "{realm}: {error}");
            assert!(error.contains("refusing to send credentials"), "{error}");
        }
    }

    #[test]
    fn basic_header_is_base64_of_user_and_password() {
        let credentials = BasicCredentials {
            username: "AWS".into(),
            password: Secret::new("pw"),
        };
        assert_eq!(credentials.header_value().expose(), "Basic QVdTOnB3");
        assert!(!format!("{credentials:?}").contains("pw\""));
    }
}
