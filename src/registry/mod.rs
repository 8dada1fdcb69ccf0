//! A small OCI distribution client: the subset of
//! <https://github.com/opencontainers/distribution-spec/blob/main/spec.md> a pusher needs, with
//! the quirks of real registries (ECR above all) handled in one place.
//!
//! Why not `oci-client`: its chunked upload expects 202 where ECR answers 201, uses 4 MiB chunks
//! under ECR's 5 MiB minimum, cannot replay a consumed stream on retry, and re-serialises
//! manifests (changing their digest). See `DESIGN.md` §2.
//!
//! Uploads are one POST, one streaming PATCH with the whole blob, and a `PUT ?digest=`; that is
//! what `docker push` does and what ECR handles (several `PATCH` requests lose data on ECR:
//! <https://github.com/aws/containers-roadmap/issues/2831>). The blob is committed only after
//! the caller has checked what streamed by.

pub mod auth;
pub mod retry;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use oci_spec::image::Digest;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, LINK, LOCATION,
    RANGE, WWW_AUTHENTICATE,
};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use url::Url;

use crate::blob::Streamed;
use crate::report::DebugLog;
use crate::source::{Document, MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES};
use auth::{Authenticator, Authorization};
pub use auth::{BasicCredentials, CredentialProvider, StaticCredentials};
pub use retry::RetryPolicy;

const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{operation}: cannot reach the registry ({message})")]
    Transport { operation: String, message: String },
    #[error("{operation}: the registry refused the credentials (HTTP {status}){}; {hint}", if said.is_empty() { String::new() } else { format!(": {said}") })]
    Unauthorized {
        operation: String,
        status: u16,
        /// The registry's own words (`DENIED: Your authorization token has expired.`), if any.
        said: String,
        hint: String,
    },
    #[error("{operation}: the registry answered HTTP {status}{}{}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default(), if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        operation: String,
        status: u16,
        code: Option<String>,
        message: String,
    },
    #[error("{0}")]
    Protocol(String),
    /// A transient failure that lasted longer than the retry budget. The message names the
    /// limit that ended the retries and the two flags that move it.
    #[error(
        "{last}; gave up after {attempts} attempt{} in {seconds:.1} s ({}); if the registry \
         only needs longer to recover, allow more with --retries or --timeout",
        if *attempts == 1 { "" } else { "s" },
        match (asked, limit) {
            (Some(s), _) => format!("the registry asked to wait {s} s, longer than the time left of --timeout"),
            (None, RetryLimit::Attempts(max)) => format!("all {max} attempts of --retries were used"),
            (None, RetryLimit::Time(total)) => format!("another try would not fit in --timeout {total} s"),
        }
    )]
    Exhausted {
        last: Box<RegistryError>,
        attempts: u32,
        seconds: f64,
        /// A `Retry-After` that did not fit in the budget.
        asked: Option<u64>,
        /// Which bound ended the retries.
        limit: RetryLimit,
    },
}

/// The bound that ended a request's retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryLimit {
    /// `--retries`: this many attempts were made.
    Attempts(u32),
    /// `--timeout`: this many seconds of retrying were spent.
    Time(u64),
}

impl RegistryError {
    pub(crate) fn transport(operation: &str, error: &reqwest::Error) -> Self {
        // Never print request URLs: a redirect target (ECR blobs live behind pre-signed S3
        // URLs) carries credentials in its query.
        let mut message = error.to_string();
        if let Some(url) = error.url() {
            message = message.replace(url.as_str(), "<url>");
        }
        let mut source = std::error::Error::source(error);
        while let Some(inner) = source {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            source = inner.source();
        }
        Self::Transport {
            operation: operation.to_owned(),
            message,
        }
    }

    /// A request that must not be tried again: a redirect refused by our policy, or one that
    /// could not be built.
    pub(crate) fn refused(operation: &str, error: &reqwest::Error) -> Self {
        let Self::Transport { message, .. } = Self::transport(operation, error) else {
            unreachable!("transport() builds a Transport error")
        };
        Self::Protocol(format!("{operation}: {message}"))
    }

    pub(crate) async fn from_response(operation: &str, response: Response) -> Self {
        let status = response.status().as_u16();
        let body = read_limited(response, 64 * 1024).await.unwrap_or_default();
        let (code, message) = parse_error_body(&body);
        Self::Status {
            operation: operation.to_owned(),
            status,
            code,
            message,
        }
    }

    /// Whether trying again could help (network trouble, throttling, server errors). An
    /// exhausted error was retried already: retrying it again (an upload retrying the POST
    /// that already used up its attempts) would multiply the time bound.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => {
                retry::is_retryable_status(StatusCode::from_u16(*status).unwrap_or_default())
            }
            Self::Unauthorized { .. } | Self::Protocol(_) | Self::Exhausted { .. } => false,
        }
    }

    /// The OCI error code (`NAME_UNKNOWN`, `TAG_INVALID`, …), if the registry sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Status { code, .. } => code.as_deref(),
            Self::Exhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    /// This error, as the last of `attempts` that used up the retry budget.
    fn exhausted(self, attempts: &retry::Attempts<'_>, asked: Option<Duration>) -> Self {
        let policy = attempts.policy();
        Self::Exhausted {
            last: Box::new(self),
            attempts: attempts.number(),
            seconds: attempts.elapsed().as_secs_f64(),
            // Named only when it is why the retries stopped.
            asked: asked
                .filter(|d| attempts.past_budget(*d))
                .map(|d| d.as_secs()),
            limit: if attempts.number() >= policy.max_attempts {
                RetryLimit::Attempts(policy.max_attempts)
            } else {
                RetryLimit::Time(policy.total.as_secs())
            },
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn parse_error_body(body: &[u8]) -> (Option<String>, String) {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body)
        && let Some(first) = parsed.errors.first()
    {
        return (
            Some(first.code.clone()).filter(|c| !c.is_empty()),
            first.message.clone(),
        );
    }
    let text = String::from_utf8_lossy(body);
    (None, text.trim().chars().take(300).collect())
}

async fn read_limited(mut response: Response, limit: u64) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > limit {
            break;
        }
    }
    Ok(body)
}

