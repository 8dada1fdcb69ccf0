//! A fake GitHub Actions OIDC token service inside the test process: `GET ?audience=<aud>`
//! with `Authorization: Bearer <request token>` answers `{"value": "<jwt>"}`. It counts the
//! tokens it minted, so a test can see that credentials were renewed.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;

pub struct OidcServer {
    port: u16,
    minted: Arc<AtomicUsize>,
    pub request_token: String,
}

impl OidcServer {
    /// Serves tokens with `sub` = `subject`, to requests bearing `request_token`.
    pub fn start(subject: &str, request_token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind OIDC server");
        let port = listener.local_addr().unwrap().port();
        let minted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&minted);
        let subject = subject.to_owned();
        let expected = format!("Bearer {request_token}");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut authorized = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("authorization")
                        && value.trim() == expected
                    {
                        authorized = true;
                    }
                }
                let audience = request_line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|target| target.split("audience=").nth(1))
                    .map(|a| a.split('&').next().unwrap_or_default().to_owned())
                    .unwrap_or_default();
                let (status, body) = if authorized {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    (
                        200,
                        serde_json::json!({"value": jwt(&subject, &audience, n)}).to_string(),
                    )
                } else {
                    (401, r#"{"message":"bad request token"}"#.to_owned())
                };
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            port,
            minted,
            request_token: request_token.to_owned(),
        }
    }

    /// `ACTIONS_ID_TOKEN_REQUEST_URL` as GitHub sets it (it already has a query).
    pub fn request_url(&self) -> String {
        format!("http://127.0.0.1:{}/token?api-version=2.0", self.port)
    }

    pub fn minted(&self) -> usize {
        self.minted.load(Ordering::SeqCst)
    }

    /// The live count of minted tokens, for hooks that react to renewals.
    pub fn counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.minted)
    }
}

/// An unsigned JWT with the claims a trust policy looks at; `n` makes every token distinct.
pub fn jwt(subject: &str, audience: &str, n: usize) -> String {
    let encode = |value: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    format!(
        "{}.{}.c2lnbmF0dXJl",
        encode(serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        encode(serde_json::json!({
            "iss": "https://token.actions.githubusercontent.com",
            "sub": subject,
            "aud": audience,
            "jti": format!("token-{n}"),
        }))
    )
}
