//! The only module that talks to AWS: credentials (web identity first), the ECR authorization
//! token, and repository management.
//!
//! Credentials, in this order:
//! 1. `--role-arn` + a web identity token (GitHub OIDC, a token file, or an env var), exchanged
//!    with STS `AssumeRoleWithWebIdentity` (a call that needs no credentials);
//! 2. `--role-arn` alone: `AssumeRole` with the default credential chain (role chaining);
//! 3. the default AWS credential chain.
//!
//! A push that outlives the role session or the ECR token (12 h) gets a 401, or ECR's 403
//! `DENIED`, from the registry; the registry client then asks [`EcrCredentials`] for new
//! credentials, which mints the whole chain again (new OIDC token, new role session, new ECR
//! token), once. The API clients renew their own role session before it expires
//! ([`credentials`]).

pub mod credentials;
pub mod identity;
pub mod images;
pub mod public;
pub mod repository;
pub mod scan;
mod verbose;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_ecr::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use base64::Engine as _;
use futures::future::BoxFuture;
use tokio::sync::Mutex;
use url::Url;

use crate::registry::{BasicCredentials, CredentialProvider, RegistryError};
use crate::secret::Secret;
use credentials::{Minter, Renewing};
use identity::{Claims, TokenSource};

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// No region could be found (a usage error).
    #[error("no AWS region: pass --region (or set AWS_REGION), e.g. --region eu-west-1")]
    NoRegion,
    #[error("{0}")]
    Identity(String),
    #[error(
        "AWS refused to let the web identity assume {role} ({code}: {message}). The role's \
         trust policy must allow this token: {claims}. Check the trust policy's `sub` and `aud` \
         conditions and that the OIDC provider exists in the account."
    )]
    TrustPolicy {
        role: String,
        code: String,
        message: String,
        claims: String,
    },
    #[error("no AWS credentials: {0}")]
    NoCredentials(String),
    #[error(
        "AWS denied {action}{}: {message}. Grant `{action}` to the role or user (see the IAM \
         policy in the README).",
        on.as_ref().map(|r| format!(" on {r}")).unwrap_or_default()
    )]
    AccessDenied {
        action: String,
        on: Option<String>,
        message: String,
    },
    #[error(
        "AWS throttled {action} even after retries ({message}); try again later or lower --jobs"
    )]
    Throttled { action: String, message: String },
    #[error("{action} failed: {message}")]
    Api { action: String, message: String },
    #[error(
        "repository {repository} does not exist in registry {registry_id}, and \
         --create-repository is false; create it, or drop --create-repository false"
    )]
    RepositoryMissing {
        repository: String,
        registry_id: String,
    },
    #[error(
        "tag {tag} already points to {existing} in the immutable repository {repository}; \
         this image is {pushing}. Use a new tag (immutable tags cannot move)."
    )]
    TagConflict {
        repository: String,
        tag: String,
        existing: String,
        pushing: String,
    },
    #[error("invalid input for AWS: {0}")]
    Invalid(String),
}

impl AwsError {
    /// Whether this is the user's input to fix (exit code 2) rather than a failure (1).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::NoRegion | Self::Invalid(_))
    }
}

/// Turns an SDK error into a message that names the IAM action and says what to do.
pub(crate) fn api_error<E, R>(
    action: &str,
    resource: Option<&str>,
    error: &SdkError<E, R>,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let (code, message) = match error {
        SdkError::ServiceError(context) => (
            context.err().code().unwrap_or_default().to_owned(),
            context.err().message().unwrap_or("no message").to_owned(),
        ),
        _ => (String::new(), DisplayErrorContext(error).to_string()),
    };
    match code.as_str() {
        "AccessDeniedException"
        | "AccessDenied"
        | "UnauthorizedOperation"
        | "UnrecognizedClientException" => AwsError::AccessDenied {
            action: action.to_owned(),
            on: resource.map(str::to_owned),
            message,
        },
        "ThrottlingException" | "Throttling" | "TooManyRequestsException" => AwsError::Throttled {
            action: action.to_owned(),
            message,
        },
        "" => AwsError::Api {
            action: action.to_owned(),
            message,
        },
        _ => AwsError::Api {
            action: action.to_owned(),
            message: format!("{code}: {message}"),
        },
    }
}

/// The role to assume.
#[derive(Clone, Debug)]
pub struct RoleSettings {
    pub arn: String,
    pub session_name: String,
    pub duration: Option<Duration>,
}

