//! A failed TLS handshake as one plain sentence: which server, what is wrong with its
//! certificate (not trusted, expired, not yet valid, for another name) or with the
//! handshake, and the two settings that change what crunch-run trusts. Never a Rust debug
//! value of rustls' error.
//!
//! The connector returns it inside `ureq::Error::Other`; `failure_of` finds it there again
//! for the retry loop, which does not retry it.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use rustls::CertificateError;

/// The latest second `humantime` can format (9999-12-31T23:59:59Z).
const LAST_FORMATTABLE_SECOND: u64 = 253_402_300_799;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    NotTrusted,
    /// With notAfter, in seconds since the epoch, when known.
    Expired(Option<u64>),
    /// With notBefore, when known.
    NotYetValid(Option<u64>),
    WrongName,
    NotAHostName,
    Handshake(&'static str),
}

/// A TLS handshake that failed, and with which server (`host[:port]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFailure {
    host: String,
    problem: Problem,
}

impl TlsFailure {
    /// `host` cannot be checked against a certificate (not a DNS name or IP address).
    pub(super) fn not_a_host_name(host: &str) -> TlsFailure {
        TlsFailure {
            host: host.to_string(),
            problem: Problem::NotAHostName,
        }
    }

    /// The handshake with `host` failed with this rustls error.
    pub(super) fn from_rustls(host: &str, err: &rustls::Error) -> TlsFailure {
        TlsFailure {
            host: host.to_string(),
            problem: problem_of(err),
        }
    }
}

fn problem_of(err: &rustls::Error) -> Problem {
    use rustls::Error;
    match err {
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired => Problem::Expired(None),
            CertificateError::ExpiredContext { not_after, .. } => {
                Problem::Expired(Some(not_after.as_secs()))
            }
            CertificateError::NotValidYet => Problem::NotYetValid(None),
            CertificateError::NotValidYetContext { not_before, .. } => {
                Problem::NotYetValid(Some(not_before.as_secs()))
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Problem::WrongName
            }
            // Unknown issuer, a CA used as a server certificate, a bad signature, …: all
            // mean that nothing crunch-run trusts vouches for this certificate.
            _ => Problem::NotTrusted,
        },
        Error::AlertReceived(_) => Problem::Handshake("the server broke it off"),
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => {
            Problem::Handshake("the server does not speak TLS on that port")
        }
        Error::PeerIncompatible(_) => {
            Problem::Handshake("the server has no TLS version or cipher suite in common with us")
        }
        _ => Problem::Handshake("the server did not follow the protocol"),
    }
}

/// `2024-01-31T12:00:00Z`.
fn date(secs: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.min(LAST_FORMATTABLE_SECOND));
    humantime::format_rfc3339_seconds(t).to_string()
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = &self.host;
        let certificate = format!("the TLS certificate of {host}");
        let what = match self.problem {
            Problem::NotTrusted => format!("{certificate} is not trusted"),
            Problem::Expired(Some(at)) => format!("{certificate} expired at {}", date(at)),
            Problem::Expired(None) => format!("{certificate} has expired"),
            Problem::NotYetValid(Some(at)) => {
                format!("{certificate} is not valid until {}", date(at))
            }
            Problem::NotYetValid(None) => format!("{certificate} is not valid yet"),
            Problem::WrongName => format!("{certificate} was issued for another host name"),
            Problem::NotAHostName => {
                format!("{host} is not a host name a TLS certificate can be checked against")
            }
            Problem::Handshake(why) => format!("the TLS handshake with {host} failed: {why}"),
        };
        write!(
            f,
            "{what} (SSL_CERT_FILE or --ca-certs name the certificates to trust besides the \
             system's, and ARVADOS_API_HOST_INSECURE=1 skips the check)"
        )
    }
}

impl std::error::Error for TlsFailure {}

/// The TLS failure a ureq error carries, if it is one.
pub(crate) fn failure_of(err: &ureq::Error) -> Option<&TlsFailure> {
    match err {
        ureq::Error::Other(inner) => inner.downcast_ref::<TlsFailure>(),
        _ => None,
    }
}
