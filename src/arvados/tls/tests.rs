//! The trust decisions, unit by unit, and over real HTTPS servers for the API and Keep
//! alike, with the sentence each failure becomes.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, date_time_ymd};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};
use serde_json::json;

use super::failure::TlsFailure;
use super::verifier::ServerVerifier;
use crate::arvados::client::{ApiClient, ApiSettings};
use crate::arvados::keep::{KeepClient, KeepService};
use crate::arvados::retry::RetryPolicy;
use crate::store::StoreError;

const TOKEN: &str = "v2/zzzzz-gj3su-000000000000000/secrettokenvalue1234567890";
const TAIL: &str = " (SSL_CERT_FILE or --ca-certs name the certificates to trust besides the \
                    system's, and ARVADOS_API_HOST_INSECURE=1 skips the check)";
/// "foo", as Keep serves it.
const FOO: &str = "acbd18db4cc2f85cedef654fccc4a4d8+3";

struct Cert {
    der: CertificateDer<'static>,
    pem: String,
    key_pem: String,
}

/// What a certificate is and for how long it is valid.
struct Spec<'a> {
    names: &'a [&'a str],
    ca: bool,
    valid: ((i32, u8, u8), (i32, u8, u8)),
}

const SERVER: Spec = Spec {
    names: &["127.0.0.1", "localhost"],
    ca: true,
    valid: ((2020, 1, 1), (2200, 1, 1)),
};

fn params(spec: &Spec) -> CertificateParams {
    let names: Vec<String> = spec.names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    if spec.ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let (from, to) = spec.valid;
    params.not_before = date_time_ymd(from.0, from.1, from.2);
    params.not_after = date_time_ymd(to.0, to.1, to.2);
    params
}

