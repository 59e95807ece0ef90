//! Keep client: the services (from ARVADOS_KEEP_SERVICES or discovered through the API),
//! the rendezvous order in which a block's services are asked (reference §2.3 (k)), and
//! the retry rounds over them. Moving the bytes is the job of `put` and `get`.
//!
//! Blocks are never held in memory whole: a PUT streams the source with an explicit
//! `Content-Length`, a GET streams into the caller's writer through a 64 KiB buffer while
//! computing the md5. Services are tried in rendezvous order; transient failures (network,
//! 408, 429, 5xx except 501) are retried with the API client's backoff up to its deadline.

mod get;
mod put;

use std::time::Instant;

use serde_json::Value;

use crate::arvados::client::{ApiClient, error_message};
use crate::arvados::manifest::md5_hex;
use crate::arvados::retry::{Attempt, RetryPolicy};
use crate::redact::Secrets;
use crate::store::StoreError;

/// Copies of each block a PUT asks for: the Arvados default (`DefaultReplication`).
const WANT_REPLICAS: usize = 2;
/// Largest body we read from a PUT answer or a failed GET (a signed locator is ~100 bytes).
const MAX_SMALL_BODY: u64 = 64 * 1024;

/// One keepstore (or keepproxy) server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepService {
    pub uuid: String,
    /// `http[s]://host:port`, no trailing slash.
    pub root: String,
    pub read_only: bool,
    /// A keepstore (`service_type` "disk"): it stores one replica per PUT, so the replicas
    /// a block still needs can be PUT to several at once. Anything else (a keepproxy, or a
    /// service from ARVADOS_KEEP_SERVICES, whose kind is unknown) may store several per
    /// PUT and is asked alone, as the Go and Python SDKs do.
    pub disk: bool,
}

/// The order in which to try `services` for a block: indices into `services`, by
/// descending `md5(block_hash + last 15 chars of the service uuid)` (the whole uuid if it is
/// not 27 chars long). `block_hash` may be a whole locator; only its first 32 chars count.
pub fn rendezvous_order(block_hash: &str, services: &[KeepService]) -> Vec<usize> {
    let hash = block_hash.get(..32).unwrap_or(block_hash);
    let weights: Vec<String> = services
        .iter()
        .map(|s| {
            let suffix = if s.uuid.len() == 27 {
                s.uuid.get(12..).unwrap_or(&s.uuid)
            } else {
                &s.uuid
            };
            md5_hex(format!("{hash}{suffix}").as_bytes())
        })
        .collect();
    let mut order: Vec<usize> = (0..services.len()).collect();
    // Stable: equal weights (same uuid twice) keep their list order.
    order.sort_by(|&a, &b| weights[b].cmp(&weights[a]));
    order
}