/// Everything AWS-related the user asked for.
#[derive(Clone, Debug, Default)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub registry_id: Option<String>,
    pub role: Option<RoleSettings>,
    pub token: Option<TokenSource>,
    /// Running on GitHub Actions (for the hint about `id-token: write`).
    pub on_github: bool,
    pub ecr_endpoint: Option<String>,
    pub sts_endpoint: Option<String>,
    /// Where a line per AWS call goes (`--verbose`).
    pub log: crate::report::DebugLog,
}

/// Loaded AWS configuration: region, endpoints, and how to get credentials.
pub struct Aws {
    settings: AwsSettings,
    config: SdkConfig,
    region: String,
}

impl fmt::Debug for Aws {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aws")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// Credentials and the clients made with them.
pub struct Session {
    pub account: String,
    pub ecr: aws_sdk_ecr::Client,
    credentials: SharedCredentialsProvider,
}

/// What `GetAuthorizationToken` gives: the registry endpoint and its Basic credentials.
pub struct RegistryLogin {
    pub endpoint: Url,
    pub credentials: BasicCredentials,
}

impl Aws {
    /// Loads region and the default configuration (the credential chain is not called yet).
    pub async fn load(settings: AwsSettings) -> Result<Self, AwsError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let config = loader.load().await;
        let region = config
            .region()
            .map(ToString::to_string)
            .ok_or(AwsError::NoRegion)?;
        Ok(Self {
            settings,
            config,
            region,
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    fn sts_client(&self, credentials: Option<SharedCredentialsProvider>) -> aws_sdk_sts::Client {
        let mut builder = aws_sdk_sts::config::Builder::from(&self.config);
        if let Some(endpoint) = &self.settings.sts_endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        if self.settings.log.enabled() {
            builder = builder.interceptor(verbose::CallLog(self.settings.log.clone()));
        }
        if let Some(credentials) = credentials {
            builder = builder.credentials_provider(credentials);
        }
        aws_sdk_sts::Client::from_conf(builder.build())
    }

    /// An ECR Public client; its API exists only in us-east-1.
    pub fn public_client(&self, session: &Session) -> aws_sdk_ecrpublic::Client {
        let mut builder = aws_sdk_ecrpublic::config::Builder::from(&self.config)
            .region(Region::new(public::REGION))
            .credentials_provider(session.credentials.clone());
        if self.settings.log.enabled() {
            builder = builder.interceptor(verbose::CallLog(self.settings.log.clone()));
        }
        aws_sdk_ecrpublic::Client::from_conf(builder.build())
    }

    /// Registry credentials for `target`, with a session's credentials.
    pub async fn login(
        &self,
        session: &Session,
        target: &LoginTarget,
    ) -> Result<BasicCredentials, AwsError> {
        match target {
            LoginTarget::Private { registry_id } => {
                Ok(session.registry_login(registry_id).await?.credentials)
            }
            LoginTarget::Public => public::login(&self.public_client(session)).await,
        }
    }

    fn ecr_client(&self, credentials: SharedCredentialsProvider) -> aws_sdk_ecr::Client {
        let mut builder =
            aws_sdk_ecr::config::Builder::from(&self.config).credentials_provider(credentials);
        if let Some(endpoint) = &self.settings.ecr_endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        if self.settings.log.enabled() {
            builder = builder.interceptor(verbose::CallLog(self.settings.log.clone()));
        }
        aws_sdk_ecr::Client::from_conf(builder.build())
    }

    /// Gets fresh credentials (following the documented order) and an ECR client using them.
    /// The credentials are minted again whenever the clients find them about to expire (see
    /// [`credentials`]).
    pub async fn session(&self) -> Result<Session, AwsError> {
        let renewing = match (&self.settings.role, &self.settings.token) {
            (Some(role), Some(token)) => Renewing::new(Minter::WebIdentity {
                sts: self.sts_client(None),
                role: role.clone(),
                token: token.clone(),
            }),
            (Some(role), None) => {
                let base = self
                    .default_credentials()
                    .await
                    .map_err(|error| match error {
                        AwsError::NoCredentials(reason) if self.settings.on_github => {
                            AwsError::Identity(format!(
                                "--role-arn is set but GitHub did not provide an OIDC token \
                             (ACTIONS_ID_TOKEN_REQUEST_URL is not set) and there are no other \
                             AWS credentials ({reason}); add `permissions: id-token: write` to \
                             the job"
                            ))
                        }
                        other => other,
                    })?;
                Renewing::new(Minter::AssumeRole {
                    sts: self.sts_client(Some(SharedCredentialsProvider::new(base))),
                    role: role.clone(),
                })
            }
            (None, _) => self.default_credentials().await?,
        };
        let account = renewing.start().await?;
        let credentials = SharedCredentialsProvider::new(renewing);
        let account = match (&self.settings.registry_id, account) {
            (Some(id), _) => id.clone(),
            (None, Some(account)) => account,
            (None, None) => self.caller_account(&credentials).await?,
        };
        Ok(Session {
            ecr: self.ecr_client(credentials.clone()),
            account,
            credentials,
        })
    }

    /// The default chain (env, profile, SSO, container, instance), resolved now so that "no
    /// credentials" is reported as such and not as a failed ECR call; later the chain is asked
    /// again when what it gave is about to expire.
    async fn default_credentials(&self) -> Result<Renewing, AwsError> {
        let chain = self.config.credentials_provider().ok_or_else(|| {
            AwsError::NoCredentials("the AWS credential chain is not available".into())
        })?;
        let credentials = Renewing::new(Minter::Chain(chain));
        credentials.start().await?;
        Ok(credentials)
    }

    async fn caller_account(
        &self,
        credentials: &SharedCredentialsProvider,
    ) -> Result<String, AwsError> {
        let output = self
            .sts_client(Some(credentials.clone()))
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| api_error("sts:GetCallerIdentity", None, &e))?;
        output
            .account()
            .map(str::to_owned)
            .ok_or_else(|| AwsError::Api {
                action: "sts:GetCallerIdentity".into(),
                message: "no account in the answer; pass --registry-id".into(),
            })
    }
}

/// STS `AssumeRoleWithWebIdentity`. When STS refuses, the error shows the token's claims (never
/// the token) next to the role, which is what a trust-policy mismatch needs to be fixed.
async fn exchange_web_identity(
    sts: &aws_sdk_sts::Client,
    role: &RoleSettings,
    token: &Secret,
    source: &TokenSource,
) -> Result<(Credentials, Option<String>), AwsError> {
    let response = sts
        .assume_role_with_web_identity()
        .role_arn(&role.arn)
        .role_session_name(&role.session_name)
        .set_duration_seconds(role.duration.map(duration_seconds))
        .web_identity_token(token.expose())
        .send()
        .await;
    let output = match response {
        Ok(output) => output,
        Err(SdkError::ServiceError(context)) => {
            let error = context.err();
            return Err(AwsError::TrustPolicy {
                role: role.arn.clone(),
                code: error.code().unwrap_or("error").to_owned(),
                message: error.message().unwrap_or("no message").to_owned(),
                claims: Claims::peek(token).map_or_else(
                    || format!("{} (not a JWT)", source.describe()),
                    |claims| claims.describe(),
                ),
            });
        }
        Err(other) => {
            return Err(api_error(
                "sts:AssumeRoleWithWebIdentity",
                Some(&role.arn),
                &other,
            ));
        }
    };
    let credentials = session_credentials(output.credentials(), "web-identity")?;
    let account = output
        .assumed_role_user()
        .and_then(|user| account_of_arn(user.arn()))
        .or_else(|| account_of_arn(&role.arn));
    Ok((credentials, account))
}

impl Session {
    /// `GetAuthorizationToken`: Basic credentials (valid for every registry the principal can
    /// reach) and the endpoint of `registry_id`. The token is `base64("AWS:<password>")`; it
    /// and the password are masked as soon as they are known. (`registryIds` is not sent: it
    /// is deprecated, and changes nothing about the token.)
    pub async fn registry_login(&self, registry_id: &str) -> Result<RegistryLogin, AwsError> {
        let output = self
            .ecr
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| api_error("ecr:GetAuthorizationToken", None, &e))?;
        let data = output
            .authorization_data()
            .first()
            .ok_or_else(|| AwsError::Api {
                action: "ecr:GetAuthorizationToken".into(),
                message: "the answer holds no authorization data".into(),
            })?;
        let credentials =
            decode_authorization_token(data.authorization_token().unwrap_or_default())?;
        let endpoint = data.proxy_endpoint().unwrap_or_default();
        let endpoint = registry_endpoint(endpoint, registry_id).ok_or_else(|| AwsError::Api {
            action: "ecr:GetAuthorizationToken".into(),
            message: format!("the proxy endpoint {endpoint:?} is not an ECR registry URL"),
        })?;
        Ok(RegistryLogin {
            endpoint,
            credentials,
        })
    }

