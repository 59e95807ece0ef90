//! Storing one block in Keep: a PUT to writable services in rendezvous order until
//! enough replicas are stored (reference §2.3 (l)). The data is streamed from a source the
//! caller re-opens for every attempt, and hashed on the way: a source that ends short or
//! does not match its md5 stops the PUT, whatever Keep answered.

use std::cell::Cell;
use std::io::{self, Read};
use std::thread;

use md5::{Digest, Md5};

use super::{
    KeepClient, KeepService, WANT_REPLICAS, read_small_body, rendezvous_order, status_attempt,
};
use crate::arvados::client::{error_message, new_request_id, redact_error};
use crate::arvados::manifest::{Locator, hex};
use crate::arvados::retry::Attempt;
use crate::store::{BlockSource, StoreError};

/// One block PUT, the same for every attempt. Shared by the threads of parallel PUTs
/// (the data source is not: each attempt opens its own reader on the calling thread).
#[derive(Clone, Copy)]
struct Upload<'a> {
    hash: &'a str,
    size: u64,
    request_id: &'a str,
    what: &'a str,
}

impl KeepClient {
    /// PUT the block to writable services in rendezvous order until
    /// `min(WANT_REPLICAS, writable services)` replicas are stored; returns the first
    /// signed locator a service answered with. `body` opens the data, once per attempt.
    /// To keepstores, the replicas still wanted are PUT at once, each to its own service
    /// (as the Go and Python SDKs do): a block costs one round trip, not one per replica.
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
        // No more replicas than there are writable services.
        let need = WANT_REPLICAS.min(writable.len()).max(1);
        let request_id = new_request_id();
        let upload = Upload {
            hash,
            size,
            request_id: &request_id,
            what: &what,
        };
        // How many replicas are stored so far: read by each batch (to ask for the rest),
        // updated on each success. Keepstores get the missing replicas at once, one each;
        // with any other kind of service about, one service at a time.
        let stored = Cell::new(0usize);
        let missing = || need.saturating_sub(stored.get()).max(1);
        let all_disk = writable.iter().all(|&i| self.services[i].disk);
        let width = || if all_disk { missing() } else { 1 };
        let mut locator: Option<String> = None;
        let mut errors = Vec::new();
        let end = self.rounds(
            &what,
            order,
            width,
            |batch| self.put_batch(batch, upload, body, missing()),
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

    /// PUT to each service of `batch` at once, a thread each, asking each for `desired`
    /// replicas; the attempts in the batch's order.
    fn put_batch(
        &self,
        batch: &[usize],
        upload: Upload<'_>,
        body: &BlockSource<'_>,
        desired: usize,
    ) -> Vec<Attempt<(String, usize)>> {
        // Every source is opened here: `body` need not be shareable between threads.
        let open = || match body() {
            Ok(inner) => Ok(SourceReader::new(inner, upload.size)),
            Err(source) => Err(Attempt::Fatal(StoreError::Io {
                what: format!("{}: opening the block's data", upload.what),
                source,
            })),
        };
        if let [idx] = batch {
            let attempt =
                open().map(|src| self.put_once(&self.services[*idx], upload, src, desired));
            return vec![attempt.unwrap_or_else(|failed| failed)];
        }
        let opened: Vec<_> = batch.iter().map(|_| open()).collect();
        thread::scope(|scope| {
            let started: Vec<_> = batch
                .iter()
                .zip(opened)
                .map(|(&idx, src)| {
                    let service = &self.services[idx];
                    thread::Builder::new()
                        .name("keep-put".into())
                        .spawn_scoped(scope, move || {
                            src.map(|src| self.put_once(service, upload, src, desired))
                                .unwrap_or_else(|failed| failed)
                        })
                        // No thread to spare: this replica is tried again next round.
                        .map_err(|e| Attempt::Transient {
                            status: None,
                            message: format!("cannot start a thread for the PUT: {e}"),
                        })
                })
                .collect();
            started
                .into_iter()
                .map(|s| match s.map(|handle| handle.join()) {
                    Ok(Ok(attempt)) => attempt,
                    Ok(Err(_)) => Attempt::Fatal(StoreError::Invalid {
                        what: upload.what.to_string(),
                        message: "the PUT's thread panicked".to_string(),
                    }),
                    Err(not_started) => not_started,
                })
                .collect()
        })
    }

    /// One PUT to one service of the data `src` reads, asking it for `desired` replicas.
    fn put_once(
        &self,
        service: &KeepService,
        upload: Upload<'_>,
        mut src: SourceReader<impl Read>,
        desired: usize,
    ) -> Attempt<(String, usize)> {
        let (hash, size) = (upload.hash, upload.size);
        let result = self
            .agent
            .put(&format!("{}/{}", service.root, hash))
            .config()
            .http_status_as_error(false)
            .timeout_global(self.retry.limit.time_left())
            .build()
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", &size.to_string())
            .header("X-Keep-Desired-Replicas", &desired.to_string())
            .header("X-Request-Id", upload.request_id)
            .send(ureq::SendBody::from_reader(&mut src));
        // A local failure, or data that is not the block, ends the PUT whatever Keep said.
        if let Err(e) = src.verdict(hash, upload.what) {
            return Attempt::Fatal(e);
        }
        match result {
            Ok(response) => put_answer(response, hash, size),
            Err(e) => Attempt::from_transport(&e),
        }
    }
}

/// What a PUT's answer says: the signed locator and how many replicas the service
/// stored, or why not.
fn put_answer(
    mut response: ureq::http::Response<ureq::Body>,
    hash: &str,
    size: u64,
) -> Attempt<(String, usize)> {
    let status = response.status().as_u16();
    let replicas = response
        .headers()
        .get("X-Keep-Replicas-Stored")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(1);
    let text = match read_small_body(&mut response) {
        Ok(b) => b,
        Err(e) => return Attempt::from_transport(&e),
    };
    if status != 200 {
        return status_attempt(status, &text);
    }
    let token = String::from_utf8_lossy(&text).trim().to_string();
    match Locator::parse(&token) {
        Ok(l) if l.hash == hash && l.size == size => Attempt::Done((token, replicas)),
        _ => Attempt::Refused {
            status: None,
            message: format!(
                "answered with {:?}, not a locator for {hash}+{size}",
                error_message(&text)
            ),
        },
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

impl<R: Read> SourceReader<R> {
    fn new(inner: R, size: u64) -> SourceReader<R> {
        SourceReader {
            inner,
            remaining: size,
            hasher: Md5::new(),
            error: None,
        }
    }

    /// After a PUT sent it: the error of reading the data, if any; else, when all `size`
    /// bytes were read, whether their md5 is `hash`.
    fn verdict(&mut self, hash: &str, what: &str) -> Result<(), StoreError> {
        if let Some(source) = self.error.take() {
            return Err(StoreError::Io {
                what: format!("{what}: reading the block's data"),
                source,
            });
        }
        if self.remaining == 0 {
            let actual = hex(&self.hasher.clone().finalize());
            if actual != hash {
                return Err(StoreError::Invalid {
                    what: what.to_string(),
                    message: format!("the block's data has md5 {actual}, not {hash}"),
                });
            }
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::super::tests::{FOO, SIG, TOKEN, client, keep_put_ok, services_for, source, svc};
    use super::*;
    use crate::arvados::client::testserver::{response, start};
    use crate::arvados::manifest::md5_hex;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
    fn put_asks_for_the_missing_replicas_at_once() {
        const SLOW: std::time::Duration = std::time::Duration::from_millis(300);
        let slow_ok = || {
            let ok = keep_put_ok("1");
            move |n: usize, req: &crate::arvados::client::testserver::Req| {
                std::thread::sleep(SLOW);
                ok(n, req)
            }
        };
        let (a, b) = (start(slow_ok()), start(slow_ok()));
        let (services, _) = services_for(&[&a, &b], FOO);
        let kc = client(services);
        let t = std::time::Instant::now();
        kc.put_block(FOO, 3, &source(b"foo")).unwrap();
        let took = t.elapsed();
        assert_eq!(a.requests.lock().unwrap().len(), 1);
        assert_eq!(b.requests.lock().unwrap().len(), 1);
        // One after the other would take two of them.
        assert!(took < SLOW * 2 - SLOW / 6, "{took:?}");
    }

    #[test]
    fn put_asks_proxies_one_at_a_time_and_stops_when_one_stores_enough_replicas() {
        let a = start(keep_put_ok("2"));
        let b = start(keep_put_ok("2"));
        let (mut services, _) = services_for(&[&a, &b], FOO);
        services.iter_mut().for_each(|s| s.disk = false);
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
}
