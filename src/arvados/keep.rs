//! Keep client: service discovery, rendezvous order, block PUT from a re-openable source,
//! block GET streamed with md5 check, retries (reference §2.3 (k) (l) (m)).
//!
//! Blocks are never held in memory whole: a PUT streams the source with an explicit
//! `Content-Length`, a GET streams into the caller's writer through a 64 KiB buffer while
//! computing the md5. Services are tried in rendezvous order; transient failures (network,
//! 408, 429, 5xx except 501) are retried with the API client's backoff up to its deadline.

use std::io::{self, Read, Write};
use std::thread;
use std::time::Instant;

use md5::{Digest, Md5};
use serde_json::Value;

use crate::arvados::client::{
    ApiClient, RetryPolicy, error_message, is_transient_error, is_transient_status, new_request_id,
    redact_error,
};
use crate::arvados::manifest::{Locator, hex, md5_hex};
use crate::redact::Secrets;
use crate::store::{BlockSource, StoreError};

/// Size of the buffer a GET streams through.
const GET_BUFFER: usize = 64 * 1024;
/// Largest PUT response body we read (a signed locator is ~100 bytes).
const MAX_PUT_RESPONSE: u64 = 64 * 1024;

/// One keepstore (or keepproxy) server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepService {
    pub uuid: String,
    /// `http[s]://host:port`, no trailing slash.
    pub root: String,
    pub read_only: bool,
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
    want_replicas: usize,
    retry: RetryPolicy,
}

impl std::fmt::Debug for KeepClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepClient")
            .field("services", &self.services)
            .field("want_replicas", &self.want_replicas)
            .finish()
    }
}

