//! Arvados REST API client over HTTPS (ureq, blocking): auth header, JSON bodies, Arvados
//! error messages (reference §2.1). When to retry is `retry`'s job, whom to trust `tls`'s.
//!
//! Every call sends `Authorization: Bearer <token>` and one `X-Request-Id` (the same on
//! every retry of that call). Transient failures (connection errors, 408, 429, 5xx except
//! 501) are retried until `RetryPolicy::deadline`; other 4xx answers return at once. Error
//! texts never contain the token.

use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::arvados::decode;
use crate::arvados::retry::{Attempt, RetryPolicy, is_transient_error, retry_loop};
use crate::arvados::tls;
use crate::redact::Secrets;
use crate::store::StoreError;

/// Largest JSON response we read (a big output collection's manifest can be large).
const MAX_JSON_BODY: u64 = 1 << 30;

/// Idle connections the agent keeps, in all and per host, and for how long.
const IDLE_CONNECTIONS: usize = 32;
const IDLE_CONNECTIONS_PER_HOST: usize = 8;
const IDLE_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// How to reach and authenticate to the API server.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `host[:port]`; the scheme is always https. (A value that already starts with
    /// `http://` or `https://` is used as the base URL as is; tests use that.)
    pub host: String,
    pub token: String,
    /// Skip TLS certificate verification (ARVADOS_API_HOST_INSECURE).
    pub insecure: bool,
    /// Extra CA certificates in PEM (SSL_CERT_FILE), trusted besides the system bundle.
    pub extra_ca_file: Option<PathBuf>,
    pub retry: RetryPolicy,
}

/// A fresh request id: `req-` and 20 random characters from `[0-9a-z]`.
pub fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = String::from("req-");
    let mut bits = 0u64;
    for i in 0..20 {
        if i % 10 == 0 {
            // RandomState has per-process random keys; mix in time and a counter so that
            // every call differs.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            bits = h.finish();
        }
        out.push(ALPHABET[(bits % 36) as usize] as char);
        bits /= 36;
    }
    out
}

/// The message of an Arvados error body `{"errors":["…"]}` (joined with "; "), or a short
/// excerpt of whatever the body is.
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body)
        && let Some(Value::Array(errors)) = obj.get("errors")
        && !errors.is_empty()
    {
        let texts: Vec<String> = errors
            .iter()
            .map(|e| match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        return texts.join("; ");
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty response body)".to_string();
    }
    const MAX: usize = 300;
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        text.to_string()
    }
}

/// Build the HTTP agent shared by the API and Keep clients.
fn build_agent(settings: &ApiSettings) -> Result<ureq::Agent, StoreError> {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_send_request(Some(Duration::from_secs(60)))
        // A stall of this long in any read or write fails the attempt. The whole body
        // (64 MiB Keep blocks on slow links) has no overall limit.
        .timeout_per_read(Some(Duration::from_secs(300)))
        .timeout_per_write(Some(Duration::from_secs(300)))
        .timeout_recv_response(Some(Duration::from_secs(600)))
        .max_redirects(0)
        // One pool for the API and every Keep service, shared by every clone of the agent
        // (the container's token too): a host gets a new connection (and TLS handshake)
        // only when all of its pooled ones are busy. Room for the requests a run sends at
        // once; kept long enough that the end of a short container still finds them, not
        // so long that the server (nginx: 75 s) has closed them first. A connection the
        // server closed is seen before reuse (ureq probes it) and replaced.
        .max_idle_connections(IDLE_CONNECTIONS)
        .max_idle_connections_per_host(IDLE_CONNECTIONS_PER_HOST)
        .max_idle_age(IDLE_CONNECTION_AGE)
        .user_agent(concat!("crunch-run/", env!("CARGO_PKG_VERSION")))
        .build();
    let connector = tls::connector(settings.insecure, settings.extra_ca_file.as_deref())?;
    Ok(ureq::Agent::with_parts(
        config,
        connector,
        ureq::unversioned::resolver::DefaultResolver::default(),
    ))
}

