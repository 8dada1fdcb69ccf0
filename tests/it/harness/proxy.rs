//! An HTTP proxy between ecr-push and the real registry that can misbehave on purpose: answer
//! with a chosen status (401, 429, 503, …), drop the connection before answering or in the
//! middle of a request body, stall, flip bytes of a body on its way to the registry or back,
//! change the answer (drop or forge headers such as `Content-Length` or
//! `Docker-Content-Digest`, serve other bytes, 201 for 202, relative or hostile `Location`),
//! or pass the request on. A hook decides per request; every request is recorded with its
//! [`Kind`], and the first 256 KiB of every answer body are kept (a test can read what an API
//! handed out, e.g. the session credentials STS issued).
//!
//! [`Faults`] builds such a hook from rules ("30% of PATCH requests answer 503", "the first
//! commit is reset", "the first PATCH whose body is at least 32 KiB is cut after 16 KiB"),
//! reproducibly for a seed.
//!
//! A fault that fired is not necessarily a fault that happened: a reset "after 16 KiB" of a
//! 900-byte body cuts nothing, a flip of byte 1000 of that body flips nothing. So the proxy
//! records what it actually did to each request ([`Outcome`]: body bytes read and whether the
//! body was read to its end, the offset actually flipped, whether an answer was cut short, …),
//! and [`Proxy::effective`] counts, per rule, the requests on which its fault had its effect.
//!
//! [`Proxy::start_ecr_style`] also makes the registry answer the way ECR does (see `DESIGN.md`
//! §4): 201 on PATCH with no `Location` and a stale `Range`, relative upload `Location`s, no
//! `Docker-Content-Digest` on manifest GET and no `Location` on manifest PUT. [`Proxy::start_observing_manifests`] hands every accepted
//! manifest PUT to a callback (the ECR mirror, `mirror.rs`, is built on it).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, BodyStream, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

/// What a request is, in OCI distribution terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `GET /v2/`
    Ping,
    HeadBlob,
    GetBlob,
    /// `POST /v2/<name>/blobs/uploads/`
    StartUpload,
    /// `PATCH <upload location>`
    PatchUpload,
    /// `PUT <upload location>?digest=`
    CommitUpload,
    /// `DELETE <upload location>` (an abandoned upload)
    CancelUpload,
    PutManifest,
    GetManifest,
    HeadManifest,
    Tags,
    /// Anything else (a token service served by the hook, …).
    Other,
}

impl Kind {
    /// Classifies a request by method and path.
    pub fn of(method: &str, target: &str) -> Self {
        let path = target.split('?').next().unwrap_or_default();
        if path == "/v2/" || path == "/v2" {
            return Self::Ping;
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Self::Other;
        };
        if let Some((_, upload)) = rest.rsplit_once("/blobs/uploads") {
            let started = upload.trim_start_matches('/').is_empty();
            return match (method, started) {
                ("POST", true) => Self::StartUpload,
                ("PATCH", false) => Self::PatchUpload,
                ("PUT", false) => Self::CommitUpload,
                ("DELETE", false) => Self::CancelUpload,
                _ => Self::Other,
            };
        }
        if rest.contains("/blobs/") {
            return match method {
                "HEAD" => Self::HeadBlob,
                "GET" => Self::GetBlob,
                _ => Self::Other,
            };
        }
        if rest.contains("/manifests/") {
            return match method {
                "PUT" => Self::PutManifest,
                "GET" => Self::GetManifest,
                "HEAD" => Self::HeadManifest,
                _ => Self::Other,
            };
        }
        if rest.ends_with("/tags/list") {
            return Self::Tags;
        }
        Self::Other
    }
}

/// A request as the hook sees it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// 1 for the first request through the proxy.
    pub number: usize,
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: Option<String>,
    /// The request's `Content-Length` (none for a chunked body, e.g. a layer compressed while
    /// it is sent).
    pub content_length: Option<u64>,
    /// The request's `Range` header.
    pub range: Option<String>,
    pub kind: Kind,
    /// When the proxy received it.
    pub at: Instant,
}