/// How one request to one service went.
enum Outcome<T> {
    Done(T),
    /// This service said the block is not there (GET 404).
    NotFound,
    /// Worth asking this service again later.
    Transient(String),
    /// This service will not do it; try the others.
    Permanent {
        status: Option<u16>,
        message: String,
    },
    /// Stop everything (a local source/destination failure, corrupt data delivered).
    Fatal(StoreError),
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
            want_replicas: self.want_replicas,
            retry: self.retry,
        }
    }

    /// A client for these services, authenticating with `token`. `want_replicas` is 2.
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
            want_replicas: 2,
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

    /// Set how many copies of each block to ask for (the cluster's
    /// `defaultCollectionReplication`, 2 unless configured). At least 1.
    pub fn with_want_replicas(mut self, n: usize) -> KeepClient {
        self.want_replicas = n.max(1);
        self
    }

    pub fn want_replicas(&self) -> usize {
        self.want_replicas
    }

    pub fn services(&self) -> &[KeepService] {
        &self.services
    }

    /// The replicas a PUT must reach: `want_replicas`, but no more than there are writable
    /// services.
    fn replicas_needed(&self, writable: usize) -> usize {
        self.want_replicas.min(writable).max(1)
    }

    /// Retry rounds over services: each round asks every service in `pending` (in order)
    /// via `try_one` until `enough()` says stop; services that failed transiently are asked
    /// again next round, after the backoff, until the deadline.
    fn rounds<T>(
        &self,
        mut pending: Vec<usize>,
        mut try_one: impl FnMut(usize) -> Outcome<T>,
        mut on_done: impl FnMut(T) -> bool,
        errors: &mut Vec<String>,
    ) -> Result<RoundsEnd, StoreError> {
        let started = Instant::now();
        let mut failures = 0u32;
        let mut end = RoundsEnd::default();
        loop {
            let mut again = Vec::new();
            for idx in pending {
                match try_one(idx) {
                    Outcome::Done(v) => {
                        if on_done(v) {
                            end.satisfied = true;
                            return Ok(end);
                        }
                    }
                    Outcome::NotFound => {
                        end.not_found += 1;
                        errors.push(format!("{}: not found", self.services[idx].root));
                    }
                    Outcome::Transient(message) => {
                        errors.push(format!("{}: {message}", self.services[idx].root));
                        end.transient = true;
                        again.push(idx);
                    }
                    Outcome::Permanent { status, message } => {
                        errors.push(format!("{}: {message}", self.services[idx].root));
                        end.last_status = status.or(end.last_status);
                    }
                    Outcome::Fatal(e) => return Err(e),
                }
            }
            if again.is_empty() {
                return Ok(end);
            }
            match self.retry.next_wait(started, failures) {
                Some(wait) => {
                    failures += 1;
                    thread::sleep(wait);
                    pending = again;
                }
                None => return Ok(end),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn put_once(
        &self,
        service: &KeepService,
        hash: &str,
        size: u64,
        body: &BlockSource<'_>,
        desired: usize,
        request_id: &str,
        what: &str,
    ) -> Outcome<(String, usize)> {
        let inner = match body() {
            Ok(r) => r,
            Err(source) => {
                return Outcome::Fatal(StoreError::Io {
                    what: format!("{what}: opening the block's data"),
                    source,
                });
            }
        };
        let mut src = SourceReader {
            inner,
            remaining: size,
            hasher: Md5::new(),
            error: None,
        };
        let url = format!("{}/{}", service.root, hash);
        let result = self
            .agent
            .put(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", &size.to_string())
            .header("X-Keep-Desired-Replicas", &desired.to_string())
            .header("X-Request-Id", request_id)
            .send(ureq::SendBody::from_reader(&mut src));
        if let Some(source) = src.error.take() {
            return Outcome::Fatal(StoreError::Io {
                what: format!("{what}: reading the block's data"),
                source,
            });
        }
        if src.remaining == 0 {
            let actual = hex(&src.hasher.clone().finalize());
            if actual != hash {
                return Outcome::Fatal(StoreError::Invalid {
                    what: what.to_string(),
                    message: format!("the block's data has md5 {actual}, not {hash}"),
                });
            }
        }
        let mut response = match result {
            Ok(r) => r,
            Err(e) => return transport_outcome(&e),
        };
        let status = response.status().as_u16();
        let replicas = response
            .headers()
            .get("X-Keep-Replicas-Stored")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(1);
        let text = match response
            .body_mut()
            .with_config()
            .limit(MAX_PUT_RESPONSE)
            .read_to_vec()
        {
            Ok(b) => b,
            Err(e) => return transport_outcome(&e),
        };
        if status != 200 {
            return status_outcome(status, &text);
        }
        let token = String::from_utf8_lossy(&text).trim().to_string();
        match Locator::parse(&token) {
            Ok(l) if l.hash == hash && l.size == size => Outcome::Done((token, replicas)),
            _ => Outcome::Permanent {
                status: None,
                message: format!(
                    "answered with {:?}, not a locator for {hash}+{size}",
                    error_message(&text)
                ),
            },
        }
    }

    /// One GET from one service, streaming into `out` the bytes past `delivered` (those
    /// before were written by an earlier attempt), hashing what it writes into `hasher`.
    #[allow(clippy::too_many_arguments)]
    fn get_once(
        &self,
        service: &KeepService,
        locator: &str,
        size: u64,
        out: &mut dyn Write,
        delivered: &mut u64,
        hasher: &mut Md5,
        request_id: &str,
        what: &str,
    ) -> Outcome<()> {
        let url = format!("{}/{}", service.root, locator);
        let result = self
            .agent
            .get(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("X-Request-Id", request_id)
            .header("Accept-Encoding", "identity")
            .call();
        let mut response = match result {
            Ok(r) => r,
            Err(e) => return transport_outcome(&e),
        };
        let status = response.status().as_u16();
        if status != 200 {
            let text = response
                .body_mut()
                .with_config()
                .limit(MAX_PUT_RESPONSE)
                .read_to_vec()
                .unwrap_or_default();
            if status == 404 {
                return Outcome::NotFound;
            }
            return status_outcome(status, &text);
        }
        // A missing Content-Length (chunked, e.g. through a proxy) is fine: the size is
        // checked as the bytes arrive. A wrong one is refused before anything is written.
        if let Some(len) = response.body().content_length()
            && len != size
        {
            return Outcome::Permanent {
                status: None,
                message: format!("Content-Length is {len}, the locator says {size}"),
            };
        }
        let mut reader = response.body_mut().as_reader();
        let mut buf = vec![0u8; GET_BUFFER];
        let mut pos = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Outcome::Transient(format!(
                        "transfer broke after {pos} of {size} bytes: {e}"
                    ));
                }
            };
            let chunk = &buf[..n];
            if pos + n as u64 > size {
                return Outcome::Permanent {
                    status: None,
                    message: format!("sent more than {size} bytes"),
                };
            }
            // Skip what an earlier attempt already delivered.
            let skip = delivered.saturating_sub(pos).min(n as u64) as usize;
            let fresh = &chunk[skip..];
            if !fresh.is_empty() {
                if let Err(source) = out.write_all(fresh) {
                    return Outcome::Fatal(StoreError::Io {
                        what: format!("{what}: writing the block's data"),
                        source,
                    });
                }
                hasher.update(fresh);
                *delivered += fresh.len() as u64;
            }
            pos += n as u64;
        }
        if pos != size {
            return Outcome::Transient(format!("transfer ended after {pos} of {size} bytes"));
        }
        Outcome::Done(())
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

/// Outcome of a transport error.
fn transport_outcome<T>(e: &ureq::Error) -> Outcome<T> {
    if is_transient_error(e) {
        Outcome::Transient(e.to_string())
    } else {
        Outcome::Permanent {
            status: None,
            message: e.to_string(),
        }
    }
}

/// Outcome of a non-200 status.
fn status_outcome<T>(status: u16, body: &[u8]) -> Outcome<T> {
    let message = format!("HTTP {status}: {}", error_message(body));
    if is_transient_status(status) {
        Outcome::Transient(message)
    } else {
        Outcome::Permanent {
            status: Some(status),
            message,
        }
    }
}

/// A block source that gives exactly `remaining` bytes, hashes them, and remembers its own
/// read error (so a local failure is not mistaken for a network one).
struct SourceReader<R> {
    inner: R,
    remaining: u64,
    hasher: Md5,
    error: Option<io::Error>,
}

impl<R: Read> Read for SourceReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match n {
            Ok(0) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the data ended {} bytes short", self.remaining),
                );
                self.error = Some(io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error = Some(e);
                Err(copy)
            }
        }
    }
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
        });
    }
    if services.is_empty() {
        return Err(bad("no Keep services are accessible".to_string()));
    }
    Ok(services)
}