/// Client for the Arvados REST API. Cheap to share by reference; `agent()` hands out the
/// (cloneable) HTTP agent for Keep.
pub struct ApiClient {
    base_url: String,
    token: String,
    retry: RetryPolicy,
    agent: ureq::Agent,
    secrets: Secrets,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base_url", &self.base_url)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

#[derive(Clone, Copy)]
enum Method {
    Get,
    Put,
    Post,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
        }
    }
}

/// Percent-encode every byte of `s` but ASCII letters, digits and those in `keep`.
pub(crate) fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encode a query string component (RFC 3986 unreserved characters kept).
fn url_encode(s: &str) -> String {
    percent_encode(s, b"-._~")
}

impl ApiClient {
    /// The same client acting with another token (the container's).
    pub fn with_token(&self, token: &str) -> ApiClient {
        let mut secrets = self.secrets.clone();
        secrets.add(token);
        ApiClient {
            base_url: self.base_url.clone(),
            token: token.to_string(),
            retry: self.retry.clone(),
            agent: self.agent.clone(),
            secrets,
        }
    }

    /// Build a client. Fails only on bad TLS settings (unreadable or empty SSL_CERT_FILE).
    pub fn new(settings: ApiSettings) -> Result<ApiClient, StoreError> {
        let agent = build_agent(&settings)?;
        let host = settings.host.trim_end_matches('/');
        let base_url = if host.starts_with("https://") || host.starts_with("http://") {
            host.to_string()
        } else {
            format!("https://{host}")
        };
        let mut secrets = Secrets::new();
        secrets.add(&settings.token);
        Ok(ApiClient {
            base_url,
            token: settings.token,
            retry: settings.retry.clone(),
            agent,
            secrets,
        })
    }

    /// The HTTP agent (TLS settings, timeouts, connection pool), for Keep to reuse.
    pub fn agent(&self) -> ureq::Agent {
        self.agent.clone()
    }

    /// The API token (for Keep's Authorization header). Never put it in a message.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The retry policy, for Keep to use the same.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.clone()
    }

    /// `GET path?query`, e.g. `get("/arvados/v1/containers/zzzzz-dz642-…", &[])`.
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, StoreError> {
        self.call(Method::Get, path, query, None)
    }

    /// `PUT path` with a JSON body.
    pub fn put(&self, path: &str, body: &Value) -> Result<Value, StoreError> {
        self.call(Method::Put, path, &[], Some(body))
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, StoreError> {
        self.call(Method::Post, path, &[], Some(body))
    }

    fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, StoreError> {
        let what = self.secrets.redact(&format!("{} {}", method.name(), path));
        let mut url = format!("{}{}", self.base_url, path);
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&url_encode(k));
            url.push('=');
            url.push_str(&url_encode(v));
        }
        let body_bytes = match body {
            Some(v) => Some(serde_json::to_vec(v).map_err(|e| StoreError::Invalid {
                what: what.clone(),
                message: format!("cannot encode request body: {e}"),
            })?),
            None => None,
        };
        let request_id = new_request_id();
        let result = retry_loop(&self.retry, &what, || {
            self.attempt(method, &url, body_bytes.as_deref(), &request_id, &what)
        });
        result.map_err(|e| redact_error(e, &self.secrets))
    }

    fn attempt(
        &self,
        method: Method,
        url: &str,
        body: Option<&[u8]>,
        request_id: &str,
        what: &str,
    ) -> Attempt<Value> {
        let auth = format!("Bearer {}", self.token);
        // No attempt outlasts the run's limit (the wrap-up's deadline).
        let left = self.retry.limit.time_left();
        let result = match method {
            Method::Get => self
                .agent
                .get(url)
                .config()
                .timeout_global(left)
                .build()
                .header("Authorization", &auth)
                .header("X-Request-Id", request_id)
                .header("Accept", "application/json")
                .call(),
            Method::Put | Method::Post => {
                let req = if matches!(method, Method::Put) {
                    self.agent.put(url)
                } else {
                    self.agent.post(url)
                };
                req.config()
                    .timeout_global(left)
                    .build()
                    .header("Authorization", &auth)
                    .header("X-Request-Id", request_id)
                    .header("Accept", "application/json")
                    .header("Content-Type", "application/json")
                    .send(body.unwrap_or_default())
            }
        };
        let mut response = match result {
            Ok(r) => r,
            Err(e) => return Attempt::from_transport(&e),
        };
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_JSON_BODY)
            .read_to_vec();
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) if is_transient_error(&e) => {
                return Attempt::Transient {
                    status: None,
                    message: format!("reading response (HTTP {status}): {e}"),
                };
            }
            Err(e) => {
                return Attempt::Fatal(StoreError::Invalid {
                    what: what.to_string(),
                    message: format!("reading response (HTTP {status}): {e}"),
                });
            }
        };
        classify_response(status, &bytes, what)
    }
}