/// Changes to a forwarded request or to its answer.
#[derive(Clone, Debug, Default)]
pub struct Modify {
    /// XOR this byte of the request body with 0xff on its way to the registry.
    pub flip_request_byte: Option<u64>,
    /// Answer with this status instead of the registry's.
    pub status: Option<u16>,
    /// Headers left out of the answer (lower case).
    pub remove_headers: Vec<String>,
    /// Headers set on the answer (replacing the registry's).
    pub set_headers: Vec<(String, String)>,
    /// Turn an absolute `Location` into a path.
    pub relative_location: bool,
    /// Read the request body no faster than this (bytes per second): a slow link.
    pub throttle: Option<u64>,
    /// Send this many bytes of the answer's body, then break the connection.
    pub truncate_response: Option<u64>,
    /// Pass the request on without its query string (a mount `POST ?mount=&from=` becomes a
    /// plain upload start: a registry that cannot mount answers that way).
    pub strip_query: bool,
    /// XOR this byte of the answer's body with 0xff on its way to the client.
    pub flip_response_byte: Option<u64>,
    /// Answer with this body instead of the registry's (a registry that serves other bytes).
    pub response_body: Option<Bytes>,
}

impl Modify {
    pub fn flip_byte(offset: u64) -> Self {
        Self {
            flip_request_byte: Some(offset),
            ..Self::default()
        }
    }

    pub fn without_header(name: &str) -> Self {
        Self {
            remove_headers: vec![name.to_ascii_lowercase()],
            ..Self::default()
        }
    }

    /// The answer with header `name` (lower case) set to `value`: a registry that lies.
    pub fn with_header(name: &str, value: &str) -> Self {
        Self {
            set_headers: vec![(name.to_ascii_lowercase(), value.to_owned())],
            ..Self::default()
        }
    }

    /// Whether every change asked for took effect on a request with this outcome.
    fn took_effect(&self, outcome: &Outcome) -> bool {
        (self.flip_request_byte.is_none() || outcome.flipped.is_some())
            && (self.flip_response_byte.is_none() || outcome.response_flipped.is_some())
            && (self.truncate_response.is_none() || outcome.response_cut)
            && (self.remove_headers.is_empty()
                && self.set_headers.is_empty()
                && !self.relative_location
                || outcome.headers_changed)
    }
}

/// What the proxy actually did with one request, as far as the client could notice.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Request body bytes read from the client.
    pub body_read: u64,
    /// Whether the request body was read to its end (false: the connection was closed, or the
    /// proxy stopped reading, before the client had sent all of it).
    pub body_complete: bool,
    /// `sha256:<hex>` of the whole request body as the client sent it (before any flip).
    pub body_digest: Option<String>,
    /// The offset of a request body byte flipped on its way to the registry.
    pub flipped: Option<u64>,
    /// The status of the answer the client got; `None` if the connection broke instead.
    pub status: Option<u16>,
    /// The answer's body was cut short: the client got less than the registry sent.
    pub response_cut: bool,
    /// The offset of an answer body byte flipped on its way to the client.
    pub response_flipped: Option<u64>,
    /// Some header of the answer was removed, set or rewritten.
    pub headers_changed: bool,
    /// The first [`RECORDED_BODY`] bytes of the answer's body.
    pub response_body: Vec<u8>,
}

/// How much of each answer body is kept in [`Outcome::response_body`].
const RECORDED_BODY: usize = 256 * 1024;

/// What to do with a request.
pub enum Action {
    Forward,
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Read the request, then close the connection without an answer (the registry never sees
    /// it).
    Reset,
    /// Read this many bytes of the request body (all of it if it is shorter), then close the
    /// connection: a connection that breaks in the middle of an upload.
    ResetMidBody {
        after: u64,
    },
    /// Pass the request on, so the registry acts on it, but lose the answer.
    ForwardThenReset,
    /// Answer nothing for this long (longer than the client waits), then close.
    Stall(Duration),
    /// Read this many bytes of the request body, then stop reading (and answer nothing) for
    /// this long, then close: an upload that stops moving.
    StallMidBody {
        after: u64,
        stall: Duration,
    },
    /// Pass the request on with changes.
    ForwardModified(Modify),
}

impl Action {
    pub fn status(status: u16) -> Self {
        Self::Respond {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// An OCI error answer: `{"errors":[{"code": ..., "message": ...}]}`.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        Self::Respond {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string(),
        }
    }
}

/// When a fault rule fires, counted over the requests of its kinds.
#[derive(Clone, Copy, Debug)]
pub enum When {
    Always,
    /// The first `n` matching requests.
    First(usize),
    /// Each matching request with this probability, drawn from the plan's seed.
    Chance(f64),
}

/// A fault, turned into an [`Action`] each time it fires.
#[derive(Clone, Debug)]
pub enum Fault {
    /// An answer with this status (and an OCI error body), optionally with `Retry-After`.
    Status {
        status: u16,
        code: &'static str,
        retry_after: Option<u64>,
    },
    Reset,
    ResetMidBody(u64),
    ForwardThenReset,
    Stall(Duration),
    StallMidBody(u64, Duration),
    Modify(Modify),
}

impl Fault {
    pub fn status(status: u16) -> Self {
        let code = match status {
            429 => "TOOMANYREQUESTS",
            401 => "UNAUTHORIZED",
            403 => "DENIED",
            _ => "UNAVAILABLE",
        };
        Self::Status {
            status,
            code,
            retry_after: None,
        }
    }

