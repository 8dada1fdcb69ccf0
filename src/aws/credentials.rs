//! Credentials for the AWS API clients (ECR, ECR Public, STS) that mint themselves again when
//! they are about to expire.
//!
//! A role session lasts one hour by default (`--role-duration-seconds`, 15 minutes at least),
//! and a push with `--scan wait` or `--wait-replication` can outlive it. Fixed session
//! credentials would then fail with `ExpiredToken` in the middle of the wait. [`Renewing`]
//! implements the SDK's [`ProvideCredentials`]: the SDK's identity cache asks it again shortly
//! before the credentials it holds expire, and it then runs the chain that made them once more
//! (a fresh web identity token — a GitHub OIDC token lives about five minutes — and a new role
//! session, or the default chain again).
//!
//! The first credentials are minted by [`Renewing::start`], outside the SDK, so that its errors
//! reach the user as typed [`AwsError`]s (a trust-policy mismatch with the token's claims, a
//! missing `id-token: write`), not as an opaque "failed to load credentials".

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{self, ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_ecr::error::DisplayErrorContext;
use tokio::sync::Mutex;

use super::identity::TokenSource;
use super::{AwsError, RoleSettings, account_of_arn, api_error, duration_seconds};

/// Credentials closer than this to their expiry are minted again rather than handed out. More
/// than the SDK identity cache's own margin (seconds), so that when the cache asks, it gets new
/// ones, and enough for the slowest request signed with them to be sent.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// How a session's credentials are made.
pub(crate) enum Minter {
    /// STS `AssumeRoleWithWebIdentity` (a client without credentials), with a web identity token
    /// fetched or read again each time.
    WebIdentity {
        sts: aws_sdk_sts::Client,
        role: RoleSettings,
        token: TokenSource,
    },
    /// STS `AssumeRole`, with a client whose credentials come from the default chain.
    AssumeRole {
        sts: aws_sdk_sts::Client,
        role: RoleSettings,
    },
    /// The default credential chain itself (environment, profile, SSO, container, instance).
    Chain(SharedCredentialsProvider),
}

/// Credentials that are minted again when they are about to expire.
pub(crate) struct Renewing {
    minter: Minter,
    current: Mutex<Option<Credentials>>,
}

impl fmt::Debug for Renewing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the credentials.
        f.write_str(match self.minter {
            Minter::WebIdentity { .. } => "Renewing(web identity)",
            Minter::AssumeRole { .. } => "Renewing(assume role)",
            Minter::Chain(_) => "Renewing(default chain)",
        })
    }
}

impl Renewing {
    pub(crate) fn new(minter: Minter) -> Self {
        Self {
            minter,
            current: Mutex::new(None),
        }
    }

    /// Mints the first credentials (unless there are some); returns the account they act in,
    /// when the answer says (a role session does; the default chain does not).
    pub(crate) async fn start(&self) -> Result<Option<String>, AwsError> {
        let mut current = self.current.lock().await;
        if current.is_some() {
            return Ok(None);
        }
        let (credentials, account) = self.mint().await?;
        *current = Some(credentials);
        Ok(account)
    }

    /// Fresh credentials from the minter, masked on GitHub Actions as they arrive.
    async fn mint(&self) -> Result<(Credentials, Option<String>), AwsError> {
        match &self.minter {
            Minter::WebIdentity { sts, role, token } => {
                let jwt = token.token().await?;
                super::exchange_web_identity(sts, role, &jwt, token).await
            }
            Minter::AssumeRole { sts, role } => {
                let response = sts
                    .assume_role()
                    .role_arn(&role.arn)
                    .role_session_name(&role.session_name)
                    .set_duration_seconds(role.duration.map(duration_seconds))
                    .send()
                    .await
                    .map_err(|e| api_error("sts:AssumeRole", Some(&role.arn), &e))?;
                let credentials =
                    super::session_credentials(response.credentials(), "assume-role")?;
                let account = response
                    .assumed_role_user()
                    .and_then(|user| account_of_arn(user.arn()))
                    .or_else(|| account_of_arn(&role.arn));
                Ok((credentials, account))
            }
            Minter::Chain(chain) => {
                let credentials = chain.provide_credentials().await.map_err(|e| {
                    AwsError::NoCredentials(format!(
                        "{}; pass --role-arn with a web identity token (GitHub OIDC, \
                         --web-identity-token-file) or configure AWS credentials",
                        DisplayErrorContext(&e)
                    ))
                })?;
                super::mask_credentials(&credentials);
                Ok((credentials, None))
            }
        }
    }