impl KeepClient {
    /// PUT the block to writable services in rendezvous order until
    /// `min(want_replicas, writable services)` replicas are stored; returns the first
    /// signed locator a service answered with. `body` opens the data, once per attempt.
    pub fn put_block(
        &self,
        hash: &str,
        size: u64,
        body: &BlockSource<'_>,
    ) -> Result<String, StoreError> {
        let what = format!("PUT Keep block {hash}+{size}");
        if Locator::parse(&format!("{hash}+{size}")).is_err() {
            return Err(StoreError::Invalid {
                what,
                message: "not a 32-digit lowercase hex md5".to_string(),
            });
        }
        let writable: Vec<usize> = (0..self.services.len())
            .filter(|&i| !self.services[i].read_only)
            .collect();
        if writable.is_empty() {
            return Err(StoreError::Unavailable {
                what,
                message: "no writable Keep services".to_string(),
            });
        }
        let subset: Vec<KeepService> = writable.iter().map(|&i| self.services[i].clone()).collect();
        let order: Vec<usize> = rendezvous_order(hash, &subset)
            .into_iter()
            .map(|k| writable[k])
            .collect();
        let need = self.replicas_needed(writable.len());
        let request_id = new_request_id();
        // How many replicas are stored so far: read by each try (to ask for the rest),
        // updated on each success.
        let stored = std::cell::Cell::new(0usize);
        let mut locator: Option<String> = None;
        let mut errors = Vec::new();
        let end = self.rounds(
            order,
            |idx| {
                let desired = need.saturating_sub(stored.get()).max(1);
                self.put_once(
                    &self.services[idx],
                    hash,
                    size,
                    body,
                    desired,
                    &request_id,
                    &what,
                )
            },
            |(loc, replicas)| {
                locator.get_or_insert(loc);
                stored.set(stored.get() + replicas);
                stored.get() >= need
            },
            &mut errors,
        );
        let stored = stored.get();
        let end = end.map_err(|e| redact_error(e, &self.secrets))?;
        if end.satisfied
            && let Some(loc) = locator
        {
            return Ok(loc);
        }
        let message = self.secrets.redact(&format!(
            "stored {stored} of {need} wanted replicas; {}",
            errors.join("; ")
        ));
        Err(end.error(what, message))
    }