    /// Whether this fault, having fired on a request, had its effect on it.
    fn took_effect(&self, outcome: &Outcome) -> bool {
        match self {
            Self::Status { .. } | Self::Reset | Self::ForwardThenReset | Self::Stall(_) => true,
            // A body shorter than the cut point was read whole: nothing was cut.
            Self::ResetMidBody(_) | Self::StallMidBody(..) => !outcome.body_complete,
            Self::Modify(modify) => modify.took_effect(outcome),
        }
    }

    fn action(&self) -> Action {
        match self {
            Self::Status {
                status,
                code,
                retry_after,
            } => {
                let Action::Respond {
                    status,
                    mut headers,
                    body,
                } = Action::error(*status, code, "injected by the test proxy")
                else {
                    unreachable!()
                };
                if let Some(seconds) = retry_after {
                    headers.push(("Retry-After".into(), seconds.to_string()));
                }
                Action::Respond {
                    status,
                    headers,
                    body,
                }
            }
            Self::Reset => Action::Reset,
            Self::ResetMidBody(after) => Action::ResetMidBody { after: *after },
            Self::ForwardThenReset => Action::ForwardThenReset,
            Self::Stall(duration) => Action::Stall(*duration),
            Self::StallMidBody(after, stall) => Action::StallMidBody {
                after: *after,
                stall: *stall,
            },
            Self::Modify(modify) => Action::ForwardModified(modify.clone()),
        }
    }
}

struct Rule {
    kinds: Vec<Kind>,
    /// Only requests whose body is at least this long (or of unknown length: chunked).
    min_body: Option<u64>,
    when: When,
    fault: Fault,
    matched: AtomicUsize,
    fired: AtomicUsize,
}

/// A reproducible fault plan: rules are tried in order, the first that fires decides; requests
/// no rule fires for are forwarded. Random choices depend only on the seed, the rule and how
/// many requests of its kinds came before (so with `--jobs 1` a run repeats exactly).
pub struct Faults {
    seed: u64,
    rules: Vec<Rule>,
    /// Request number → the rule that fired on it.
    fired_on: Mutex<HashMap<usize, usize>>,
}

impl Faults {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rules: Vec::new(),
            fired_on: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a rule for requests of `kinds` (empty: every request).
    #[must_use]
    pub fn on(self, kinds: &[Kind], when: When, fault: Fault) -> Self {
        self.add(kinds, None, when, fault)
    }

    /// Adds a rule for requests of `kinds` whose body is at least `min_body` bytes long by
    /// their `Content-Length`, or has no `Content-Length` (streamed while it is produced, as a
    /// layer compressed on the fly): with it a fault can aim at layer bodies and leave the
    /// small config blob alone. `When` counts only such requests.
    #[must_use]
    pub fn on_bodies(self, kinds: &[Kind], min_body: u64, when: When, fault: Fault) -> Self {
        self.add(kinds, Some(min_body), when, fault)
    }

    fn add(mut self, kinds: &[Kind], min_body: Option<u64>, when: When, fault: Fault) -> Self {
        self.rules.push(Rule {
            kinds: kinds.to_vec(),
            min_body,
            when,
            fault,
            matched: AtomicUsize::new(0),
            fired: AtomicUsize::new(0),
        });
        self
    }