    /// The current credentials, or new ones if they are missing or about to expire.
    async fn fresh(&self) -> Result<Credentials, AwsError> {
        let mut current = self.current.lock().await;
        if let Some(credentials) = current.as_ref()
            && !expiring(credentials, SystemTime::now())
        {
            return Ok(credentials.clone());
        }
        let (credentials, _) = self.mint().await?;
        *current = Some(credentials.clone());
        Ok(credentials)
    }
}

/// Whether credentials expire within [`RENEW_BEFORE`] of `now` (never, if they have no expiry).
fn expiring(credentials: &Credentials, now: SystemTime) -> bool {
    credentials
        .expiry()
        .is_some_and(|expiry| expiry <= now + RENEW_BEFORE)
}

impl ProvideCredentials for Renewing {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            self.fresh().await.map_err(CredentialsError::provider_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityOutput;
    use aws_sdk_sts::types::{AssumedRoleUser, Credentials as StsCredentials};
    use aws_smithy_mocks::{mock, mock_client};

    use super::*;
    use crate::secret::Secret;

    /// STS that answers the n-th `AssumeRoleWithWebIdentity` with key `ASIA-<n>`, valid for
    /// `lifetimes[n - 1]` seconds.
    fn sts_minting(lifetimes: &'static [u64]) -> (aws_sdk_sts::Client, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let rule =
            mock!(aws_sdk_sts::Client::assume_role_with_web_identity).then_output(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let expires = SystemTime::now() + Duration::from_secs(lifetimes[n - 1]);
                AssumeRoleWithWebIdentityOutput::builder()
                    .credentials(
                        StsCredentials::builder()
                            .access_key_id(format!("ASIA-{n}"))
                            .secret_access_key(format!("secret-{n}"))
                            .session_token(format!("session-{n}"))
                            .expiration(aws_sdk_sts::primitives::DateTime::from(expires))
                            .build()
                            .unwrap(),
                    )
                    .assumed_role_user(
                        AssumedRoleUser::builder()
                            .assumed_role_id("AROA:s")
                            .arn("arn:aws:sts::123456789012:assumed-role/ci/s")
                            .build()
                            .unwrap(),
                    )
                    .build()
            });
        let sts = mock_client!(aws_sdk_sts, aws_smithy_mocks::RuleMode::MatchAny, [&rule]);
        (sts, calls)
    }

    fn web_identity(sts: aws_sdk_sts::Client) -> Renewing {
        Renewing::new(Minter::WebIdentity {
            sts,
            role: RoleSettings {
                arn: "arn:aws:iam::123456789012:role/ci".into(),
                session_name: "s".into(),
                duration: Some(Duration::from_secs(900)),
            },
            token: TokenSource::EnvVar {
                name: "T".into(),
                value: Secret::new("a-web-identity-token"),
            },
        })
    }

    #[tokio::test]
    async fn a_role_session_about_to_expire_is_minted_again() {
        // The first session is about to end (a long push), the second has an hour left.
        let (sts, calls) = sts_minting(&[60, 3600]);
        let credentials = web_identity(sts);
        assert_eq!(
            credentials.start().await.unwrap().as_deref(),
            Some("123456789012")
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let renewed = credentials.provide_credentials().await.unwrap();
        assert_eq!(renewed.access_key_id(), "ASIA-2", "a new role session");
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // Good for an hour: handed out as they are.
        let again = credentials.provide_credentials().await.unwrap();
        assert_eq!(again.access_key_id(), "ASIA-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_sdk_client_gets_renewed_credentials_through_its_identity_cache() {
        use aws_sdk_ecr::operation::describe_repositories::DescribeRepositoriesOutput;
        let (sts, calls) = sts_minting(&[1, 3600]);
        let credentials = web_identity(sts);
        credentials.start().await.unwrap();
        let provider = SharedCredentialsProvider::new(credentials);
        let rule = mock!(aws_sdk_ecr::Client::describe_repositories)
            .then_output(|| DescribeRepositoriesOutput::builder().build());
        let ecr = mock_client!(
            aws_sdk_ecr,
            aws_smithy_mocks::RuleMode::MatchAny,
            [&rule],
            |config| config.credentials_provider(provider.clone())
        );
        // The first session expires in a second: the client's first call needs a new one.
        ecr.describe_repositories().send().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        ecr.describe_repositories().send().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "cached while valid");
        assert_eq!(rule.num_calls(), 2);
    }

    #[test]
    fn expiry_is_judged_with_a_margin() {
        let now = SystemTime::now();
        let expiring_at = |seconds| {
            Credentials::new(
                "a",
                "b",
                None,
                Some(now + Duration::from_secs(seconds)),
                "t",
            )
        };
        assert!(expiring(&expiring_at(60), now));
        assert!(!expiring(&expiring_at(3600), now));
        assert!(!expiring(&Credentials::new("a", "b", None, None, "t"), now));
    }
}