    pub fn credentials(&self) -> &SharedCredentialsProvider {
        &self.credentials
    }
}

/// The endpoint of `registry_id`: the token's proxy endpoint names the caller's own registry
/// (`https://<account>.dkr.ecr.<region>.amazonaws.com`); another account's registry differs
/// only in its first label, whatever the partition or FIPS/dual-stack suffix.
fn registry_endpoint(proxy_endpoint: &str, registry_id: &str) -> Option<Url> {
    let mut url = Url::parse(proxy_endpoint).ok()?;
    let host = url.host_str()?.to_owned();
    let (_, rest) = host.split_once('.')?;
    url.set_host(Some(&format!("{registry_id}.{rest}"))).ok()?;
    Some(url)
}

/// `base64("AWS:<password>")` → Basic credentials.
pub(crate) fn decode_authorization_token(token: &str) -> Result<BasicCredentials, AwsError> {
    let invalid = || AwsError::Api {
        action: "GetAuthorizationToken".into(),
        message: "the authorization token is not base64 of user:password".into(),
    };
    // The token as it is, base64 of `AWS:<password>`, is the secret too (a Docker config or a
    // Basic header carries it): masked before anything else happens with it.
    let _ = Secret::new(token.trim());
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| invalid())?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    let (username, password) = decoded.split_once(':').ok_or_else(invalid)?;
    Ok(BasicCredentials {
        username: username.to_owned(),
        password: Secret::new(password),
    })
}