/// A request body that streams a blob, produced afresh for every attempt.
pub struct UploadBody {
    pub chunks: BoxStream<'static, io::Result<Bytes>>,
    /// Sent as `Content-Length` when known; otherwise the body is chunked.
    pub length: Option<u64>,
    pub outcome: tokio::task::JoinHandle<io::Result<Streamed>>,
}

/// What a blob check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobStatus {
    Missing,
    /// The repository has it; its size, if the registry said.
    Present(Option<u64>),
}

/// Why an upload did not commit.
#[derive(Debug)]
pub enum UploadError<E> {
    Registry(RegistryError),
    /// The source could not be read (an input problem, not a network one).
    Source(io::Error),
    /// The caller's check refused what streamed (digest or size not as expected).
    Refused(E),
}

impl<E> From<RegistryError> for UploadError<E> {
    fn from(error: RegistryError) -> Self {
        Self::Registry(error)
    }
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// Longest silence while waiting for a response or reading one (a stalled registry); at
    /// most half of `retry.total` is used (see [`RetryPolicy::stall_timeout`]).
    pub read_timeout: Duration,
    /// Where a line per request and per auth step goes (`--verbose`).
    pub log: DebugLog,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            log: DebugLog::default(),
        }
    }
}

/// A client for one registry.
pub struct Client {
    http: reqwest::Client,
    /// For the streaming PATCH: no read timeout, because reqwest's runs from the start of the
    /// request to the response headers and would cut off any upload that takes longer. Stalls
    /// are caught by [`Client::send_watched`] instead, which counts body progress.
    upload_http: reqwest::Client,
    base: Url,
    auth: Authenticator,
    retry: RetryPolicy,
    /// Longest time without progress (no answer, no body bytes taken) before an attempt fails.
    stall: Duration,
    log: DebugLog,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// The token scope for pushing to (and reading back from) a repository.
fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

impl Client {
    pub fn new(
        base: Url,
        credentials: Box<dyn CredentialProvider>,
        options: &ClientOptions,
    ) -> Result<Self, RegistryError> {
        let stall = options.retry.stall_timeout(options.read_timeout);
        let builder = || {
            let registry = base.clone();
            reqwest::Client::builder()
                .user_agent(concat!("ecr-push/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(options.retry.stall_timeout(options.connect_timeout))
                .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                    // Redirects obey the same rule as upload Locations: a blob download may go
                    // to S3, but never to the runner's own network (reqwest drops the
                    // Authorization header on any host change; this also keeps requests and
                    // bodies away from such addresses).
                    if attempt.previous().len() >= 10 {
                        attempt.error("too many redirects")
                    } else if location_allowed(&registry, attempt.url()) {
                        attempt.follow()
                    } else {
                        let refused = format!(
                            "refusing to follow a redirect to {}, a different host that is not \
                             public HTTPS",
                            attempt.url().host_str().unwrap_or("?")
                        );
                        attempt.error(refused)
                    }
                }))
        };
        let http = builder()
            .read_timeout(stall)
            .build()
            .map_err(|e| RegistryError::transport("set up the HTTP client", &e))?;
        let upload_http = builder()
            .build()
            .map_err(|e| RegistryError::transport("set up the HTTP client", &e))?;
        Ok(Self {
            http,
            upload_http,
            auth: Authenticator::new(credentials, &base, options.log.clone()),
            base,
            retry: options.retry.clone(),
            stall,
            log: options.log.clone(),
        })
    }

    /// How this client retries (for callers that stream a body themselves).
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// `host[:port]`, as it appears in image references.
    pub fn host(&self) -> String {
        let host = self.base.host_str().unwrap_or_default();
        match self.base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    fn endpoint(&self, repository: &str, tail: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("/v2/{repository}/{tail}"));
        url.set_query(None);
        url
    }

    /// Sends a request built by `build`, adding authorization, answering auth challenges and
    /// retrying what is worth retrying. Returns the first response that is neither.
    async fn execute(
        &self,
        operation: &str,
        scope: &str,
        build: &(dyn Fn() -> RequestBuilder + Sync),
    ) -> Result<Response, RegistryError> {
        self.execute_with(operation, scope, build, self.retry.start())
            .await
    }