/// Client for Keep block storage.
pub struct KeepClient {
    agent: ureq::Agent,
    token: String,
    secrets: Secrets,
    services: Vec<KeepService>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for KeepClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepClient")
            .field("services", &self.services)
            .finish()
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn join_host_port(host: &str, port: u64) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl KeepClient {
    /// The same services acting with another token (the container's).
    pub fn with_token(&self, token: &str) -> KeepClient {
        let mut secrets = self.secrets.clone();
        secrets.add(token);
        KeepClient {
            agent: self.agent.clone(),
            token: token.to_string(),
            secrets,
            services: self.services.clone(),
            retry: self.retry.clone(),
        }
    }

    /// A client for these services, authenticating with `token`.
    pub fn new(
        agent: ureq::Agent,
        token: &str,
        services: Vec<KeepService>,
        retry: RetryPolicy,
    ) -> KeepClient {
        let mut secrets = Secrets::new();
        secrets.add(token);
        KeepClient {
            agent,
            token: token.to_string(),
            secrets,
            services,
            retry,
        }
    }

    /// Services from `ARVADOS_KEEP_SERVICES`: space-separated absolute `http[s]://` URIs;
    /// service `i` gets the uuid `00000-bi6l4-<i as 15 digits>`.
    pub fn from_env_list(list: &str, api: &ApiClient) -> Result<KeepClient, StoreError> {
        let services = parse_service_list(list)?;
        Ok(KeepClient::new(
            api.agent(),
            api.token(),
            services,
            api.retry_policy(),
        ))
    }

    /// Services from `GET /arvados/v1/keep_services/accessible`.
    pub fn discover(api: &ApiClient) -> Result<KeepClient, StoreError> {
        let list = api.get("/arvados/v1/keep_services/accessible", &[])?;
        let services = parse_accessible(&list)?;
        Ok(KeepClient::new(
            api.agent(),
            api.token(),
            services,
            api.retry_policy(),
        ))
    }

    pub fn services(&self) -> &[KeepService] {
        &self.services
    }
}

/// What a series of retry rounds came to.
#[derive(Debug, Default)]
struct RoundsEnd {
    satisfied: bool,
    not_found: usize,
    transient: bool,
    last_status: Option<u16>,
}

impl RoundsEnd {
    /// The error for rounds that failed: Rejected when the last answer was a permanent
    /// HTTP refusal, Unavailable otherwise.
    fn error(&self, what: String, message: String) -> StoreError {
        match (self.transient, self.last_status) {
            (false, Some(status)) => StoreError::Rejected {
                what,
                status,
                message,
            },
            _ => StoreError::Unavailable { what, message },
        }
    }
}

impl KeepClient {
    /// Retry rounds over services: each round asks the services in `pending`, in order,
    /// `width()` of them at a time through `try_batch` (which answers for each), until
    /// `on_done` says that is enough; services that failed transiently are asked again
    /// next round, after the backoff, until the deadline. What each service said goes into
    /// `errors`.
    fn rounds<T>(
        &self,
        what: &str,
        mut pending: Vec<usize>,
        width: impl Fn() -> usize,
        mut try_batch: impl FnMut(&[usize]) -> Vec<Attempt<T>>,
        mut on_done: impl FnMut(T) -> bool,
        errors: &mut Vec<String>,
    ) -> Result<RoundsEnd, StoreError> {
        let started = Instant::now();
        let mut failures = 0u32;
        let mut end = RoundsEnd::default();
        loop {
            let mut again = Vec::new();
            let mut queue = pending.as_slice();
            while !queue.is_empty() {
                let (batch, rest) = queue.split_at(width().clamp(1, queue.len()));
                queue = rest;
                let mut enough = false;
                for (&idx, attempt) in batch.iter().zip(try_batch(batch)) {
                    let root = &self.services[idx].root;
                    match attempt {
                        Attempt::Done(v) => enough |= on_done(v),
                        Attempt::NotFound => {
                            end.not_found += 1;
                            errors.push(format!("{root}: not found"));
                        }
                        Attempt::Transient { message, .. } => {
                            errors.push(format!("{root}: {message}"));
                            end.transient = true;
                            again.push(idx);
                        }
                        Attempt::Refused { status, message } => {
                            errors.push(format!("{root}: {message}"));
                            end.last_status = status.or(end.last_status);
                        }
                        Attempt::Fatal(e) => return Err(e),
                    }
                }
                if enough {
                    end.satisfied = true;
                    return Ok(end);
                }
            }
            if again.is_empty() {
                return Ok(end);
            }
            match self.retry.next_wait(started, failures) {
                Some(wait) => {
                    failures += 1;
                    let last = errors.last().map(String::as_str).unwrap_or("failed");
                    let message = self.secrets.redact(last);
                    self.retry.pause(started, wait, what, &message);
                }
                None => return Ok(end),
            }
            pending = again;
        }
    }
}

/// The body of an answer that should be short (a locator, an error message).
fn read_small_body(
    response: &mut ureq::http::Response<ureq::Body>,
) -> Result<Vec<u8>, ureq::Error> {
    response
        .body_mut()
        .with_config()
        .limit(MAX_SMALL_BODY)
        .read_to_vec()
}

/// The attempt a service's unsuccessful status makes, its message naming the status (the
/// messages of all services end up in one error).
fn status_attempt<T>(status: u16, body: &[u8]) -> Attempt<T> {
    Attempt::from_status(status, format!("HTTP {status}: {}", error_message(body)))
}

/// Parse `ARVADOS_KEEP_SERVICES`.
fn parse_service_list(list: &str) -> Result<Vec<KeepService>, StoreError> {
    let mut services = Vec::new();
    for (i, uri) in list.split_whitespace().enumerate() {
        let rest = uri
            .strip_prefix("http://")
            .or_else(|| uri.strip_prefix("https://"));
        if rest.is_none_or(|r| r.trim_end_matches('/').is_empty()) {
            return Err(StoreError::Invalid {
                what: "ARVADOS_KEEP_SERVICES".to_string(),
                message: format!("{uri:?} is not an absolute http(s):// URI"),
            });
        }
        services.push(KeepService {
            uuid: format!("00000-bi6l4-{i:015}"),
            root: uri.trim_end_matches('/').to_string(),
            read_only: false,
            disk: false,
        });
    }
    if services.is_empty() {
        return Err(StoreError::Invalid {
            what: "ARVADOS_KEEP_SERVICES".to_string(),
            message: "no services listed".to_string(),
        });
    }
    Ok(services)
}

/// Parse a `keep_services/accessible` answer.
fn parse_accessible(list: &Value) -> Result<Vec<KeepService>, StoreError> {
    let what = "GET /arvados/v1/keep_services/accessible";
    let bad = |message: String| StoreError::Invalid {
        what: what.to_string(),
        message,
    };
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"items\" list in the answer".to_string()))?;
    let mut services = Vec::new();
    for item in items {
        let uuid = item.get("uuid").and_then(Value::as_str).unwrap_or_default();
        let host = item.get("service_host").and_then(Value::as_str);
        let port = item.get("service_port").and_then(Value::as_u64);
        let (Some(host), Some(port)) = (host, port) else {
            return Err(bad(format!(
                "service {uuid:?} has no service_host/service_port"
            )));
        };
        let ssl = item
            .get("service_ssl_flag")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let scheme = if ssl { "https" } else { "http" };
        services.push(KeepService {
            uuid: uuid.to_string(),
            root: format!("{scheme}://{}", join_host_port(host, port)),
            read_only: item
                .get("read_only")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            disk: item.get("service_type").and_then(Value::as_str) == Some("disk"),
        });
    }
    if services.is_empty() {
        return Err(bad("no Keep services are accessible".to_string()));
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arvados::client::ApiSettings;
    use crate::arvados::client::testserver::{Req, Server, response, start};
    use std::io::{self, Read};
    use std::time::Duration;

    pub(super) const TOKEN: &str = "v2/zzzzz-gj3su-000000000000000/keeptokenvalue0987654321";
    pub(super) const FOO: &str = "acbd18db4cc2f85cedef654fccc4a4d8";
    pub(super) const SIG: &str = "+A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff";

    pub(super) fn fast_retry() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            deadline: Duration::from_secs(3),
            limit: Default::default(),
        }
    }

    pub(super) fn svc(i: usize, root: &str) -> KeepService {
        KeepService {
            uuid: format!("zzzzz-bi6l4-{i:015x}"),
            root: root.to_string(),
            read_only: false,
            disk: true,
        }
    }

    pub(super) fn client(services: Vec<KeepService>) -> KeepClient {
        KeepClient::new(
            ureq::Agent::new_with_defaults(),
            TOKEN,
            services,
            fast_retry(),
        )
    }

    /// Services for `servers`, and the server indices in the rendezvous order for `hash`.
    pub(super) fn services_for(servers: &[&Server], hash: &str) -> (Vec<KeepService>, Vec<usize>) {
        let services: Vec<KeepService> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| svc(i, &s.url))
            .collect();
        let order = rendezvous_order(hash, &services);
        (services, order)
    }

    pub(super) fn source(
        data: &'static [u8],
    ) -> impl Fn() -> io::Result<Box<dyn Read + Send + 'static>> {
        move || Ok(Box::new(data) as Box<dyn Read + Send>)
    }

    pub(super) fn keep_put_ok(replicas: &'static str) -> impl Fn(usize, &Req) -> Vec<u8> + Send {
        move |_, req| {
            let hash = req.path.trim_start_matches('/');
            let loc = format!("{hash}+{}{SIG}\n", req.body.len());
            response(200, &[("X-Keep-Replicas-Stored", replicas)], loc.as_bytes())
        }
    }

    #[test]
    fn rendezvous_reference_vectors() {
        let services: Vec<KeepService> = (0..16).map(|i| svc(i, "http://x")).collect();
        let expected = [
            "3eab2d5fc9681074",
            "097dba52e648f1c3",
            "c5b4e023f8a7d691",
            "9d81c02e76a3bf54",
        ];
        for (h, want) in expected.iter().enumerate() {
            let block = md5_hex(format!("{h:064x}").as_bytes());
            let order: String = rendezvous_order(&block, &services)
                .iter()
                .map(|i| format!("{i:x}"))
                .collect();
            assert_eq!(&order, want, "h={h}");
            // A whole locator gives the same order as its hash.
            let with_size = format!("{block}+3{SIG}");
            assert_eq!(
                rendezvous_order(&with_size, &services),
                rendezvous_order(&block, &services)
            );
        }
    }

    #[test]
    fn rendezvous_uses_whole_uuid_when_not_27_chars() {
        let s = vec![
            KeepService {
                uuid: "short".into(),
                root: "http://a".into(),
                read_only: false,
                disk: true,
            },
            KeepService {
                uuid: "other".into(),
                root: "http://b".into(),
                read_only: false,
                disk: true,
            },
        ];
        let wa = md5_hex(format!("{FOO}short").as_bytes());
        let wb = md5_hex(format!("{FOO}other").as_bytes());
        let want = if wa > wb { vec![0, 1] } else { vec![1, 0] };
        assert_eq!(rendezvous_order(FOO, &s), want);
    }

    #[test]
    fn env_list_and_discovery_parsing() {
        let s = parse_service_list(" http://keep0:25107/  https://keep1.example:443 ").unwrap();
        assert_eq!(
            s,
            vec![
                KeepService {
                    uuid: "00000-bi6l4-000000000000000".into(),
                    root: "http://keep0:25107".into(),
                    read_only: false,
                    disk: false,
                },
                KeepService {
                    uuid: "00000-bi6l4-000000000000001".into(),
                    root: "https://keep1.example:443".into(),
                    read_only: false,
                    disk: false,
                },
            ]
        );
        assert!(parse_service_list("keep0:25107").is_err());
        assert!(parse_service_list("http://").is_err());
        assert!(parse_service_list("  ").is_err());

        let list = serde_json::json!({"kind":"arvados#keepServiceList","items":[
            {"uuid":"zzzzz-bi6l4-6zhilxar6r8ey90","service_host":"keep0.zzzzz.arvadosapi.com",
             "service_port":25107,"service_ssl_flag":false,"service_type":"disk","read_only":false},
            {"uuid":"zzzzz-bi6l4-h0a0xwut9qa6g3a","service_host":"keep.zzzzz.arvadosapi.com",
             "service_port":443,"service_ssl_flag":true,"service_type":"proxy","read_only":true},
            {"uuid":"zzzzz-bi6l4-000000000000003","service_host":"::1",
             "service_port":25107,"service_ssl_flag":false}
        ]});
        let s = parse_accessible(&list).unwrap();
        assert_eq!(s[0].root, "http://keep0.zzzzz.arvadosapi.com:25107");
        assert!(!s[0].read_only);
        assert!(s[0].disk);
        assert_eq!(s[1].root, "https://keep.zzzzz.arvadosapi.com:443");
        assert!(s[1].read_only);
        assert!(!s[1].disk && !s[2].disk);
        assert_eq!(s[2].root, "http://[::1]:25107");
        assert!(parse_accessible(&serde_json::json!({"items":[]})).is_err());
        assert!(parse_accessible(&serde_json::json!({"items":[{"uuid":"x"}]})).is_err());
    }

    #[test]
    fn discover_and_env_list_use_the_api_clients_agent_and_token() {
        let api_server = start(|_, _| {
            response(
                200,
                &[],
                br#"{"items":[{"uuid":"zzzzz-bi6l4-000000000000000","service_host":"127.0.0.1","service_port":1,"service_ssl_flag":false,"read_only":false}]}"#,
            )
        });
        let api = ApiClient::new(ApiSettings {
            host: api_server.url.clone(),
            token: TOKEN.into(),
            insecure: false,
            extra_ca_file: None,
            retry: fast_retry(),
        })
        .unwrap();
        let kc = KeepClient::discover(&api).unwrap();
        assert_eq!(kc.services()[0].root, "http://127.0.0.1:1");
        assert_eq!(
            api_server.requests.lock().unwrap()[0].path,
            "/arvados/v1/keep_services/accessible"
        );
        let kc = KeepClient::from_env_list("http://a:1 http://b:2", &api).unwrap();
        assert_eq!(kc.services().len(), 2);
        assert!(!format!("{kc:?}").contains(TOKEN));
    }
}