    /// GET the block from services in rendezvous order, streaming it into `out`. A transfer
    /// that breaks midway is resumed from another service or attempt, skipping the bytes
    /// already written, so `out` sees every byte once. The md5 of everything written must
    /// equal the locator's hash, else `Invalid` (the bytes are in `out` by then).
    pub fn get_block(&self, locator: &str, out: &mut dyn Write) -> Result<u64, StoreError> {
        let loc = Locator::parse(locator).map_err(|e| StoreError::Invalid {
            what: "GET Keep block".to_string(),
            message: e.to_string(),
        })?;
        let what = format!("GET Keep block {}", loc.portable());
        if loc.is_empty_block() {
            return Ok(0);
        }
        if self.services.is_empty() {
            return Err(StoreError::Unavailable {
                what,
                message: "no Keep services".to_string(),
            });
        }
        let order = rendezvous_order(&loc.hash, &self.services);
        let request_id = new_request_id();
        let mut delivered = 0u64;
        let mut hasher = Md5::new();
        let mut errors = Vec::new();
        let end = self.rounds(
            order,
            |idx| {
                self.get_once(
                    &self.services[idx],
                    locator,
                    loc.size,
                    out,
                    &mut delivered,
                    &mut hasher,
                    &request_id,
                    &what,
                )
            },
            |()| true,
            &mut errors,
        );
        let end = end.map_err(|e| redact_error(e, &self.secrets))?;
        if end.satisfied {
            let actual = hex(&hasher.finalize());
            if actual != loc.hash {
                return Err(StoreError::Invalid {
                    what,
                    message: format!("data received has md5 {actual}"),
                });
            }
            return Ok(loc.size);
        }
        if end.not_found == self.services.len() {
            return Err(StoreError::NotFound { what });
        }
        let mut message = self.secrets.redact(&errors.join("; "));
        if delivered > 0 {
            message.push_str(&format!(" ({delivered} bytes were already written)"));
        }
        Err(end.error(what, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arvados::client::testserver::{Req, Server, response, start};
    use crate::arvados::client::{ApiClient, ApiSettings};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    const TOKEN: &str = "v2/zzzzz-gj3su-000000000000000/keeptokenvalue0987654321";
    const FOO: &str = "acbd18db4cc2f85cedef654fccc4a4d8";
    const SIG: &str = "+A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff";

    fn fast_retry() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            deadline: Duration::from_secs(3),
        }
    }

    fn svc(i: usize, root: &str) -> KeepService {
        KeepService {
            uuid: format!("zzzzz-bi6l4-{i:015x}"),
            root: root.to_string(),
            read_only: false,
        }
    }

    fn client(services: Vec<KeepService>) -> KeepClient {
        KeepClient::new(
            ureq::Agent::new_with_defaults(),
            TOKEN,
            services,
            fast_retry(),
        )
    }

    /// Services for `servers`, and the server indices in the rendezvous order for `hash`.
    fn services_for(servers: &[&Server], hash: &str) -> (Vec<KeepService>, Vec<usize>) {
        let services: Vec<KeepService> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| svc(i, &s.url))
            .collect();
        let order = rendezvous_order(hash, &services);
        (services, order)
    }