    /// [`Client::execute`] with attempts that may share an enclosing operation's time budget.
    async fn execute_with(
        &self,
        operation: &str,
        scope: &str,
        build: &(dyn Fn() -> RequestBuilder + Sync),
        mut attempts: retry::Attempts<'_>,
    ) -> Result<Response, RegistryError> {
        let mut refreshed = false;
        loop {
            let authorization = self.auth.authorization(scope).await?;
            let (http, request) = with_auth(build(), &authorization).build_split();
            let request = request.map_err(|e| RegistryError::refused(operation, &e))?;
            // Method and path only: queries carry upload state and, after a redirect, signed
            // credentials.
            let (method, path) = (request.method().clone(), request.url().path().to_owned());
            let result = http.execute(request).await;
            self.log.line(|| {
                format!(
                    "{operation}: {method} {path} -> {} (attempt {})",
                    answered(&result),
                    attempts.number()
                )
            });
            let delay = match result {
                Ok(response) if may_refuse(&response) => {
                    let refusal = Refusal::of(operation, response, &authorization).await?;
                    match self
                        .handle_refusal(&refusal, scope, &authorization, refreshed)
                        .await
                    {
                        Ok(true) => {
                            refreshed = true;
                            continue;
                        }
                        Ok(false) => return Err(refusal.into_error(operation, &authorization)),
                        // The token service is part of the registry: its hiccups are retried
                        // like the registry's own.
                        Err(error) if error.is_transient() => match attempts.next_delay(None) {
                            Some(delay) => delay,
                            None => return Err(error.exhausted(&attempts, None)),
                        },
                        Err(error) => return Err(error),
                    }
                }
                Ok(response) if retry::is_retryable_status(response.status()) => {
                    let asked = retry::retry_after(response.headers());
                    match attempts.next_delay(asked) {
                        Some(delay) => delay,
                        None => {
                            return Err(RegistryError::from_response(operation, response)
                                .await
                                .exhausted(&attempts, asked));
                        }
                    }
                }
                Ok(response) => {
                    self.auth.accepted(&authorization);
                    return Ok(response);
                }
                Err(error) if !is_transient_transport(&error) => {
                    return Err(RegistryError::refused(operation, &error));
                }
                Err(error) => match attempts.next_delay(None) {
                    Some(delay) => delay,
                    None => {
                        return Err(
                            RegistryError::transport(operation, &error).exhausted(&attempts, None)
                        );
                    }
                },
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// Whether the request that was refused should be sent again, with new authorization.
    async fn handle_refusal(
        &self,
        refusal: &Refusal,
        scope: &str,
        sent: &Authorization,
        already_refreshed: bool,
    ) -> Result<bool, RegistryError> {
        self.auth
            .on_refused(
                &self.http,
                refusal.challenge.as_deref(),
                scope,
                sent,
                already_refreshed,
            )
            .await
    }

    /// The size of a blob if the repository has it and its size is known (see
    /// [`Client::blob_status`]): `None` also when the registry would not say how large it is,
    /// so a caller that skips existing blobs uploads it again rather than trust an unknown size.
    pub async fn blob_size(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        Ok(match self.blob_status(repository, digest).await? {
            BlobStatus::Present(size) => size,
            BlobStatus::Missing => None,
        })
    }

    /// Whether the repository has a blob, and its size. `HEAD` answers carry the size in
    /// `Content-Length`; when one does not (a proxy that strips it, a registry that sends its
    /// answer chunked), the size is asked again with a one-byte range `GET`
    /// (`Content-Range: bytes 0-0/<size>`), and left unknown if that does not tell either: an
    /// absent header is not a size of 0.
    pub async fn blob_status(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<BlobStatus, RegistryError> {
        let url = self.endpoint(repository, &format!("blobs/{digest}"));
        let operation = format!("check blob {digest} in {repository}");
        let scope = push_scope(repository);
        let response = self
            .execute(&operation, &scope, &|| self.http.head(url.clone()))
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(BlobStatus::Missing),
            _ => return Err(RegistryError::from_response(&operation, response).await),
        }
        if let Some(size) = content_length(response.headers()) {
            return Ok(BlobStatus::Present(Some(size)));
        }
        let operation = format!("ask the size of blob {digest} in {repository}");
        let response = self
            .execute(&operation, &scope, &|| {
                self.http.get(url.clone()).header(RANGE, "bytes=0-0")
            })
            .await?;
        let size = match response.status() {
            StatusCode::PARTIAL_CONTENT => response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(_, total)| total.trim().parse().ok()),
            // The range was ignored: the whole blob would follow (it is not read).
            StatusCode::OK => content_length(response.headers()),
            _ => None,
        };
        self.log.line(|| match size {
            Some(size) => format!("{operation}: {size} bytes (the HEAD answer had no length)"),
            None => format!("{operation}: unknown (no length in the HEAD or range answers)"),
        });
        Ok(BlobStatus::Present(size))
    }

    /// Streams a blob to the registry and commits it if `check` accepts what was sent.
    /// The whole upload is retried (with a fresh body, so the source is read again) after
    /// transient failures; every step shares one time budget.
    pub async fn upload_blob<E>(
        &self,
        repository: &str,
        make_body: &(dyn Fn() -> UploadBody + Sync),
        check: &(dyn Fn(&Streamed) -> Result<(), E> + Sync),
    ) -> Result<Streamed, UploadError<E>> {
        let scope = push_scope(repository);
        let mut attempts = self.retry.start();
        let mut refreshed = false;
        loop {
            let failure = match self
                .upload_once(repository, &scope, make_body, check, refreshed, &attempts)
                .await
            {
                Ok(streamed) => return Ok(streamed),
                Err(Attempt::Final(error)) => return Err(error),
                Err(Attempt::Reauthorized) => {
                    refreshed = true;
                    continue;
                }
                Err(Attempt::Transient(error, asked)) => (error, asked),
            };
            match attempts.next_delay(failure.1) {
                Some(delay) => tokio::time::sleep(delay).await,
                None => {
                    return Err(UploadError::Registry(
                        failure.0.exhausted(&attempts, failure.1),
                    ));
                }
            }
        }
    }

    async fn upload_once<E>(
        &self,
        repository: &str,
        scope: &str,
        make_body: &(dyn Fn() -> UploadBody + Sync),
        check: &(dyn Fn(&Streamed) -> Result<(), E> + Sync),
        refreshed: bool,
        attempts: &retry::Attempts<'_>,
    ) -> Result<Streamed, Attempt<E>> {
        let start_url = self.endpoint(repository, "blobs/uploads/");
        let operation = format!("start an upload to {repository}");
        let response = self
            .execute_with(
                &operation,
                scope,
                &|| self.http.post(start_url.clone()).header(CONTENT_LENGTH, 0),
                attempts.nested(),
            )
            .await
            .map_err(Attempt::from_registry)?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(Attempt::from_registry(
                RegistryError::from_response(&operation, response).await,
            ));
        }
        let location = self.location(&response, &start_url)?;

        // The PATCH body cannot be replayed, so it is sent once here; any failure restarts the
        // whole upload with a new body.
        let body = make_body();
        let operation = format!("upload a blob to {repository}");
        let authorization = self
            .auth
            .authorization(scope)
            .await
            .map_err(Attempt::from_registry)?;
        let progress = Progress::new();
        let chunks = {
            let progress = progress.clone();
            futures::StreamExt::inspect(body.chunks, move |_| progress.touch())
        };
        let mut request = self
            .upload_http
            .patch(location.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(chunks));
        if let Some(length) = body.length {
            request = request.header(CONTENT_LENGTH, length);
        }
        let sent = self
            .send_watched(with_auth(request, &authorization), &progress, &operation)
            .await;
        self.log_patch(&operation, &location, &sent, attempts.number());
        let outcome = body.outcome.await.map_err(|e| {
            Attempt::Final(UploadError::Source(io::Error::other(format!(
                "the blob reader failed: {e}"
            ))))
        })?;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                // A source that could not be read is the input's fault; anything else is the
                // network's, and worth another try.
                if let Err(source_error) = outcome
                    && source_error.kind() != io::ErrorKind::BrokenPipe
                {
                    return Err(Attempt::Final(UploadError::Source(source_error)));
                }
                // A refused redirect is final; a broken connection or a stall is not.
                return Err(Attempt::from_registry(error));
            }
        };
        let response = self
            .unless_refused(&operation, response, scope, &authorization, refreshed)
            .await?;
        match response.status() {
            // ECR answers 201 where the spec says 202; some registries 204.
            StatusCode::ACCEPTED | StatusCode::CREATED | StatusCode::NO_CONTENT => {}
            _ => {
                let asked = retry::retry_after(response.headers());
                return Err(Attempt::from_session(
                    RegistryError::from_response(&operation, response).await,
                    asked,
                ));
            }
        }
        let streamed = outcome.map_err(|e| Attempt::Final(UploadError::Source(e)))?;
        // Later PATCH responses carry the session's next location; ECR sends none, so the old
        // one stays valid. Its `Range` may be stale (ECR), so it is not read at all: the whole
        // blob went in this one PATCH, and the commit's digest check says whether it arrived.
        let location = match response.headers().get(LOCATION) {
            Some(_) => self.location(&response, &location)?,
            None => location,
        };
        if let Err(refused) = check(&streamed) {
            self.abandon(&location, scope).await;
            return Err(Attempt::Final(UploadError::Refused(refused)));
        }
        self.commit(repository, scope, location, &streamed, refreshed)
            .await?;
        Ok(streamed)
    }

    /// The answer to a request of an upload session, unless it refuses the credentials: then
    /// the upload is started again with new ones ([`Attempt::Reauthorized`]) or, if that was
    /// tried already, fails.
    async fn unless_refused<E>(
        &self,
        operation: &str,
        response: Response,
        scope: &str,
        authorization: &Authorization,
        refreshed: bool,
    ) -> Result<Response, Attempt<E>> {
        if !may_refuse(&response) {
            self.auth.accepted(authorization);
            return Ok(response);
        }
        let refusal = Refusal::of(operation, response, authorization)
            .await
            .map_err(|error| Attempt::from_session(error, None))?;
        if self
            .handle_refusal(&refusal, scope, authorization, refreshed)
            .await
            .map_err(Attempt::from_registry)?
        {
            Err(Attempt::Reauthorized)
        } else {
            Err(Attempt::Final(
                refusal.into_error(operation, authorization).into(),
            ))
        }
    }

    fn log_patch(
        &self,
        operation: &str,
        location: &Url,
        sent: &Result<Response, RegistryError>,
        attempt: u32,
    ) {
        self.log.line(|| {
            let answer = match sent {
                Ok(response) => format!("HTTP {}", response.status().as_u16()),
                Err(_) => "no answer".to_owned(),
            };
            format!(
                "{operation}: PATCH {} -> {answer} (attempt {attempt})",
                location.path()
            )
        });
    }

    /// Sends a streaming request and waits for its answer, failing the attempt when nothing
    /// moves for [`Client::stall`]: neither a body chunk taken by the connection nor an answer.
    /// (A fixed deadline would cut off large uploads on slow links; no deadline would let a
    /// registry that stopped reading hold the push forever.)
    async fn send_watched(
        &self,
        request: RequestBuilder,
        progress: &Progress,
        operation: &str,
    ) -> Result<Response, RegistryError> {
        let send = request.send();
        tokio::pin!(send);
        loop {
            let idle = progress.idle();
            if idle >= self.stall {
                return Err(RegistryError::Transport {
                    operation: operation.to_owned(),
                    message: format!(
                        "no progress for {} s: the registry stopped reading the upload or \
                         answering",
                        self.stall.as_secs()
                    ),
                });
            }
            tokio::select! {
                result = &mut send => {
                    return result.map_err(|error| {
                        if is_transient_transport(&error) {
                            RegistryError::transport(operation, &error)
                        } else {
                            RegistryError::refused(operation, &error)
                        }
                    });
                }
                () = tokio::time::sleep(self.stall.saturating_sub(idle)) => {}
            }
        }
    }

    /// `PUT <location>?digest=` with no body: the registry checks the digest of what it
    /// received and makes the blob visible.
    async fn commit<E>(
        &self,
        repository: &str,
        scope: &str,
        mut location: Url,
        streamed: &Streamed,
        refreshed: bool,
    ) -> Result<(), Attempt<E>> {
        let digest = &streamed.sent.digest;
        location
            .query_pairs_mut()
            .append_pair("digest", digest.as_ref());
        let operation = format!("commit blob {digest} to {repository}");
        // An expired token (ECR's after 12 hours, a registry's short-lived bearer tokens) may be
        // refused at the commit after a long upload: renew it once and commit again; the
        // uploaded bytes wait in the session.
        let mut refreshed = refreshed;
        let response = loop {
            let authorization = self
                .auth
                .authorization(scope)
                .await
                .map_err(Attempt::from_registry)?;
            let request = self.http.put(location.clone()).header(CONTENT_LENGTH, 0);
            let sent = with_auth(request, &authorization).send().await;
            self.log.line(|| {
                format!(
                    "{operation}: PUT {} -> {}",
                    location.path(),
                    answered(&sent)
                )
            });
            let response = match sent {
                Ok(response) => response,
                Err(error) if !is_transient_transport(&error) => {
                    return Err(Attempt::from_registry(RegistryError::refused(
                        &operation, &error,
                    )));
                }
                Err(error) => {
                    // The commit may have landed before the connection broke; if the blob is
                    // there with the right size, the upload is done.
                    if let Ok(Some(size)) = self.blob_size(repository, digest).await
                        && size == streamed.sent.size
                    {
                        return Ok(());
                    }
                    return Err(Attempt::Transient(
                        RegistryError::transport(&operation, &error),
                        None,
                    ));
                }
            };
            if !may_refuse(&response) {
                self.auth.accepted(&authorization);
                break response;
            }
            let refusal = Refusal::of(&operation, response, &authorization)
                .await
                .map_err(|error| Attempt::from_session(error, None))?;
            if !self
                .handle_refusal(&refusal, scope, &authorization, refreshed)
                .await
                .map_err(Attempt::from_registry)?
            {
                return Err(Attempt::Final(
                    refusal.into_error(&operation, &authorization).into(),
                ));
            }
            refreshed = true;
        };
        if !matches!(
            response.status(),
            StatusCode::CREATED | StatusCode::ACCEPTED | StatusCode::NO_CONTENT
        ) {
            let asked = retry::retry_after(response.headers());
            return Err(Attempt::from_session(
                RegistryError::from_response(&operation, response).await,
                asked,
            ));
        }
        if let Some(returned) = header_digest(response.headers())
            && &returned != digest
        {
            return Err(Attempt::Final(UploadError::Registry(
                RegistryError::Protocol(format!(
                    "{operation}: the registry answered that it stored digest {returned}, not \
                     {digest}, so it does not hold what was sent; push again, and if this \
                     repeats, check the registry or whatever sits between it and this machine \
                     (a proxy that rewrites uploads)"
                )),
            )));
        }
        Ok(())
    }

    /// Best effort: tell the registry to drop an upload session that will not be committed.
    async fn abandon(&self, location: &Url, scope: &str) {
        if let Ok(authorization) = self.auth.authorization(scope).await {
            let sent = with_auth(self.http.delete(location.clone()), &authorization)
                .send()
                .await;
            self.log.line(|| {
                format!(
                    "cancel an upload: DELETE {} -> {}",
                    location.path(),
                    answered(&sent)
                )
            });
        }
    }

    /// Resolves a `Location` header (relative or absolute) against the request URL, refusing
    /// to send credentials to an unexpected place.
    fn location<E>(&self, response: &Response, request_url: &Url) -> Result<Url, Attempt<E>> {
        let raw = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Attempt::Final(UploadError::Registry(RegistryError::Protocol(
                    "the registry started an upload but sent no Location for it".into(),
                )))
            })?;
        let url = request_url.join(raw).map_err(|e| {
            Attempt::Final(UploadError::Registry(RegistryError::Protocol(format!(
                "the registry sent an invalid upload Location {raw:?}: {e}"
            ))))
        })?;
        if self.location_allowed(&url) {
            Ok(url)
        } else {
            Err(Attempt::Final(UploadError::Registry(
                RegistryError::Protocol(format!(
                    "the registry asked to continue the upload at {}, a different host that is not \
                 public HTTPS; refusing to send credentials there",
                    url.host_str().unwrap_or("?")
                )),
            )))
        }
    }

    /// Same scheme, host and port as the registry; or another host only over HTTPS and only
    /// if it is not a loopback or private address (which would let a hostile registry aim our
    /// credentials at the runner's own network).
    fn location_allowed(&self, url: &Url) -> bool {
        location_allowed(&self.base, url)
    }

    /// The tags of a repository (`tags/list?n=page_size`), following the `Link: <…>;
    /// rel="next"` of each page for at most `max_pages` pages; empty if it does not exist.
    /// (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md#listing-tags>)
    pub async fn list_tags(
        &self,
        repository: &str,
        page_size: usize,
        max_pages: usize,
    ) -> Result<Vec<String>, RegistryError> {
        #[derive(Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.endpoint(repository, "tags/list");
        url.query_pairs_mut()
            .append_pair("n", &page_size.to_string());
        let operation = format!("list the tags of {repository}");
        let mut tags = Vec::new();
        for _ in 0..max_pages {
            let response = self
                .execute(&operation, &push_scope(repository), &|| {
                    self.http.get(url.clone())
                })
                .await?;
            match response.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => return Ok(tags),
                _ => return Err(RegistryError::from_response(&operation, response).await),
            }
            // Only to the registry itself: the next page must not take the credentials
            // elsewhere.
            let next = response
                .headers()
                .get(LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .and_then(|link| url.join(link).ok())
                .filter(|next| next.origin() == self.base.origin());
            let body = read_limited(response, 4 * 1024 * 1024)
                .await
                .map_err(|e| RegistryError::transport(&operation, &e))?;
            let list: TagList = serde_json::from_slice(&body).map_err(|e| {
                RegistryError::Protocol(format!("{operation}: not a tag list: {e}"))
            })?;
            tags.extend(list.tags.unwrap_or_default());
            match next {
                Some(next) => url = next,
                None => break,
            }
        }
        Ok(tags)
    }

    /// Puts a manifest or index under `reference` (a tag or its digest).
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        document: &Document,
    ) -> Result<(), RegistryError> {
        let url = self.endpoint(repository, &format!("manifests/{reference}"));
        let operation = format!(
            "put manifest {} as {repository}:{reference}",
            document.digest
        );
        let response = self
            .execute(&operation, &push_scope(repository), &|| {
                self.http
                    .put(url.clone())
                    .header(CONTENT_TYPE, &document.media_type)
                    .body(document.bytes.clone())
            })
            .await?;
        if !matches!(
            response.status(),
            StatusCode::CREATED | StatusCode::OK | StatusCode::ACCEPTED
        ) {
            return Err(RegistryError::from_response(&operation, response).await);
        }
        // ECR sends no Location on manifest PUT; the digest header, when present, must agree.
        if let Some(returned) = header_digest(response.headers())
            && returned != document.digest
        {
            return Err(RegistryError::Protocol(format!(
                "{operation}: the registry answered that it stored it as {returned}, but a \
                 registry must store a manifest byte for byte (expected {}); do not use this \
                 image from this registry, and check the registry or whatever sits between it \
                 and this machine",
                document.digest
            )));
        }
        Ok(())
    }

    /// Fetches a manifest with every manifest media type in `Accept`, so the registry returns
    /// the stored bytes instead of converting them. Returns the bytes and their content type.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(Bytes, String)>, RegistryError> {
        let url = self.endpoint(repository, &format!("manifests/{reference}"));
        let operation = format!("fetch manifest {repository}:{reference}");
        let accept = MANIFEST_MEDIA_TYPES.join(", ");
        let response = self
            .execute(&operation, &push_scope(repository), &|| {
                self.http.get(url.clone()).header(ACCEPT, &accept)
            })
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(RegistryError::from_response(&operation, response).await),
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = read_limited(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| RegistryError::transport(&operation, &e))?;
        if body.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(RegistryError::Protocol(format!(
                "{operation}: the manifest is larger than {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        Ok(Some((Bytes::from(body), media_type)))
    }

    /// Downloads a small blob (a config) whole; `None` if the repository does not have it.
    pub async fn get_small_blob(
        &self,
        repository: &str,
        digest: &Digest,
        limit: u64,
    ) -> Result<Option<Bytes>, RegistryError> {
        let url = self.endpoint(repository, &format!("blobs/{digest}"));
        let operation = format!("download blob {digest} from {repository}");
        let response = self
            .execute(&operation, &push_scope(repository), &|| {
                self.http.get(url.clone())
            })
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(RegistryError::from_response(&operation, response).await),
        }
        let body = read_limited(response, limit)
            .await
            .map_err(|e| RegistryError::transport(&operation, &e))?;
        Ok((body.len() as u64 <= limit).then(|| Bytes::from(body)))
    }

    /// Asks the registry to link blob `digest` of repository `from` into `repository` without
    /// moving bytes (`POST ?mount=&from=`). Returns false when it did not (mounting is optional:
    /// the registry then opens an ordinary upload session, which is cancelled here).
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<bool, RegistryError> {
        let mut url = self.endpoint(repository, "blobs/uploads/");
        url.query_pairs_mut()
            .append_pair("mount", digest.as_ref())
            .append_pair("from", from);
        let scope = push_scope(repository);
        let operation = format!("mount blob {digest} from {from} into {repository}");
        let response = self
            .execute(&operation, &scope, &|| {
                self.http.post(url.clone()).header(CONTENT_LENGTH, 0)
            })
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Some(location) = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|raw| url.join(raw).ok())
                    .filter(|location| self.location_allowed(location))
                {
                    self.abandon(&location, &scope).await;
                }
                Ok(false)
            }
            _ => Err(RegistryError::from_response(&operation, response).await),
        }
    }

    /// Starts downloading a blob (for deep verification). Redirects (ECR → S3) are followed
    /// by the HTTP client, which drops the `Authorization` header when the host changes.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Response, RegistryError> {
        let url = self.endpoint(repository, &format!("blobs/{digest}"));
        let operation = format!("download blob {digest} from {repository}");
        let response = self
            .execute(&operation, &push_scope(repository), &|| {
                self.http.get(url.clone())
            })
            .await?;
        if response.status() == StatusCode::OK {
            Ok(response)
        } else {
            Err(RegistryError::from_response(&operation, response).await)
        }
    }
}