fn cert_of(cert: &rcgen::Certificate, key: &KeyPair) -> Cert {
    Cert {
        der: CertificateDer::from(cert.der().to_vec()),
        pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Its own issuer, as `openssl req -x509` makes it (CA:TRUE when `spec.ca`).
fn self_signed(spec: &Spec) -> Cert {
    let key = KeyPair::generate().unwrap();
    cert_of(&params(spec).self_signed(&key).unwrap(), &key)
}

/// A CA and a server certificate it issued.
fn issued(spec: &Spec) -> (Cert, Cert) {
    let ca_key = KeyPair::generate().unwrap();
    let ca_params = params(&Spec {
        names: &[],
        ca: true,
        valid: ((2020, 1, 1), (2200, 1, 1)),
    });
    let ca = cert_of(&ca_params.self_signed(&ca_key).unwrap(), &ca_key);
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = params(spec).signed_by(&key, &issuer).unwrap();
    (ca, cert_of(&leaf, &key))
}

/// The verifier for a CA file holding `file`, without the system bundle.
fn verifier(file: &[&Cert]) -> ServerVerifier {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pinned: Vec<_> = file.iter().map(|c| c.der.clone()).collect();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(pinned.iter().cloned());
    ServerVerifier::trusting(roots, pinned, &provider).unwrap()
}

fn decide(v: &ServerVerifier, cert: &Cert, host: &str) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(host.to_string()).unwrap();
    v.verify_server_cert(&cert.der, &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

/// The first words of the sentence a refusal becomes.
fn sentence(err: &rustls::Error) -> String {
    TlsFailure::from_rustls("h:1", err).to_string()
}

#[test]
fn a_certificate_in_the_file_is_trusted_as_itself_if_valid_for_the_name_and_now() {
    let own = self_signed(&SERVER);
    let v = verifier(&[&own]);
    decide(&v, &own, "localhost").unwrap();
    decide(&v, &own, "127.0.0.1").unwrap();

    let err = decide(&v, &own, "example.com").unwrap_err();
    assert!(matches!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
    ));
    assert!(
        sentence(&err).starts_with("the TLS certificate of h:1 was issued for another host name")
    );

    let periods = [
        (
            ((2000, 1, 1), (2001, 1, 1)),
            "expired at 2001-01-01T00:00:00Z",
        ),
        (
            ((2190, 1, 1), (2200, 1, 1)),
            "is not valid until 2190-01-01T00:00:00Z",
        ),
    ];
    for (valid, problem) in periods {
        let cert = self_signed(&Spec { valid, ..SERVER });
        let err = decide(&verifier(&[&cert]), &cert, "localhost").unwrap_err();
        assert_eq!(
            sentence(&err),
            format!("the TLS certificate of h:1 {problem}{TAIL}")
        );
    }
}

#[test]
fn everything_else_is_refused_as_before() {
    let own = self_signed(&SERVER);
    let other = self_signed(&SERVER);
    let v = verifier(&[&own]);
    // Another self-signed certificate for the same names: not trusted.
    let err = decide(&v, &other, "localhost").unwrap_err();
    assert_eq!(
        sentence(&err),
        format!("the TLS certificate of h:1 is not trusted{TAIL}")
    );
    // The same for one that is not a CA.
    let plain = self_signed(&Spec {
        ca: false,
        ..SERVER
    });
    assert!(sentence(&decide(&v, &plain, "localhost").unwrap_err()).contains("is not trusted"));

    // A CA in the file vouches for what it issued, for the names it issued it for.
    let (ca, leaf) = issued(&Spec {
        ca: false,
        ..SERVER
    });
    let v = verifier(&[&ca]);
    decide(&v, &leaf, "localhost").unwrap();
    let err = decide(&v, &leaf, "example.com").unwrap_err();
    assert!(sentence(&err).contains("was issued for another host name"));
    // A server certificate from a CA not in the file: trusted only if it is itself there.
    let (_, stranger) = issued(&Spec {
        ca: false,
        ..SERVER
    });
    let err = decide(&v, &stranger, "localhost").unwrap_err();
    assert!(sentence(&err).contains("is not trusted"), "{err}");
    decide(&verifier(&[&ca, &stranger]), &stranger, "localhost").unwrap();
    // An expired one from a trusted CA reads like an expired pinned one.
    let (ca, old) = issued(&Spec {
        ca: false,
        valid: ((2000, 1, 1), (2001, 1, 1)),
        ..SERVER
    });
    let err = decide(&verifier(&[&ca]), &old, "localhost").unwrap_err();
    assert!(sentence(&err).contains("expired at 2001-01-01T00:00:00Z"));
}

#[test]
fn insecure_trusts_any_certificate() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let v = ServerVerifier::anything(&provider);
    let expired = self_signed(&Spec {
        valid: ((2000, 1, 1), (2001, 1, 1)),
        ..SERVER
    });
    decide(&v, &expired, "example.com").unwrap();
}

/// An HTTPS server presenting `cert`: `{"ok":1}` under /arvados/, "foo" elsewhere (Keep).
fn serve(cert: &Cert) -> SocketAddr {
    let server = tiny_http::Server::https(
        "127.0.0.1:0",
        tiny_http::SslConfig {
            certificate: cert.pem.clone().into_bytes(),
            private_key: cert.key_pem.clone().into_bytes(),
        },
    )
    .unwrap();
    let addr = server.server_addr().to_ip().unwrap();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let body = if req.url().starts_with("/arvados/") {
                r#"{"ok":1}"#
            } else {
                "foo"
            };
            let _ = req.respond(tiny_http::Response::from_string(body));
        }
    });
    addr
}

fn write_file(dir: &Path, name: &str, certs: &[&Cert]) -> PathBuf {
    let path = dir.join(name);
    let pem: String = certs.iter().map(|c| c.pem.as_str()).collect();
    fs::write(&path, pem).unwrap();
    path
}

fn settings(host: String, ca_file: Option<PathBuf>, insecure: bool) -> ApiSettings {
    ApiSettings {
        host,
        token: TOKEN.into(),
        insecure,
        extra_ca_file: ca_file,
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            deadline: Duration::from_secs(20),
            limit: Default::default(),
        },
    }
}

/// The API client and a Keep client on its agent, both for the server at `addr`.
fn clients(addr: SocketAddr, ca_file: Option<PathBuf>, insecure: bool) -> (ApiClient, KeepClient) {
    let api = ApiClient::new(settings(addr.to_string(), ca_file, insecure)).unwrap();
    let service = KeepService {
        uuid: "zzzzz-bi6l4-000000000000000".into(),
        root: format!("https://{addr}"),
        read_only: false,
        disk: true,
    };
    let keep = KeepClient::new(api.agent(), TOKEN, vec![service], api.retry_policy());
    (api, keep)
}