    fn source(data: &'static [u8]) -> impl Fn() -> io::Result<Box<dyn Read + Send + 'static>> {
        move || Ok(Box::new(data) as Box<dyn Read + Send>)
    }

    fn keep_put_ok(replicas: &'static str) -> impl Fn(usize, &Req) -> Vec<u8> + Send {
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
            },
            KeepService {
                uuid: "other".into(),
                root: "http://b".into(),
                read_only: false,
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
                    read_only: false
                },
                KeepService {
                    uuid: "00000-bi6l4-000000000000001".into(),
                    root: "https://keep1.example:443".into(),
                    read_only: false
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
        assert_eq!(s[1].root, "https://keep.zzzzz.arvadosapi.com:443");
        assert!(s[1].read_only);
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
        assert_eq!(kc.want_replicas(), 2);
        assert_eq!(
            api_server.requests.lock().unwrap()[0].path,
            "/arvados/v1/keep_services/accessible"
        );
        let kc = KeepClient::from_env_list("http://a:1 http://b:2", &api)
            .unwrap()
            .with_want_replicas(0);
        assert_eq!(kc.services().len(), 2);
        assert_eq!(kc.want_replicas(), 1);
        assert!(!format!("{kc:?}").contains(TOKEN));
    }

    #[test]
    fn put_streams_with_content_length_and_returns_signed_locator() {
        let server = start(keep_put_ok("2"));
        let kc = client(vec![svc(0, &server.url)]);
        let loc = kc.put_block(FOO, 3, &source(b"foo")).unwrap();
        assert_eq!(loc, format!("{FOO}+3{SIG}"));
        let reqs = server.requests.lock().unwrap();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, format!("/{FOO}"));
        assert_eq!(r.body, b"foo");
        assert_eq!(r.header("content-length"), Some("3"));
        assert_eq!(r.header("transfer-encoding"), None);
        assert_eq!(r.header("authorization"), Some(&*format!("Bearer {TOKEN}")));
        // Only one writable service: one replica is all we can ask for.
        assert_eq!(r.header("x-keep-desired-replicas"), Some("1"));
        assert!(r.header("x-request-id").unwrap().starts_with("req-"));
    }

    #[test]
    fn put_fills_replicas_in_rendezvous_order_skipping_failures() {
        let broken = start(|_, _| response(503, &[], b"disk full"));
        let ok1 = start(keep_put_ok("1"));
        let ok2 = start(keep_put_ok("1"));
        let ok3 = start(keep_put_ok("1"));
        let servers = [&broken, &ok1, &ok2, &ok3];
        // Find a block hash whose order puts the broken service first.
        // Find block contents whose order puts the broken service before the second
        // working one, so that failover is exercised.
        let mut found = None;
        for i in 0u8.. {
            let data: &'static [u8] = Box::leak(vec![i; 10].into_boxed_slice());
            let hash = md5_hex(data);
            let (services, order) = services_for(&servers, &hash);
            if order[0] == 0 {
                found = Some((data, hash, services, order));
                break;
            }
        }
        let (data, hash, services2, order2) = found.unwrap();
        let kc = client(services2);
        let loc = kc.put_block(&hash, 10, &source(data)).unwrap();
        assert!(loc.starts_with(&format!("{hash}+10+A")));
        // The first two working services in order got the block, the third did not.
        let working: Vec<usize> = order2.iter().copied().filter(|&i| i != 0).collect();
        let count = |i: usize| servers[i].requests.lock().unwrap().len();
        assert_eq!(count(working[0]), 1);
        assert_eq!(count(working[1]), 1);
        assert_eq!(count(working[2]), 0);
        // The broken one (first in order) was asked.
        assert!(count(0) >= 1);
        // The second PUT asked for the one replica still missing.
        let second = servers[working[1]].requests.lock().unwrap()[0].clone();
        assert_eq!(second.header("x-keep-desired-replicas"), Some("1"));
        let first = servers[working[0]].requests.lock().unwrap()[0].clone();
        assert_eq!(first.header("x-request-id"), second.header("x-request-id"));
    }

    #[test]
    fn put_stops_when_one_service_stores_enough_replicas() {
        let a = start(keep_put_ok("2"));
        let b = start(keep_put_ok("2"));
        let (services, _) = services_for(&[&a, &b], FOO);
        let kc = client(services);
        kc.put_block(FOO, 3, &source(b"foo")).unwrap();
        let total = a.requests.lock().unwrap().len() + b.requests.lock().unwrap().len();
        assert_eq!(total, 1);
    }

