//! An HTTP proxy between ecr-push and the real registry that can misbehave on purpose: answer
//! with a chosen status (401, 429, 503, …), drop the connection, or pass the request on. A hook
//! decides per request; every request is recorded.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, BodyStream, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

/// A request as the hook sees it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// 1 for the first request through the proxy.
    pub number: usize,
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: Option<String>,
}

/// What to do with a request.
pub enum Action {
    Forward,
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl Action {
    pub fn status(status: u16) -> Self {
        Self::Respond {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

type Hook = dyn Fn(&Seen) -> Action + Send + Sync;

struct State {
    upstream: String,
    own_origin: String,
    hook: Box<Hook>,
    seen: Mutex<Vec<Seen>>,
    client: reqwest::Client,
}

pub struct Proxy {
    port: u16,
    state: Arc<State>,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (e.g. `http://127.0.0.1:5000`).
    pub fn start(upstream: &str, hook: impl Fn(&Seen) -> Action + Send + Sync + 'static) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            own_origin: format!("http://127.0.0.1:{port}"),
            hook: Box::new(hook),
            seen: Mutex::new(Vec::new()),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        });
        let serving = Arc::clone(&state);
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        handle(Arc::clone(&state), request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            port,
            state,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let seen = {
        let mut all = state.seen.lock().unwrap();
        let seen = Seen {
            number: all.len() + 1,
            method: request.method().to_string(),
            target: request
                .uri()
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default(),
            authorization: request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        all.push(seen.clone());
        seen
    };
    match (state.hook)(&seen) {
        Action::Respond {
            status,
            headers,
            body,
        } => {
            let mut response = Response::builder().status(status);
            for (name, value) in headers {
                response = response.header(name, value);
            }
            Ok(response.body(full(body)).unwrap())
        }
        Action::Forward => forward(&state, request).await,
    }
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

async fn forward(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let url = format!(
        "{}{}",
        state.upstream,
        parts
            .uri
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    let mut outgoing = state.client.request(parts.method.clone(), url);
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "connection" | "transfer-encoding") {
            outgoing = outgoing.header(name, value);
        }
    }
    let chunks = BodyStream::new(body).filter_map(|frame| async move {
        match frame {
            Ok(frame) => frame.into_data().ok().map(Ok::<_, std::io::Error>),
            Err(error) => Some(Err(std::io::Error::other(error))),
        }
    });
    let upstream = outgoing
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .map_err(std::io::Error::other)?;
    let mut response = Response::builder().status(upstream.status().as_u16());
    for (name, value) in upstream.headers() {
        if matches!(name.as_str(), "connection" | "transfer-encoding") {
            continue;
        }
        if name.as_str() == "location" {
            // The registry names itself in absolute Locations; keep the client on the proxy.
            let rewritten = value
                .to_str()
                .unwrap_or_default()
                .replace(&state.upstream, &state.own_origin);
            response = response.header(name, rewritten);
        } else {
            response = response.header(name, value);
        }
    }
    let body = StreamBody::new(
        upstream
            .bytes_stream()
            .map(|chunk| chunk.map(Frame::data).map_err(std::io::Error::other)),
    );
    Ok(response.body(http_body_util::BodyExt::boxed(body)).unwrap())
}
