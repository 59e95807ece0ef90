//! Reading one block from Keep: a GET from services in rendezvous order, streamed into the
//! caller's writer through a 64 KiB buffer while its md5 is computed (reference §2.3 (m)).
//! A transfer that breaks midway resumes from another service or attempt without writing
//! any byte twice.

use std::io::{self, Read, Write};

use md5::{Digest, Md5};

use super::{KeepClient, KeepService, read_small_body, rendezvous_order, status_attempt};
use crate::arvados::client::{new_request_id, redact_error};
use crate::arvados::manifest::{Locator, hex};
use crate::arvados::retry::Attempt;
use crate::store::StoreError;

/// Size of the buffer a GET streams through.
const GET_BUFFER: usize = 64 * 1024;

/// One block GET, and what has been written of it so far over all attempts.
struct Download<'a> {
    /// The locator as given (signed), which is what Keep wants in the URL.
    locator: &'a str,
    size: u64,
    out: &'a mut dyn Write,
    /// Bytes written to `out` so far; a later attempt skips them.
    delivered: u64,
    /// md5 of the bytes written to `out`.
    hasher: Md5,
    request_id: String,
    what: String,
}

impl KeepClient {
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
        let mut download = Download {
            locator,
            size: loc.size,
            out,
            delivered: 0,
            hasher: Md5::new(),
            request_id: new_request_id(),
            what,
        };
        let mut errors = Vec::new();
        // One service at a time: a block streams into one writer.
        let what_failed = download.what.clone();
        let end = self.rounds(
            &what_failed,
            order,
            || 1,
            |batch| {
                let get = |&idx: &usize| self.get_once(&self.services[idx], &mut download);
                batch.iter().map(get).collect()
            },
            |()| true,
            &mut errors,
        );
        let end = end.map_err(|e| redact_error(e, &self.secrets))?;
        let Download {
            delivered,
            hasher,
            what,
            ..
        } = download;
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

    /// One GET from one service, streaming into the download's writer the bytes past those
    /// an earlier attempt delivered.
    fn get_once(&self, service: &KeepService, download: &mut Download<'_>) -> Attempt<()> {
        let result = self
            .agent
            .get(&format!("{}/{}", service.root, download.locator))
            .config()
            .http_status_as_error(false)
            .timeout_global(self.retry.limit.time_left())
            .build()
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("X-Request-Id", &download.request_id)
            .header("Accept-Encoding", "identity")
            .call();
        let mut response = match result {
            Ok(r) => r,
            Err(e) => return Attempt::from_transport(&e),
        };
        let status = response.status().as_u16();
        if status != 200 {
            let text = read_small_body(&mut response).unwrap_or_default();
            if status == 404 {
                return Attempt::NotFound;
            }
            return status_attempt(status, &text);
        }
        // A missing Content-Length (chunked, e.g. through a proxy) is fine: the size is
        // checked as the bytes arrive. A wrong one is refused before anything is written.
        let size = download.size;
        if let Some(len) = response.body().content_length()
            && len != size
        {
            return Attempt::Refused {
                status: None,
                message: format!("Content-Length is {len}, the locator says {size}"),
            };
        }
        download.receive(response.body_mut().as_reader())
    }
}

impl Download<'_> {
    /// Copy one answer's body into `out`, skipping what earlier attempts delivered. Done
    /// when exactly `size` bytes came; a body that breaks or ends short is worth another
    /// try, one that runs long is not.
    fn receive(&mut self, mut reader: impl Read) -> Attempt<()> {
        let size = self.size;
        let mut buf = vec![0u8; GET_BUFFER];
        let mut pos = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Attempt::Transient {
                        status: None,
                        message: format!("transfer broke after {pos} of {size} bytes: {e}"),
                    };
                }
            };
            if pos + n as u64 > size {
                return Attempt::Refused {
                    status: None,
                    message: format!("sent more than {size} bytes"),
                };
            }
            // Skip what an earlier attempt already delivered.
            let skip = self.delivered.saturating_sub(pos).min(n as u64) as usize;
            if let Err(source) = self.deliver(&buf[skip..n]) {
                return Attempt::Fatal(StoreError::Io {
                    what: format!("{}: writing the block's data", self.what),
                    source,
                });
            }
            pos += n as u64;
        }
        if pos != size {
            return Attempt::Transient {
                status: None,
                message: format!("transfer ended after {pos} of {size} bytes"),
            };
        }
        Attempt::Done(())
    }

    /// Write fresh bytes to `out` and count them in.
    fn deliver(&mut self, fresh: &[u8]) -> io::Result<()> {
        if !fresh.is_empty() {
            self.out.write_all(fresh)?;
            self.hasher.update(fresh);
            self.delivered += fresh.len() as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{FOO, SIG, TOKEN, client, services_for, svc};
    use super::*;
    use crate::arvados::client::testserver::{Req, response, start};
    use crate::arvados::manifest::md5_hex;
    use crate::arvados::retry::RetryPolicy;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

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
            limit: Default::default(),
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