/// Turn an answer into an attempt: 2xx → parsed JSON, 404 → NotFound, anything else
/// transient or refused by its status, with the Arvados error message.
fn classify_response(status: u16, bytes: &[u8], what: &str) -> Attempt<Value> {
    match status {
        200..=299 => {
            if bytes.is_empty() {
                return Attempt::Done(Value::Null);
            }
            match decode::answer(bytes, what) {
                Ok(v) => Attempt::Done(v),
                Err(e) => Attempt::Fatal(e),
            }
        }
        404 => Attempt::NotFound,
        s => Attempt::from_status(s, error_message(bytes)),
    }
}

/// The same error with every secret masked in its texts.
pub(crate) fn redact_error(err: StoreError, secrets: &Secrets) -> StoreError {
    match err {
        StoreError::NotFound { what } => StoreError::NotFound {
            what: secrets.redact(&what),
        },
        StoreError::Rejected {
            what,
            status,
            message,
        } => StoreError::Rejected {
            what: secrets.redact(&what),
            status,
            message: secrets.redact(&message),
        },
        StoreError::Unavailable { what, message } => StoreError::Unavailable {
            what: secrets.redact(&what),
            message: secrets.redact(&message),
        },
        StoreError::Invalid { what, message } => StoreError::Invalid {
            what: secrets.redact(&what),
            message: secrets.redact(&message),
        },
        StoreError::Undecodable {
            what,
            message,
            state,
        } => StoreError::Undecodable {
            what: secrets.redact(&what),
            message: secrets.redact(&message),
            state,
        },
        StoreError::Io { what, source } => {
            let text = source.to_string();
            let redacted = secrets.redact(&text);
            let source = if redacted == text {
                source
            } else {
                std::io::Error::new(source.kind(), redacted)
            };
            StoreError::Io {
                what: secrets.redact(&what),
                source,
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod testserver {
    //! A tiny plain-HTTP/1.1 server for tests: one connection at a time, each request
    //! answered by a handler that sees the parsed request and returns raw response bytes
    //! (so tests can send broken responses). Every connection is closed after one answer.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::thread;

    #[derive(Debug, Clone)]
    pub struct Req {
        pub method: String,
        pub path: String,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Req {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        out
    }

    pub struct Server {
        pub url: String,
        pub requests: Arc<Mutex<Vec<Req>>>,
    }

    /// Start a server; `handler(n, req)` gets the 0-based request number.
    pub fn start(handler: impl Fn(usize, &Req) -> Vec<u8> + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let path = parts.next().unwrap_or_default().to_string();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.trim_end().split_once(':') {
                        headers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
                let mut req = Req {
                    method,
                    path,
                    headers,
                    body: vec![],
                };
                if let Some(len) = req.header("content-length") {
                    let len: usize = len.parse().unwrap();
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        continue;
                    }
                    req.body = body;
                }
                let answer = handler(n, &req);
                log.lock().unwrap().push(req);
                let _ = stream.write_all(&answer);
                let _ = stream.flush();
            }
        });
        Server { url, requests }
    }
}

#[cfg(test)]
mod tests {
    use super::testserver::{response, start};
    use super::*;
    use serde_json::json;
    use std::time::Instant;

    const TOKEN: &str = "v2/zzzzz-gj3su-000000000000000/secrettokenvalue1234567890";

    fn fast_retry() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            deadline: Duration::from_secs(5),
            limit: Default::default(),
        }
    }

    fn client(url: &str, retry: RetryPolicy) -> ApiClient {
        ApiClient::new(ApiSettings {
            host: url.to_string(),
            token: TOKEN.to_string(),
            insecure: false,
            extra_ca_file: None,
            retry,
        })
        .unwrap()
    }

    #[test]
    fn request_ids_have_the_arvados_shape_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 24);
            assert!(id.starts_with("req-"));
            assert!(
                id[4..]
                    .bytes()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
            );
        }
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(br#"{"errors":["Path not found (req-abc)"],"error_token":"1+2"}"#),
            "Path not found (req-abc)"
        );
        assert_eq!(error_message(br#"{"errors":["a","b"]}"#), "a; b");
        assert_eq!(
            error_message(b"<html>bad gateway</html>\n"),
            "<html>bad gateway</html>"
        );
        assert_eq!(error_message(b""), "(empty response body)");
        let long = "x".repeat(1000);
        let m = error_message(long.as_bytes());
        assert_eq!(m.chars().count(), 301);
        assert!(m.ends_with('…'));
    }

    #[test]
    fn redaction_masks_the_token_everywhere() {
        let mut secrets = Secrets::new();
        secrets.add(TOKEN);
        let e = redact_error(
            StoreError::Rejected {
                what: format!("GET /x?t={TOKEN}"),
                status: 401,
                message: format!("bad token {TOKEN}"),
            },
            &secrets,
        );
        let text = e.to_string();
        assert!(!text.contains(TOKEN), "{text}");
        assert!(text.contains("[REDACTED]"));
        let e = redact_error(
            StoreError::Io {
                what: "x".into(),
                source: std::io::Error::other(format!("io {TOKEN}")),
            },
            &secrets,
        );
        assert!(!format!("{e} {:?}", std::error::Error::source(&e)).contains(TOKEN));
    }

    #[test]
    fn get_sends_auth_request_id_and_query_and_decodes_big_ints() {
        let server = start(|_, _| {
            response(
                200,
                &[("Content-Type", "application/json")],
                br#"{"uuid":"zzzzz-dz642-queuedcontainer","mounts":{"/j":{"content":{"number":123456789123456789}}}}"#,
            )
        });
        let c = client(&server.url, fast_retry());
        let v = c
            .get(
                "/arvados/v1/containers/zzzzz-dz642-queuedcontainer",
                &[("select", r#"["uuid"]"#)],
            )
            .unwrap();
        assert_eq!(
            v["mounts"]["/j"]["content"]["number"].as_u64(),
            Some(123456789123456789)
        );
        let reqs = server.requests.lock().unwrap();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].method, "GET");
        assert_eq!(
            reqs[0].path,
            "/arvados/v1/containers/zzzzz-dz642-queuedcontainer?select=%5B%22uuid%22%5D"
        );
        assert_eq!(
            reqs[0].header("authorization"),
            Some(&*format!("Bearer {TOKEN}"))
        );
        assert!(reqs[0].header("x-request-id").unwrap().starts_with("req-"));
    }

    #[test]
    fn put_sends_json_body() {
        let server = start(|_, _| response(200, &[], br#"{"uuid":"u"}"#));
        let c = client(&server.url, fast_retry());
        let body = json!({"container": {"state": "Running"}, "select": ["uuid"]});
        let v = c.put("/arvados/v1/containers/u", &body).unwrap();
        assert_eq!(v, json!({"uuid": "u"}));
        let reqs = server.requests.lock().unwrap();
        assert_eq!(reqs[0].method, "PUT");
        assert_eq!(reqs[0].header("content-type"), Some("application/json"));
        let sent: Value = serde_json::from_slice(&reqs[0].body).unwrap();
        assert_eq!(sent, body);
    }

    #[test]
    fn retries_503_then_succeeds_with_the_same_request_id() {
        let server = start(|n, _| {
            if n < 2 {
                response(503, &[], br#"{"errors":["busy"]}"#)
            } else {
                response(200, &[], br#"{"ok":true}"#)
            }
        });
        let c = client(&server.url, fast_retry());
        let v = c.post("/arvados/v1/logs", &json!({"log": {}})).unwrap();
        assert_eq!(v["ok"], json!(true));
        let reqs = server.requests.lock().unwrap();
        assert_eq!(reqs.len(), 3);
        let id = reqs[0].header("x-request-id").unwrap();
        assert!(reqs.iter().all(|r| r.header("x-request-id") == Some(id)));
        assert!(reqs.iter().all(|r| r.body == reqs[0].body));
    }

    #[test]
    fn gives_up_on_5xx_after_the_deadline() {
        let server = start(|_, _| response(502, &[], b"bad gateway"));
        let retry = RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            deadline: Duration::from_millis(200),
            limit: Default::default(),
        };
        let c = client(&server.url, retry);
        let started = Instant::now();
        let err = c.get("/arvados/v1/containers/x", &[]).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        match &err {
            StoreError::Rejected {
                what,
                status,
                message,
            } => {
                assert_eq!(what, "GET /arvados/v1/containers/x");
                assert_eq!(*status, 502);
                assert!(
                    message.starts_with("bad gateway (gave up after"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(server.requests.lock().unwrap().len() >= 3);
    }

    #[test]
    fn client_errors_return_at_once_without_the_token() {
        let server = start(|n, _| {
            if n == 0 {
                response(
                    422,
                    &[],
                    format!(r#"{{"errors":["state cannot change, token {TOKEN}"]}}"#).as_bytes(),
                )
            } else {
                response(404, &[], br#"{"errors":["Path not found"]}"#)
            }
        });
        let c = client(&server.url, fast_retry());
        let err = c
            .put("/arvados/v1/containers/x", &json!({"container": {}}))
            .unwrap_err();
        assert!(matches!(err, StoreError::Rejected { status: 422, .. }));
        let text = err.to_string();
        assert!(text.starts_with("PUT /arvados/v1/containers/x: HTTP 422: state cannot change"));
        assert!(!text.contains(TOKEN), "{text}");
        let err = c.get("/arvados/v1/containers/y", &[]).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }));
        assert_eq!(err.to_string(), "GET /arvados/v1/containers/y: not found");
        assert_eq!(server.requests.lock().unwrap().len(), 2);
    }

    #[test]
    fn connection_refused_is_unavailable_after_retries() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let retry = RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
            deadline: Duration::from_millis(100),
            limit: Default::default(),
        };
        let c = client(&format!("http://127.0.0.1:{port}"), retry);
        let err = c.get("/arvados/v1/x", &[]).unwrap_err();
        match err {
            StoreError::Unavailable { what, message } => {
                assert_eq!(what, "GET /arvados/v1/x");
                assert!(message.contains("gave up after"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_json_on_success_is_undecodable() {
        let server = start(|_, _| response(200, &[], b"<html>"));
        let c = client(&server.url, fast_retry());
        let err = c.get("/x", &[]).unwrap_err();
        assert!(
            matches!(err, StoreError::Undecodable { state: None, .. }),
            "{err:?}"
        );
    }
}
