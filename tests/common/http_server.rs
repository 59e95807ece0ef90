// A small HTTPS/1.1 server for the fake API and Keep: one thread per connection, requests on a
// connection answered in turn, each request handed whole (body read) to whoever calls
// `recv_timeout`, and answered through `Request::respond` from any thread.
//
// It replaces tiny_http, whose thread pool can leave a new connection queued behind
// long-lived keep-alive ones when two arrive together: the client then waits out its
// connect timeout (30 s) for a TLS handshake that never starts. A thread per connection
// cannot starve, and keep-alive connections are what the fake exists to count.

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Largest request head (request line and headers) the server reads.
const MAX_HEAD: usize = 64 * 1024;
/// Answers up to this size go out in one write with their head.
const SMALL_ANSWER: usize = 64 * 1024;

/// One header of a request, as the client sent it.
pub struct Header {
    pub field: String,
    pub value: String,
}

/// One request, its body already read.
pub struct Request {
    method: String,
    url: String,
    headers: Vec<Header>,
    body: Cursor<Vec<u8>>,
    remote_addr: Option<SocketAddr>,
    reply: Sender<Response>,
}

impl Request {
    pub fn method(&self) -> &str {
        &self.method
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    pub fn as_reader(&mut self) -> &mut dyn Read {
        &mut self.body
    }

    /// Send the answer; the connection then reads its next request.
    pub fn respond(self, response: Response) -> io::Result<()> {
        self.reply
            .send(response)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "connection gone"))
    }
}

/// An answer: always with a Content-Length, never chunked (as keepstore and the API server).
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Shared with whoever stored it (a Keep block), never copied here.
    pub body: Arc<Vec<u8>>,
}

/// The listening side: requests arrive on a channel, in the order they were read.
pub struct Server {
    addr: SocketAddr,
    requests: Receiver<Request>,
    closed: Arc<AtomicBool>,
}

impl Server {
    /// Serve HTTPS on `listener` with the PEM certificate chain and key.
    pub fn https(listener: TcpListener, cert_chain_pem: &str, key_pem: &str) -> io::Result<Server> {
        let config = Arc::new(tls_config(cert_chain_pem, key_pem)?);
        let addr = listener.local_addr()?;
        let (tx, requests) = crossbeam_channel::unbounded();
        let closed = Arc::new(AtomicBool::new(false));
        let closing = closed.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if closing.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (tx, config) = (tx.clone(), config.clone());
                thread::spawn(move || serve_tls(stream, config, tx));
            }
        });
        Ok(Server {
            addr,
            requests,
            closed,
        })
    }

    pub fn server_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next request, or None after `timeout`; Err once the server is gone.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Request>, ()> {
        match self.requests.recv_timeout(timeout) {
            Ok(rq) => Ok(Some(rq)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(()),
        }
    }
}

impl Drop for Server {
    /// Stop listening: the accept loop sees `closed` on the next connection, ours.
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn tls_config(cert_chain_pem: &str, key_pem: &str) -> io::Result<rustls::ServerConfig> {
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let certs = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| invalid(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&e))
}

fn serve_tls(tcp: TcpStream, config: Arc<rustls::ServerConfig>, tx: Sender<Request>) {
    let remote_addr = tcp.peer_addr().ok();
    // An answer written in two parts must not wait for the client's delayed ACK (40 ms).
    let _ = tcp.set_nodelay(true);
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut stream = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    // Any error (client gone, bad request, nobody answered) ends the connection.
    while let Ok(true) = serve_one(&mut stream, remote_addr, &tx) {}
    let tls = stream.get_mut();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// Read one request, hand it over, write its answer. Ok(false) when the connection ends.
fn serve_one<S: Read + Write>(
    stream: &mut BufReader<S>,
    remote_addr: Option<SocketAddr>,
    tx: &Sender<Request>,
) -> io::Result<bool> {
    let Some(head) = read_head(stream)? else {
        return Ok(false);
    };
    let (method, url, version, headers) = parse_head(&head)?;
    let get = |name: &str| {
        headers
            .iter()
            .find(|h| h.field.eq_ignore_ascii_case(name))
            .map(|h| h.value.trim().to_ascii_lowercase())
    };
    if get("Expect").as_deref() == Some("100-continue") {
        stream
            .get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        stream.get_mut().flush()?;
    }
    let body = if get("Transfer-Encoding").is_some_and(|v| v.contains("chunked")) {
        read_chunked(stream)?
    } else {
        let len = get("Content-Length").map_or(Ok(0), |v| {
            v.parse::<usize>()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))
        })?;
        let mut body = vec![0; len];
        stream.read_exact(&mut body)?;
        body
    };
    let keep_alive = match get("Connection").as_deref() {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => version == "HTTP/1.1",
    };
    let is_head = method.eq_ignore_ascii_case("HEAD");
    let (reply, answer) = crossbeam_channel::unbounded();
    let request = Request {
        method,
        url,
        headers,
        body: Cursor::new(body),
        remote_addr,
        reply,
    };
    tx.send(request)
        .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "server gone"))?;
    let response = answer
        .recv()
        .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "no answer"))?;
    write_response(stream.get_mut(), &response, is_head, keep_alive)?;
    Ok(keep_alive)
}

/// The bytes up to the blank line; None when the client closed between requests.
fn read_head<R: BufRead>(stream: &mut R) -> io::Result<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = stream.by_ref().take(MAX_HEAD as u64).read_line(&mut line)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if line == "\r\n" || line == "\n" {
            if head.is_empty() {
                continue; // a stray blank line between requests
            }
            return Ok(Some(head));
        }
        head.push_str(&line);
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
    }
}

type Head = (String, String, String, Vec<Header>);

fn parse_head(head: &str) -> io::Result<Head> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad request head");
    let mut lines = head.lines();
    let mut request_line = lines.next().ok_or_else(bad)?.split_whitespace();
    let method = request_line.next().ok_or_else(bad)?.to_string();
    let url = request_line.next().ok_or_else(bad)?.to_string();
    let version = request_line.next().unwrap_or("HTTP/1.0").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| Header {
            field: k.trim().to_string(),
            value: v.trim().to_string(),
        })
        .collect();
    Ok((method, url, version, headers))
}

fn read_chunked<R: BufRead>(stream: &mut R) -> io::Result<Vec<u8>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad chunk");
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        stream.read_line(&mut size_line)?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad())?;
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                let mut line = String::new();
                if stream.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        stream.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        stream.read_exact(&mut crlf)?;
    }
}

fn write_response<W: Write>(
    w: &mut W,
    response: &Response,
    is_head: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        response.status,
        reason(response.status),
        response.body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    for (k, v) in &response.headers {
        if !k.eq_ignore_ascii_case("Content-Length") && !k.eq_ignore_ascii_case("Connection") {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    // One write for head and body, so that a small answer is one TLS record and one segment;
    // a big one (a Keep block) is written from where it lies, not copied behind the head.
    let mut out = head.into_bytes();
    let body: &[u8] = if is_head { &[] } else { &response.body };
    if body.len() <= SMALL_ANSWER {
        out.extend_from_slice(body);
        w.write_all(&out)?;
    } else {
        w.write_all(&out)?;
        w.write_all(body)?;
    }
    w.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