fn session_credentials(
    credentials: Option<&aws_sdk_sts::types::Credentials>,
    source: &'static str,
) -> Result<Credentials, AwsError> {
    let credentials = credentials.ok_or_else(|| AwsError::Api {
        action: "sts".into(),
        message: "STS answered without credentials".into(),
    })?;
    // Mask first: nothing may print these before the runner knows to hide them.
    let secret_key = Secret::new(credentials.secret_access_key());
    let session_token = Secret::new(credentials.session_token());
    let _ = Secret::new(credentials.access_key_id());
    let expiry = std::time::SystemTime::try_from(*credentials.expiration()).ok();
    Ok(Credentials::new(
        credentials.access_key_id(),
        secret_key.expose(),
        Some(session_token.expose().to_owned()),
        expiry,
        source,
    ))
}

fn mask_credentials(credentials: &Credentials) {
    let _ = Secret::new(credentials.secret_access_key());
    if let Some(token) = credentials.session_token() {
        let _ = Secret::new(token);
    }
    let _ = Secret::new(credentials.access_key_id());
}

fn duration_seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

/// The account in an ARN (`arn:aws:iam::123456789012:role/x` → `123456789012`).
pub fn account_of_arn(arn: &str) -> Option<String> {
    let account = arn.split(':').nth(4)?;
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then(|| account.to_owned())
}

/// Which registry the credentials are for.
#[derive(Clone, Debug)]
pub enum LoginTarget {
    Private { registry_id: String },
    Public,
}

/// Registry credentials from ECR, minted again (whole chain) when the registry refuses them.
pub struct EcrCredentials {
    aws: Arc<Aws>,
    target: LoginTarget,
    current: Mutex<BasicCredentials>,
}

impl EcrCredentials {
    pub fn new(aws: Arc<Aws>, target: LoginTarget, initial: BasicCredentials) -> Self {
        Self {
            aws,
            target,
            current: Mutex::new(initial),
        }
    }
}