/// The target of the `rel="next"` link of a `Link` header (RFC 8288), e.g.
/// `</v2/app/tags/list?n=2&last=b>; rel="next"`.
fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once(';')?;
        let is_next = params.split(';').any(|param| {
            param
                .trim()
                .strip_prefix("rel=")
                .is_some_and(|rel| rel.trim_matches('"').split(' ').any(|r| r == "next"))
        });
        is_next.then(|| target.trim().trim_start_matches('<').trim_end_matches('>'))
    })
}

/// Same scheme, host and port as the registry (`base`); or another host only over HTTPS and
/// only if it is not a loopback or private address (which would let a hostile registry aim our
/// credentials, or at least our requests, at the runner's own network).
fn location_allowed(base: &Url, url: &Url) -> bool {
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default();
    if same_origin {
        return true;
    }
    if url.scheme() != "https" {
        return false;
    }
    match url.host() {
        Some(url::Host::Domain(domain)) => {
            let domain = domain.to_ascii_lowercase();
            domain != "localhost"
                && !domain.ends_with(".localhost")
                && !domain.ends_with(".internal")
        }
        Some(url::Host::Ipv4(ip)) => is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_public(IpAddr::V6(ip)),
        None => false,
    }
}

/// Transport errors worth another attempt: everything but a refused redirect and a request
/// that could not even be built.
fn is_transient_transport(error: &reqwest::Error) -> bool {
    !(error.is_redirect() || error.is_builder())
}