    fn decide(&self, seen: &Seen) -> Action {
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.kinds.is_empty() && !rule.kinds.contains(&seen.kind) {
                continue;
            }
            if let (Some(min), Some(length)) = (rule.min_body, seen.content_length)
                && length < min
            {
                continue;
            }
            let n = rule.matched.fetch_add(1, Ordering::SeqCst);
            let fires = match rule.when {
                When::Always => true,
                When::First(count) => n < count,
                When::Chance(p) => unit_interval(self.seed, index as u64, n as u64) < p,
            };
            if fires {
                rule.fired.fetch_add(1, Ordering::SeqCst);
                self.fired_on.lock().unwrap().insert(seen.number, index);
                return rule.fault.action();
            }
        }
        Action::Forward
    }

    /// How often each rule fired, in the order they were added.
    pub fn fired(&self) -> Vec<usize> {
        self.rules
            .iter()
            .map(|rule| rule.fired.load(Ordering::SeqCst))
            .collect()
    }

    /// The rule that fired on request `number`, if any.
    fn rule_of(&self, number: usize) -> Option<usize> {
        self.fired_on.lock().unwrap().get(&number).copied()
    }
}

/// A number in [0, 1) from (seed, rule, n): splitmix64, no dependency, same on every machine.
fn unit_interval(seed: u64, rule: u64, n: u64) -> f64 {
    let mut z = seed
        .wrapping_add(rule.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(n.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // 24 random bits are plenty for fault probabilities.
    f64::from((z >> 40) as u32) / f64::from(1u32 << 24)
}

type Hook = dyn Fn(&Seen) -> Action + Send + Sync;

/// A manifest the registry accepted (see [`Proxy::start_observing_manifests`]).
#[derive(Clone, Debug)]
pub struct PutManifest {
    pub repository: String,
    /// The tag or digest it was put under.
    pub reference: String,
    /// The request's `Content-Type`.
    pub media_type: String,
    pub body: Bytes,
}

type ManifestHook = dyn Fn(&PutManifest) + Send + Sync;

struct State {
    upstream: String,
    own_origin: String,
    hook: Box<Hook>,
    seen: Mutex<Vec<Seen>>,
    client: reqwest::Client,
    ecr_style: bool,
    /// ECR style: the registry's real (stateful) upload URL behind each stable upload path.
    sessions: Mutex<HashMap<String, String>>,
    /// The plan behind the hook, when the proxy was started with one.
    faults: Option<Arc<Faults>>,
    /// Told of every manifest PUT the registry accepted, before the client gets the answer.
    on_manifest_put: Option<Arc<ManifestHook>>,
    /// What was done with each request, by request number.
    outcomes: Mutex<HashMap<usize, Outcome>>,
}

impl State {
    fn note(&self, number: usize, change: impl FnOnce(&mut Outcome)) {
        change(self.outcomes.lock().unwrap().entry(number).or_default());
    }
}

pub struct Proxy {
    port: u16,
    state: Arc<State>,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (e.g. `http://127.0.0.1:5000`).
    pub fn start(upstream: &str, hook: impl Fn(&Seen) -> Action + Send + Sync + 'static) -> Self {
        Self::launch(upstream, Box::new(hook), false, None, None)
    }

    /// A proxy that asks `hook` and calls `on_put` (on a blocking thread) for every manifest
    /// PUT the registry accepted, before the client gets the answer: what a registry with a
    /// second view of its images (ECR's API) would know at that moment.
    pub fn start_observing_manifests(
        upstream: &str,
        hook: impl Fn(&Seen) -> Action + Send + Sync + 'static,
        on_put: impl Fn(&PutManifest) + Send + Sync + 'static,
    ) -> Self {
        Self::launch(
            upstream,
            Box::new(hook),
            false,
            None,
            Some(Arc::new(on_put)),
        )
    }

    /// A proxy that answers like ECR does (see the module docs), and asks `hook` too.
    pub fn start_ecr_style(
        upstream: &str,
        hook: impl Fn(&Seen) -> Action + Send + Sync + 'static,
    ) -> Self {
        Self::launch(upstream, Box::new(hook), true, None, None)
    }

    /// A proxy that injects the faults of `faults`.
    pub fn with_faults(upstream: &str, faults: Faults) -> Self {
        let faults = Arc::new(faults);
        let deciding = Arc::clone(&faults);
        Self::launch(
            upstream,
            Box::new(move |seen| deciding.decide(seen)),
            false,
            Some(faults),
            None,
        )
    }

    fn launch(
        upstream: &str,
        hook: Box<Hook>,
        ecr_style: bool,
        faults: Option<Arc<Faults>>,
        on_manifest_put: Option<Arc<ManifestHook>>,
    ) -> Self {
        let server = super::HttpServer::bind(2);
        let port = server.port;
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            own_origin: format!("http://127.0.0.1:{port}"),
            hook,
            seen: Mutex::new(Vec::new()),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            ecr_style,
            sessions: Mutex::new(HashMap::new()),
            faults,
            on_manifest_put,
            outcomes: Mutex::new(HashMap::new()),
        });
        let serving = Arc::clone(&state);
        // A handler error ends the connection without an answer: that is how the Reset faults
        // work.
        let runtime = server.serve(move |request| handle(Arc::clone(&serving), request));
        Self {
            port,
            state,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many requests of `kind` were seen.
    pub fn count(&self, kind: Kind) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.kind == kind)
            .count()
    }

    /// How often each fault rule fired (with [`Proxy::with_faults`]).
    pub fn fired(&self) -> Vec<usize> {
        self.state
            .faults
            .as_ref()
            .map(|faults| faults.fired())
            .unwrap_or_default()
    }

    /// What was done with request `number` (see [`Seen::number`]).
    pub fn outcome(&self, number: usize) -> Outcome {
        self.state
            .outcomes
            .lock()
            .unwrap()
            .get(&number)
            .cloned()
            .unwrap_or_default()
    }

    /// Every request seen so far with what was done with it, in order.
    pub fn records(&self) -> Vec<(Seen, Outcome)> {
        self.seen()
            .into_iter()
            .map(|seen| {
                let outcome = self.outcome(seen.number);
                (seen, outcome)
            })
            .collect()
    }

    /// The requests on which fault rule `rule` fired, with what was done with them.
    pub fn fired_on(&self, rule: usize) -> Vec<(Seen, Outcome)> {
        let Some(faults) = &self.state.faults else {
            return Vec::new();
        };
        self.records()
            .into_iter()
            .filter(|(seen, _)| faults.rule_of(seen.number) == Some(rule))
            .collect()
    }

    /// For each fault rule, on how many requests its fault had its effect (a reset that cut a
    /// body before its end, a flip inside the body, …), not merely fired.
    pub fn effective(&self) -> Vec<usize> {
        let Some(faults) = &self.state.faults else {
            return Vec::new();
        };
        (0..faults.rules.len())
            .map(|index| {
                self.fired_on(index)
                    .iter()
                    .filter(|(_, outcome)| faults.rules[index].fault.took_effect(outcome))
                    .count()
            })
            .collect()
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn broken(what: &str) -> std::io::Error {
    std::io::Error::other(format!("test proxy: {what}"))
}

fn header(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let seen = {
        let mut all = state.seen.lock().unwrap();
        let method = request.method().to_string();
        let target = request
            .uri()
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default();
        let seen = Seen {
            number: all.len() + 1,
            kind: Kind::of(&method, &target),
            method,
            target,
            authorization: header(&request, "authorization"),
            content_length: header(&request, "content-length").and_then(|v| v.parse().ok()),
            range: header(&request, "range"),
            at: Instant::now(),
        };
        all.push(seen.clone());
        seen
    };
    let number = seen.number;
    state.note(number, |_| {});
    match (state.hook)(&seen) {
        Action::Respond {
            status,
            headers,
            body,
        } => {
            // Read the body first, as a registry would before refusing it.
            let (read, complete, digest) = read_all(request.into_body()).await;
            state.note(number, |outcome| {
                outcome.body_read = read;
                outcome.body_complete = complete;
                outcome.body_digest = digest;
                outcome.status = Some(status);
                outcome.response_body = body.as_bytes().to_vec();
            });
            let mut response = Response::builder().status(status);
            for (name, value) in headers {
                response = response.header(name, value);
            }
            Ok(response.body(full(body)).unwrap())
        }
        Action::Forward => forward(&state, &seen, request, &Modify::default()).await,
        Action::ForwardModified(modify) => forward(&state, &seen, request, &modify).await,
        Action::Reset => {
            let (read, complete, digest) = read_all(request.into_body()).await;
            state.note(number, |outcome| {
                outcome.body_read = read;
                outcome.body_complete = complete;
                outcome.body_digest = digest;
            });
            Err(broken("connection reset before answering"))
        }
        Action::ResetMidBody { after } => {
            let _body = read_some(&state, &seen, request.into_body(), after).await;
            Err(broken("connection reset in the middle of the request body"))
        }
        Action::StallMidBody { after, stall } => {
            // Keep the body (and so the connection) open without reading more.
            let _body = read_some(&state, &seen, request.into_body(), after).await;
            tokio::time::sleep(stall).await;
            Err(broken("stalled in the middle of the request body"))
        }
        Action::ForwardThenReset => {
            let response = forward(&state, &seen, request, &Modify::default()).await?;
            let _ = response.into_body().collect().await;
            // The registry answered; the client never saw it.
            state.note(number, |outcome| outcome.status = None);
            Err(broken("connection reset after the registry answered"))
        }
        Action::Stall(duration) => {
            tokio::time::sleep(duration).await;
            Err(broken("stalled"))
        }
    }
}

/// Reads a whole body: its length, whether it ended normally, and its digest.
async fn read_all(mut body: Incoming) -> (u64, bool, Option<String>) {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut read = 0u64;
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    read += data.len() as u64;
                }
            }
            Some(Err(_)) => return (read, false, None),
            None => {
                let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
                return (read, true, Some(digest));
            }
        }
    }
}