impl CredentialProvider for EcrCredentials {
    fn credentials(
        &self,
        refresh: bool,
    ) -> BoxFuture<'_, Result<Option<BasicCredentials>, RegistryError>> {
        Box::pin(async move {
            let mut current = self.current.lock().await;
            if refresh {
                let renewed = async {
                    let session = self.aws.session().await?;
                    self.aws.login(&session, &self.target).await
                }
                .await
                .map_err(|e| {
                    RegistryError::Protocol(format!("renewing the ECR credentials failed: {e}"))
                })?;
                *current = renewed;
            }
            Ok(Some(current.clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityError;
    use aws_smithy_mocks::{mock, mock_client};

    fn role() -> RoleSettings {
        RoleSettings {
            arn: "arn:aws:iam::123456789012:role/ci".into(),
            session_name: "s".into(),
            duration: None,
        }
    }

    #[tokio::test]
    async fn refused_web_identity_shows_claims_but_never_the_token() {
        let rule = mock!(aws_sdk_sts::Client::assume_role_with_web_identity).then_error(|| {
            AssumeRoleWithWebIdentityError::generic(
                aws_sdk_sts::error::ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("Not authorized to perform sts:AssumeRoleWithWebIdentity")
                    .build(),
            )
        });
        let sts = mock_client!(aws_sdk_sts, [&rule]);
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            r#"{"sub":"repo:acme/app:pull_request","aud":"sts.amazonaws.com","iss":"https://token.actions.githubusercontent.com"}"#,
        );
        let token = Secret::new(format!(
            "eyJhbGciOiJSUzI1NiJ9.{payload}.c2VjcmV0LXNpZ25hdHVyZQ"
        ));
        let source = TokenSource::EnvVar {
            name: "T".into(),
            value: token.clone(),
        };
        let Err(error) = exchange_web_identity(&sts, &role(), &token, &source).await else {
            panic!("STS refused, so must the exchange");
        };
        let error = error.to_string();
        assert!(error.contains("repo:acme/app:pull_request"), "{error}");
        assert!(error.contains("sts.amazonaws.com"), "{error}");
        assert!(
            error.contains("arn:aws:iam::123456789012:role/ci"),
            "{error}"
        );
        assert!(error.contains("trust policy"), "{error}");
        assert!(
            !error.contains("c2VjcmV0LXNpZ25hdHVyZQ") && !error.contains(&payload),
            "{error}"
        );
    }

    #[tokio::test]
    async fn access_denied_on_ecr_names_the_iam_action() {
        use aws_sdk_ecr::operation::create_repository::CreateRepositoryError;
        let rule = mock!(aws_sdk_ecr::Client::create_repository).then_error(|| {
            CreateRepositoryError::generic(
                aws_sdk_ecr::error::ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("User is not authorized to perform: ecr:CreateRepository")
                    .build(),
            )
        });
        let ecr = mock_client!(aws_sdk_ecr, [&rule]);
        let error = ecr
            .create_repository()
            .repository_name("team/app")
            .send()
            .await
            .map_err(|e| api_error("ecr:CreateRepository", Some("team/app"), &e))
            .unwrap_err();
        assert!(matches!(error, AwsError::AccessDenied { .. }));
        let text = error.to_string();
        assert!(
            text.contains("`ecr:CreateRepository`") && text.contains("team/app"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn throttling_says_to_try_later() {
        use aws_sdk_ecr::operation::describe_repositories::DescribeRepositoriesError;
        let rule = mock!(aws_sdk_ecr::Client::describe_repositories).then_error(|| {
            DescribeRepositoriesError::generic(
                aws_sdk_ecr::error::ErrorMetadata::builder()
                    .code("ThrottlingException")
                    .message("Rate exceeded")
                    .build(),
            )
        });
        let ecr = mock_client!(aws_sdk_ecr, [&rule]);
        let error = ecr
            .describe_repositories()
            .send()
            .await
            .map_err(|e| api_error("ecr:DescribeRepositories", None, &e))
            .unwrap_err();
        assert!(matches!(error, AwsError::Throttled { .. }), "{error}");
    }

    #[test]
    fn accounts_come_from_arns() {
        assert_eq!(
            account_of_arn("arn:aws:iam::123456789012:role/ci").as_deref(),
            Some("123456789012")
        );
        assert_eq!(
            account_of_arn("arn:aws:sts::210987654321:assumed-role/ci/s").as_deref(),
            Some("210987654321")
        );
        assert_eq!(account_of_arn("not-an-arn"), None);
    }

    #[test]
    fn registry_endpoints_follow_the_proxy_endpoint() {
        let url = registry_endpoint(
            "https://111111111111.dkr.ecr.cn-north-1.amazonaws.com.cn",
            "222222222222",
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "https://222222222222.dkr.ecr.cn-north-1.amazonaws.com.cn/"
        );
        assert!(registry_endpoint("not a url", "1").is_none());
    }

    #[test]
    fn authorization_tokens_decode_to_basic_credentials() {
        let token = base64::engine::general_purpose::STANDARD.encode("AWS:secret-password");
        let credentials = decode_authorization_token(&token).unwrap();
        assert_eq!(credentials.username, "AWS");
        assert_eq!(credentials.password.expose(), "secret-password");
        assert!(decode_authorization_token("!!!").is_err());
    }
}