    #[test]
    fn put_retries_transient_errors_then_succeeds() {
        let server = start(|n, req| {
            if n < 2 {
                response(500, &[], b"try later")
            } else {
                keep_put_ok("1")(n, req)
            }
        });
        let kc = client(vec![svc(0, &server.url)]);
        let opened = Arc::new(AtomicUsize::new(0));
        let counter = opened.clone();
        let body = move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(&b"foo"[..]) as Box<dyn Read + Send>)
        };
        kc.put_block(FOO, 3, &body).unwrap();
        assert_eq!(server.requests.lock().unwrap().len(), 3);
        assert_eq!(
            opened.load(Ordering::SeqCst),
            3,
            "source reopened per attempt"
        );
    }

    #[test]
    fn put_rejections_and_source_errors() {
        let server = start(|_, _| response(401, &[], br#"{"errors":["Unauthorized"]}"#));
        let kc = client(vec![svc(0, &server.url)]);
        let err = kc.put_block(FOO, 3, &source(b"foo")).unwrap_err();
        match &err {
            StoreError::Rejected {
                status, message, ..
            } => {
                assert_eq!(*status, 401);
                assert!(message.contains("Unauthorized"), "{message}");
                assert!(message.contains("stored 0 of 1"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!err.to_string().contains(TOKEN));
        assert_eq!(
            server.requests.lock().unwrap().len(),
            1,
            "4xx is not retried"
        );

        // A source shorter than the size is a local error, not retried.
        let server = start(keep_put_ok("1"));
        let kc = client(vec![svc(0, &server.url)]);
        let err = kc.put_block(FOO, 4, &source(b"foo")).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert!(
            err.to_string().contains("reading the block's data"),
            "{err}"
        );

        // A source that cannot be opened.
        let failing = || Err(io::Error::other("no such spool file"));
        let err = kc.put_block(FOO, 3, &failing).unwrap_err();
        assert!(err.to_string().contains("no such spool file"), "{err}");

        // Data that does not match the hash.
        let err = kc.put_block(FOO, 3, &source(b"bar")).unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");

        // Bad hash argument; no services writable.
        assert!(kc.put_block("xyz", 3, &source(b"foo")).is_err());
        let ro = KeepService {
            read_only: true,
            ..svc(0, &server.url)
        };
        let err = client(vec![ro])
            .put_block(FOO, 3, &source(b"foo"))
            .unwrap_err();
        assert!(err.to_string().contains("no writable"), "{err}");
    }

    #[test]
    fn put_large_block_streams() {
        // 5 MiB through the reader; the test server checks the length it got.
        let data: &'static [u8] = Box::leak(
            (0..5 * 1024 * 1024)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>()
                .into_boxed_slice(),
        );
        let hash = md5_hex(data);
        let server = start(keep_put_ok("1"));
        let kc = client(vec![svc(0, &server.url)]);
        let loc = kc
            .put_block(&hash, data.len() as u64, &source(data))
            .unwrap();
        assert!(loc.starts_with(&format!("{hash}+{}", data.len())));
        let reqs = server.requests.lock().unwrap();
        assert_eq!(md5_hex(&reqs[0].body), hash);
        assert_eq!(reqs[0].header("transfer-encoding"), None);
    }

    fn keep_get(data: &'static [u8]) -> impl Fn(usize, &Req) -> Vec<u8> + Send {
        move |_, _| response(200, &[], data)
    }

    #[test]
    fn get_streams_and_checks_md5() {
        let server = start(keep_get(b"foo"));
        let kc = client(vec![svc(0, &server.url)]);
        let mut out = Vec::new();
        let signed = format!("{FOO}+3{SIG}");
        assert_eq!(kc.get_block(&signed, &mut out).unwrap(), 3);
        assert_eq!(out, b"foo");
        let reqs = server.requests.lock().unwrap();
        assert_eq!(reqs[0].method, "GET");
        assert_eq!(reqs[0].path, format!("/{signed}"));
        assert_eq!(
            reqs[0].header("authorization"),
            Some(&*format!("Bearer {TOKEN}"))
        );
    }

    #[test]
    fn get_empty_block_makes_no_request() {
        let server = start(|_, _| panic!("no request expected"));
        let kc = client(vec![svc(0, &server.url)]);
        let mut out = Vec::new();
        assert_eq!(
            kc.get_block("d41d8cd98f00b204e9800998ecf8427e+0", &mut out)
                .unwrap(),
            0
        );
        assert!(out.is_empty());
        assert!(server.requests.lock().unwrap().is_empty());
    }

    #[test]
    fn get_fails_over_404_and_reports_not_found_from_all() {
        let missing = start(|_, _| response(404, &[], b"not found"));
        let has = start(keep_get(b"foo"));
        let (services, _) = services_for(&[&missing, &has], FOO);
        let kc = client(services);
        let mut out = Vec::new();
        kc.get_block(&format!("{FOO}+3"), &mut out).unwrap();
        assert_eq!(out, b"foo");

        let m2 = start(|_, _| response(404, &[], b"not found"));
        let (services, _) = services_for(&[&missing, &m2], FOO);
        let kc = client(services);
        let err = kc
            .get_block(&format!("{FOO}+3"), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("GET Keep block {FOO}+3: not found")
        );
        assert_eq!(m2.requests.lock().unwrap().len(), 1, "404 is not retried");
    }

    #[test]
    fn get_md5_mismatch_and_wrong_length() {
        let server = start(keep_get(b"bar"));
        let kc = client(vec![svc(0, &server.url)]);
        let err = kc
            .get_block(&format!("{FOO}+3"), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().contains("md5"), "{err}");

        let server = start(keep_get(b"fooo"));
        let kc = client(vec![svc(0, &server.url)]);
        let mut out = Vec::new();
        let err = kc.get_block(&format!("{FOO}+3"), &mut out).unwrap_err();
        assert!(err.to_string().contains("Content-Length is 4"), "{err}");
        assert!(out.is_empty());
    }

    #[test]
    fn get_resumes_a_broken_transfer_without_repeating_bytes() {
        let data: &'static [u8] = Box::leak(
            (0..300_000u32)
                .map(|i| (i % 253) as u8)
                .collect::<Vec<u8>>()
                .into_boxed_slice(),
        );
        let hash = md5_hex(data);
        let locator = format!("{hash}+{}", data.len());
        // Every server breaks the first transfer after 100 000 bytes, then works.
        let breaker = move |n: usize, _: &Req| {
            if n == 0 {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                    data.len()
                )
                .into_bytes();
                r.extend_from_slice(&data[..100_000]);
                r
            } else {
                response(200, &[], data)
            }
        };
        let a = start(breaker);
        let b = start(breaker);
        let (services, _) = services_for(&[&a, &b], &hash);
        let kc = client(services);
        let mut out = Vec::new();
        assert_eq!(kc.get_block(&locator, &mut out).unwrap(), data.len() as u64);
        assert_eq!(out.len(), data.len());
        assert_eq!(md5_hex(&out), hash);
        let total = a.requests.lock().unwrap().len() + b.requests.lock().unwrap().len();
        // Both break once (the second after bytes all already written), then the first
        // delivers the rest.
        assert_eq!(total, 3);
    }

    #[test]
    fn get_retries_5xx_then_gives_up_unavailable() {
        let calls = Arc::new(Mutex::new(0));
        let c2 = calls.clone();
        let server = start(move |_, _| {
            *c2.lock().unwrap() += 1;
            response(503, &[], b"busy")
        });
        let mut kc = client(vec![svc(0, &server.url)]);
        kc.retry = RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(5),
            deadline: Duration::from_millis(50),
        };
        let err = kc
            .get_block(&format!("{FOO}+3"), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains("HTTP 503: busy"), "{err}");
        assert!(*calls.lock().unwrap() >= 2);
    }

    #[test]
    fn get_write_errors_stop_at_once() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let server = start(keep_get(b"foo"));
        let kc = client(vec![svc(0, &server.url)]);
        let err = kc.get_block(&format!("{FOO}+3"), &mut Full).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert_eq!(server.requests.lock().unwrap().len(), 1);
        assert!(kc.get_block("nonsense", &mut Vec::new()).is_err());
    }
}