/// Reads at least `limit` bytes of a body (or all of it), notes how much was read and whether
/// that was the whole body, and hands back the rest unread.
async fn read_some(state: &State, seen: &Seen, mut body: Incoming, limit: u64) -> Incoming {
    use hyper::body::Body as _;
    let mut read = 0u64;
    let mut ended = false;
    while read < limit {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            Some(Err(_)) => break,
            None => {
                ended = true;
                break;
            }
        }
    }
    let complete = if ended || body.is_end_stream() {
        true
    } else if let Some(length) = seen.content_length {
        read >= length
    } else {
        // A chunked body that may or may not have ended right at the limit: one more look.
        // More data, or nothing yet (the client is still sending), means it was cut.
        match tokio::time::timeout(Duration::from_millis(300), body.frame()).await {
            Ok(None) => true,
            Ok(Some(Ok(frame))) => {
                frame.data_ref().is_none_or(|d| d.is_empty()) && body.is_end_stream()
            }
            Ok(Some(Err(_))) | Err(_) => false,
        }
    };
    state.note(seen.number, |outcome| {
        outcome.body_read = read;
        outcome.body_complete = complete;
    });
    body
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// The stable upload path (no query) a Location names, for ECR-style session tracking.
fn upload_key(location_or_target: &str) -> String {
    let without_origin = location_or_target
        .find("/v2/")
        .map_or(location_or_target, |at| &location_or_target[at..]);
    without_origin
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// What the forwarded request body has been so far (for [`Outcome`]).
#[derive(Default)]
struct BodyTrack {
    hasher: sha2::Sha256,
    read: u64,
    failed: bool,
    /// Noted in the outcome already.
    done: bool,
}

impl BodyTrack {
    /// Notes the body's end in the outcome of request `number` (once).
    fn finish(&mut self, state: &State, number: usize) {
        use sha2::Digest as _;
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let (read, complete) = (self.read, !self.failed);
        let digest = std::mem::take(&mut self.hasher).finalize();
        state.note(number, |outcome| {
            outcome.body_read = read;
            outcome.body_complete = complete;
            outcome.body_digest = complete.then(|| format!("sha256:{}", hex::encode(digest)));
        });
    }
}

async fn forward(
    state: &Arc<State>,
    seen: &Seen,
    request: Request<Incoming>,
    modify: &Modify,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut url = if modify.strip_query {
        format!(
            "{}{}",
            state.upstream,
            target.split('?').next().unwrap_or_default()
        )
    } else {
        format!("{}{target}", state.upstream)
    };
    let upload_session = matches!(
        seen.kind,
        Kind::PatchUpload | Kind::CommitUpload | Kind::CancelUpload
    );
    if state.ecr_style && upload_session {
        // The client kept the upload path the POST gave (ECR's stay valid); the registry wants
        // the URL with its latest `_state`.
        let key = upload_key(&target);
        if let Some(real) = state.sessions.lock().unwrap().get(&key) {
            url.clone_from(real);
            if let Some((_, query)) = target.split_once('?') {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(query);
            }
        }
    }
    let mut outgoing = state.client.request(parts.method.clone(), url);
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "connection" | "transfer-encoding") {
            outgoing = outgoing.header(name, value);
        }
    }
    if seen.kind == Kind::PutManifest
        && let Some(on_put) = &state.on_manifest_put
    {
        return forward_observed(state, seen, &parts.headers, body, outgoing, on_put).await;
    }
    let number = seen.number;
    let length = seen.content_length;
    let flip = modify.flip_request_byte;
    let throttle = modify.throttle;
    let track = Arc::new(Mutex::new(BodyTrack::default()));
    let tracking = Arc::clone(&track);
    let noting = Arc::clone(state);
    let chunks = BodyStream::new(body).filter_map(move |frame| {
        let delay = match (&frame, throttle) {
            (Ok(frame), Some(rate)) => frame.data_ref().map_or(Duration::ZERO, |d| {
                Duration::from_nanos(d.len() as u64 * 1_000_000_000 / rate.max(1))
            }),
            _ => Duration::ZERO,
        };
        let result = match frame {
            Ok(frame) => frame.into_data().ok().map(|data| {
                use sha2::Digest as _;
                let mut track = tracking.lock().unwrap();
                track.hasher.update(&data);
                let start = track.read;
                track.read += data.len() as u64;
                // A body of known length ends here: the HTTP client sending it on stops
                // polling once it has that many bytes, so the end of the stream is never seen.
                if length == Some(track.read) {
                    track.finish(&noting, number);
                }
                match flip {
                    Some(at) if at >= start && at < track.read => {
                        let mut bytes = data.to_vec();
                        bytes[(at - start) as usize] ^= 0xff;
                        noting.note(number, |outcome| outcome.flipped = Some(at));
                        Ok::<_, std::io::Error>(Bytes::from(bytes))
                    }
                    _ => Ok(data),
                }
            }),
            Err(error) => {
                tracking.lock().unwrap().failed = true;
                Some(Err(std::io::Error::other(error)))
            }
        };
        async move {
            tokio::time::sleep(delay).await;
            result
        }
    });
    // Runs once the client's body has been read to its end (or broke off).
    let finishing = Arc::clone(state);
    let end = futures::stream::once(async move {
        track.lock().unwrap().finish(&finishing, number);
    })
    .filter_map(|()| async { None::<Result<Bytes, std::io::Error>> });
    let upstream = outgoing
        .body(reqwest::Body::wrap_stream(chunks.chain(end)))
        .send()
        .await
        .map_err(std::io::Error::other)?;
    Ok(answer(state, seen, upstream, modify))
}