/// The API's and Keep's refusal, each checked to come at once (not retried) and to be
/// Unavailable; returns their texts.
fn refusals(api: &ApiClient, keep: &KeepClient) -> (String, String) {
    let started = Instant::now();
    let api_err = api.get("/arvados/v1/x", &[]).unwrap_err();
    let keep_err = keep.get_block(FOO, &mut Vec::new()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    for err in [&api_err, &keep_err] {
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    }
    (api_err.to_string(), keep_err.to_string())
}

#[test]
fn the_api_servers_own_self_signed_certificate_is_trusted_by_api_and_keep() {
    let own = self_signed(&SERVER);
    let addr = serve(&own);
    let dir = tempfile::tempdir().unwrap();
    let (api, keep) = clients(
        addr,
        Some(write_file(dir.path(), "own.pem", &[&own])),
        false,
    );
    assert_eq!(api.get("/arvados/v1/x", &[]).unwrap(), json!({"ok": 1}));
    let mut data = Vec::new();
    keep.get_block(FOO, &mut data).unwrap();
    assert_eq!(data, b"foo");

    let (api, keep) = clients(addr, None, true);
    assert_eq!(api.get("/arvados/v1/x", &[]).unwrap(), json!({"ok": 1}));
    keep.get_block(FOO, &mut Vec::new()).unwrap();
}

#[test]
fn tls_refusals_are_one_sentence_for_api_and_keep() {
    let dir = tempfile::tempdir().unwrap();
    let other = self_signed(&SERVER);
    let cases: Vec<(Cert, PathBuf, &str)> = {
        let own = self_signed(&SERVER);
        let wrong_name = self_signed(&Spec {
            names: &["api.example.com"],
            ..SERVER
        });
        let expired = self_signed(&Spec {
            valid: ((2000, 1, 1), (2001, 1, 1)),
            ..SERVER
        });
        let other_file = write_file(dir.path(), "other.pem", &[&other]);
        let wrong_file = write_file(dir.path(), "wrong.pem", &[&wrong_name]);
        let expired_file = write_file(dir.path(), "expired.pem", &[&expired]);
        vec![
            (own, other_file, "is not trusted"),
            (wrong_name, wrong_file, "was issued for another host name"),
            (expired, expired_file, "expired at 2001-01-01T00:00:00Z"),
        ]
    };
    for (cert, file, problem) in cases {
        let addr = serve(&cert);
        let (api, keep) = clients(addr, Some(file), false);
        let (api_text, keep_text) = refusals(&api, &keep);
        let sentence = format!("the TLS certificate of {addr} {problem}{TAIL}");
        assert_eq!(api_text, format!("GET /arvados/v1/x: {sentence}"));
        assert_eq!(
            keep_text,
            format!("GET Keep block {FOO}: https://{addr}: {sentence}")
        );
    }
}

/// A server that answers in plain HTTP where TLS was expected: a handshake failure, in
/// the same one sentence, not retried.
#[test]
fn a_plain_http_server_is_a_handshake_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = std::io::Write::write_all(&mut stream, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let (api, keep) = clients(addr, None, false);
    let (api_text, _) = refusals(&api, &keep);
    assert_eq!(
        api_text,
        format!(
            "GET /arvados/v1/x: the TLS handshake with {addr} failed: the server does not \
             speak TLS on that port{TAIL}"
        )
    );
}

#[test]
fn ca_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let settings = |p: &Path| settings("example.invalid".into(), Some(p.to_path_buf()), false);
    let err = ApiClient::new(settings(&dir.path().join("nope.pem"))).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
    let junk = dir.path().join("junk.pem");
    fs::write(&junk, "not a certificate\n").unwrap();
    let err = ApiClient::new(settings(&junk)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "reading CA certificates from {}: no certificates found in the file",
            junk.display()
        )
    );
    let good = write_file(dir.path(), "good.pem", &[&self_signed(&SERVER)]);
    let c = ApiClient::new(settings(&good)).unwrap();
    assert!(!format!("{c:?}").contains(TOKEN));
}