/// When body bytes were last taken by the connection (for [`Client::send_watched`]).
#[derive(Clone)]
struct Progress {
    started: std::time::Instant,
    last_millis: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Progress {
    fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            last_millis: std::sync::Arc::default(),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last =
            Duration::from_millis(self.last_millis.load(std::sync::atomic::Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// How one upload attempt ended, when it did not succeed.
enum Attempt<E> {
    Final(UploadError<E>),
    Transient(RegistryError, Option<Duration>),
    Reauthorized,
}

impl<E> Attempt<E> {
    fn from_registry(error: RegistryError) -> Self {
        Self::from_registry_with(error, None)
    }

    fn from_registry_with(error: RegistryError, asked: Option<Duration>) -> Self {
        if error.is_transient() {
            Self::Transient(error, asked)
        } else {
            Self::Final(UploadError::Registry(error))
        }
    }

    /// An error answer to a request of an upload session (PATCH, commit). Besides the usual
    /// transient ones, a lost session (`BLOB_UPLOAD_UNKNOWN`, `BLOB_UPLOAD_INVALID`: expired,
    /// or forgotten by a restarted registry node) and `DIGEST_INVALID` (our bytes were checked
    /// as they were sent, so the registry received others: corrupted in transit) are worth a
    /// fresh upload, within the same bounds.
    fn from_session(error: RegistryError, asked: Option<Duration>) -> Self {
        if matches!(
            error.code(),
            Some("BLOB_UPLOAD_UNKNOWN" | "BLOB_UPLOAD_INVALID" | "DIGEST_INVALID")
        ) {
            Self::Transient(error, asked)
        } else {
            Self::from_registry_with(error, asked)
        }
    }
}

fn with_auth(request: RequestBuilder, authorization: &Authorization) -> RequestBuilder {
    match &authorization.header {
        Some(value) => {
            let mut header = reqwest::header::HeaderValue::from_str(value.expose())
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
            header.set_sensitive(true);
            request.header(AUTHORIZATION, header)
        }
        None => request,
    }
}

/// Whether an answer may be a refusal of the credentials (see [`Refusal`]).
fn may_refuse(response: &Response) -> bool {
    matches!(
        response.status(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    )
}

/// The registry refused the credentials: every 401, and a 403 to a request that carried
/// credentials whose error says they were denied or expired. ECR answers an expired
/// authorization token with 403 `DENIED` "Your authorization token has expired"
/// (<https://docs.aws.amazon.com/AmazonECR/latest/userguide/common-errors-docker.html>), so a
/// 403 is worth one try with credentials minted again, as a 401 is.
struct Refusal {
    status: u16,
    /// `WWW-Authenticate`, if the registry sent one.
    challenge: Option<String>,
    /// The registry's code and message, for the error if the refusal stands.
    said: String,
}

impl Refusal {
    /// Reads a 401 or 403. A 403 that is not about the credentials is an ordinary error (its
    /// body had to be read to tell).
    async fn of(
        operation: &str,
        response: Response,
        sent: &Authorization,
    ) -> Result<Self, RegistryError> {
        let status = response.status();
        // With no credentials sent, a 403 refuses the request, not credentials.
        if status == StatusCode::FORBIDDEN && sent.header.is_none() {
            return Err(RegistryError::from_response(operation, response).await);
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_limited(response, 64 * 1024).await.unwrap_or_default();
        let (code, message) = parse_error_body(&body);
        if status == StatusCode::FORBIDDEN && !refuses_credentials(code.as_deref(), &message) {
            return Err(RegistryError::Status {
                operation: operation.to_owned(),
                status: status.as_u16(),
                code,
                message,
            });
        }
        let said = match (code, message.is_empty()) {
            (Some(code), false) => format!("{code}: {message}"),
            (Some(code), true) => code,
            (None, _) => message,
        };
        Ok(Self {
            status: status.as_u16(),
            challenge,
            said,
        })
    }

    /// The final error, when the refusal stands.
    fn into_error(self, operation: &str, sent: &Authorization) -> RegistryError {
        RegistryError::Unauthorized {
            operation: operation.to_owned(),
            status: self.status,
            said: self.said,
            hint: if sent.header.is_some() {
                "check the user name and password (or the AWS role's ECR permissions)".into()
            } else {
                "the registry needs credentials: pass --username and set ECR_PUSH_PASSWORD".into()
            },
        }
    }
}

/// Whether a 403's error says the credentials were refused: ECR's `DENIED` (an expired token,
/// or a principal without the permission), or any message about expiry.
fn refuses_credentials(code: Option<&str>, message: &str) -> bool {
    matches!(code, Some("DENIED" | "UNAUTHORIZED"))
        || message.to_ascii_lowercase().contains("expired")
}

/// How a request ended, for a debug line: the status, or what kind of failure it was (never
/// the error's text, which may name a URL with credentials in its query).
fn answered(result: &Result<Response, reqwest::Error>) -> String {
    match result {
        Ok(response) => format!("HTTP {}", response.status().as_u16()),
        Err(error) if error.is_timeout() => "no answer (timed out)".into(),
        Err(error) if error.is_connect() => "no answer (cannot connect)".into(),
        Err(error) if error.is_redirect() => "redirect refused".into(),
        Err(_) => "no answer (the connection failed)".into(),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get(DOCKER_CONTENT_DIGEST)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| !is_public(IpAddr::V4(v4))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> Client {
        Client::new(
            Url::parse(base).unwrap(),
            Box::new(StaticCredentials(None)),
            &ClientOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn next_links_are_found_in_link_headers() {
        assert_eq!(
            next_link(r#"</v2/app/tags/list?n=2&last=b>; rel="next""#),
            Some("/v2/app/tags/list?n=2&last=b")
        );
        assert_eq!(
            next_link(r#"<https://x/prev>; rel="prev", <https://x/next>; rel=next"#),
            Some("https://x/next")
        );
        assert_eq!(next_link(r#"</v2/app/tags/list?n=2>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn locations_on_the_registry_itself_are_allowed() {
        let c = client("http://127.0.0.1:5000");
        assert!(c.location_allowed(
            &Url::parse("http://127.0.0.1:5000/v2/x/blobs/uploads/abc").unwrap()
        ));
    }

    #[test]
    fn locations_elsewhere_need_public_https() {
        let c = client("https://123.dkr.ecr.eu-west-1.amazonaws.com");
        assert!(
            c.location_allowed(
                &Url::parse(
                    "https://prod-eu-west-1-starport-layer-bucket.s3.eu-west-1.amazonaws.com/x"
                )
                .unwrap()
            )
        );
        assert!(!c.location_allowed(&Url::parse("http://example.com/x").unwrap()));
        assert!(!c.location_allowed(&Url::parse("https://127.0.0.1/x").unwrap()));
        assert!(!c.location_allowed(&Url::parse("https://10.0.0.5/x").unwrap()));
        assert!(
            !c.location_allowed(&Url::parse("https://169.254.169.254/latest/meta-data").unwrap())
        );
        assert!(!c.location_allowed(&Url::parse("https://[::1]/x").unwrap()));
        assert!(!c.location_allowed(&Url::parse("https://localhost/x").unwrap()));
    }

    #[test]
    fn forbidden_answers_that_refuse_the_credentials() {
        // ECR, for an expired authorization token and for a principal without permission.
        assert!(refuses_credentials(
            Some("DENIED"),
            "Your authorization token has expired. Reauthenticate and try again."
        ));
        assert!(refuses_credentials(
            Some("DENIED"),
            "User: arn:aws:sts::1:assumed-role/ci/s is not authorized to perform: ecr:InitiateLayerUpload"
        ));
        assert!(refuses_credentials(None, "token expired"));
        assert!(!refuses_credentials(
            Some("NAME_UNKNOWN"),
            "repository not known"
        ));
        assert!(!refuses_credentials(None, "Forbidden"));
    }

    #[test]
    fn error_bodies_give_code_and_message() {
        let (code, message) = parse_error_body(
            br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
        );
        assert_eq!(code.as_deref(), Some("NAME_UNKNOWN"));
        assert_eq!(message, "repository name not known to registry");
        let (code, message) = parse_error_body(b"<html>Bad Gateway</html>");
        assert_eq!(code, None);
        assert_eq!(message, "<html>Bad Gateway</html>");
    }
}