/// Forwards a manifest PUT whole (manifests are small) and, once the registry accepted it,
/// tells `on_put` before answering the client.
async fn forward_observed(
    state: &Arc<State>,
    seen: &Seen,
    headers: &hyper::HeaderMap,
    body: Incoming,
    outgoing: reqwest::RequestBuilder,
    on_put: &Arc<ManifestHook>,
) -> Result<Response<Body>, std::io::Error> {
    let bytes = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let upstream = outgoing
        .body(bytes.clone())
        .send()
        .await
        .map_err(std::io::Error::other)?;
    if upstream.status().is_success() {
        let path = seen.target.split('?').next().unwrap_or_default();
        let (repository, reference) = path
            .trim_start_matches("/v2/")
            .rsplit_once("/manifests/")
            .unwrap_or_default();
        let put = PutManifest {
            repository: repository.to_owned(),
            reference: reference.to_owned(),
            media_type: headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            body: bytes,
        };
        let on_put = Arc::clone(on_put);
        tokio::task::spawn_blocking(move || on_put(&put))
            .await
            .map_err(std::io::Error::other)?;
    }
    Ok(answer(state, seen, upstream, &Modify::default()))
}

/// The registry's answer as the client gets it: Locations kept on the proxy, then changed as
/// ECR would (if so started) and as `modify` says.
fn answer(
    state: &Arc<State>,
    seen: &Seen,
    upstream: reqwest::Response,
    modify: &Modify,
) -> Response<Body> {
    let kind = seen.kind;
    let number = seen.number;
    let mut status = upstream.status().as_u16();
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in upstream.headers() {
        if matches!(name.as_str(), "connection" | "transfer-encoding") {
            continue;
        }
        let value = value.to_str().unwrap_or_default();
        if name.as_str() == "location" {
            // The registry names itself in absolute Locations; keep the client on the proxy.
            headers.push((
                "location".into(),
                value.replace(&state.upstream, &state.own_origin),
            ));
        } else {
            headers.push((name.as_str().to_owned(), value.to_owned()));
        }
    }
    if state.ecr_style {
        ecr_answer(state, kind, &mut status, &mut headers);
    }
    if let Some(replacement) = modify.status {
        status = replacement;
    }
    let before = headers.clone();
    headers.retain(|(name, _)| !modify.remove_headers.contains(name));
    for (name, value) in &modify.set_headers {
        headers.retain(|(existing, _)| existing != name);
        headers.push((name.clone(), value.clone()));
    }
    if modify.relative_location {
        for (name, value) in &mut headers {
            if name == "location"
                && let Some(path) = value.strip_prefix(&state.own_origin)
            {
                *value = path.to_owned();
            }
        }
    }
    let headers_changed = headers != before;
    state.note(number, |outcome| {
        outcome.status = Some(status);
        outcome.headers_changed = headers_changed;
    });
    if let Some(body) = &modify.response_body {
        headers.retain(|(name, _)| name != "content-length");
        let mut response = Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(name, value);
        }
        state.note(number, |outcome| outcome.response_body = body.to_vec());
        return response.body(full(body.clone())).unwrap();
    }
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(name, value);
    }
    let mut left = modify.truncate_response.unwrap_or(u64::MAX);
    let flip = modify.flip_response_byte;
    let mut offset = 0u64;
    let recording = Arc::clone(state);
    let body = StreamBody::new(upstream.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        if left == 0 {
            recording.note(number, |outcome| outcome.response_cut = true);
            return Err(broken("answer cut short"));
        }
        let keep = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        left -= keep as u64;
        if keep < chunk.len() {
            recording.note(number, |outcome| outcome.response_cut = true);
        }
        let mut chunk = chunk.slice(..keep);
        let start = offset;
        offset += keep as u64;
        if let Some(at) = flip
            && at >= start
            && at < offset
        {
            let mut bytes = chunk.to_vec();
            bytes[(at - start) as usize] ^= 0xff;
            chunk = Bytes::from(bytes);
            recording.note(number, |outcome| outcome.response_flipped = Some(at));
        }
        recording.note(number, |outcome| {
            let room = RECORDED_BODY.saturating_sub(outcome.response_body.len());
            outcome
                .response_body
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
        });
        Ok(Frame::data(chunk))
    }));
    response.body(http_body_util::BodyExt::boxed(body)).unwrap()
}

