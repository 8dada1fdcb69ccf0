//! A recording proxy in front of `moto_server`: the tool's AWS API calls pass through it and are
//! kept as (action, parameters), so a test can count them (`AssumeRoleWithWebIdentity`,
//! `GetAuthorizationToken`) and see what was asked (`RoleSessionName`, `DurationSeconds`,
//! `registryIds`, the web identity token). Point `--sts-endpoint`, `--ecr-endpoint` or the
//! `AWS_ENDPOINT_URL*` variables at [`AwsRecorder::url`].
//!
//! The two protocols involved: STS is the query protocol (a form-encoded POST with `Action=`),
//! ECR is JSON 1.1 (the action in `X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.<Action>`,
//! the parameters as a JSON body).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

/// One AWS API call as the tool sent it.
#[derive(Clone, Debug)]
pub struct AwsCall {
    pub action: String,
    /// The parameters: the JSON body, or the form fields as a JSON object of strings.
    pub params: serde_json::Value,
}

struct State {
    upstream: String,
    calls: Mutex<Vec<AwsCall>>,
    client: reqwest::Client,
}

pub struct AwsRecorder {
    port: u16,
    state: Arc<State>,
    _runtime: tokio::runtime::Runtime,
}

impl AwsRecorder {
    /// Starts recording in front of `upstream` (moto's URL).
    pub fn start(upstream: &str) -> Self {
        let server = super::HttpServer::bind(1);
        let port = server.port;
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            calls: Mutex::new(Vec::new()),
            client: reqwest::Client::new(),
        });
        let serving = Arc::clone(&state);
        let runtime = server.serve(move |request| relay(Arc::clone(&serving), request));
        Self {
            port,
            state,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<AwsCall> {
        self.state.calls.lock().unwrap().clone()
    }

    /// The calls of one action.
    pub fn calls_of(&self, action: &str) -> Vec<AwsCall> {
        self.calls()
            .into_iter()
            .filter(|call| call.action == action)
            .collect()
    }

    /// How many calls of `action` were made.
    pub fn count(&self, action: &str) -> usize {
        self.calls_of(action).len()
    }
}

async fn relay(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok());
    state.calls.lock().unwrap().push(parse_call(target, &body));

    let path = parts
        .uri
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut outgoing = state
        .client
        .request(parts.method.clone(), format!("{}{path}", state.upstream));
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "connection" | "transfer-encoding" | "content-length"
        ) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = match outgoing.body(body).send().await {
        Ok(upstream) => {
            let mut response = Response::builder().status(upstream.status().as_u16());
            for (name, value) in upstream.headers() {
                if !matches!(
                    name.as_str(),
                    "connection" | "transfer-encoding" | "content-length"
                ) {
                    response = response.header(name, value);
                }
            }
            let bytes = upstream.bytes().await.unwrap_or_default();
            response.body(Full::new(bytes)).unwrap()
        }
        Err(error) => Response::builder()
            .status(502)
            .body(Full::new(Bytes::from(format!("AWS recorder: {error}"))))
            .unwrap(),
    };
    Ok(answer)
}

/// The action and parameters of a request in either protocol.
fn parse_call(target: Option<&str>, body: &[u8]) -> AwsCall {
    if let Some(target) = target {
        return AwsCall {
            action: target.rsplit('.').next().unwrap_or_default().to_owned(),
            params: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
        };
    }
    let fields: serde_json::Map<String, serde_json::Value> = url::form_urlencoded::parse(body)
        .map(|(key, value)| {
            (
                key.into_owned(),
                serde_json::Value::from(value.into_owned()),
            )
        })
        .collect();
    AwsCall {
        action: fields
            .get("Action")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        params: serde_json::Value::Object(fields),
    }
}

#[test]
fn both_protocols_are_parsed() {
    let sts = parse_call(
        None,
        b"Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleSessionName=ci-1&DurationSeconds=900",
    );
    assert_eq!(sts.action, "AssumeRoleWithWebIdentity");
    assert_eq!(sts.params["RoleSessionName"], "ci-1");
    assert_eq!(sts.params["DurationSeconds"], "900");
    let ecr = parse_call(
        Some("AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"),
        br#"{"registryIds":["111111111111"]}"#,
    );
    assert_eq!(ecr.action, "GetAuthorizationToken");
    assert_eq!(ecr.params["registryIds"][0], "111111111111");
}