/// Rewrites a registry answer the way ECR answers.
fn ecr_answer(state: &State, kind: Kind, status: &mut u16, headers: &mut Vec<(String, String)>) {
    let location = headers
        .iter()
        .find(|(name, _)| name == "location")
        .map(|(_, value)| value.clone());
    match kind {
        Kind::StartUpload | Kind::PatchUpload => {
            if let Some(location) = location {
                let key = upload_key(&location);
                let real = location.replace(&state.own_origin, &state.upstream);
                let real = if real.starts_with('/') {
                    format!("{}{real}", state.upstream)
                } else {
                    real
                };
                state.sessions.lock().unwrap().insert(key.clone(), real);
                headers.retain(|(name, _)| name != "location");
                if kind == Kind::StartUpload {
                    // A relative Location without the registry's state.
                    headers.push(("location".into(), key));
                }
            }
            if kind == Kind::PatchUpload {
                // 201 where the spec says 202, and a Range that is not kept up to date.
                if *status == 202 {
                    *status = 201;
                }
                headers.retain(|(name, _)| name != "range");
                headers.push(("range".into(), "0-0".into()));
            }
        }
        Kind::GetManifest => headers.retain(|(name, _)| name != "docker-content-digest"),
        Kind::PutManifest => headers.retain(|(name, _)| name != "location"),
        _ => {}
    }
}
