//! TLS for the API and Keep: which server certificates crunch-run trusts, the handshake
//! under ureq, and the one sentence a TLS failure becomes.
//!
//! Trust: the system CA bundle plus the file named by SSL_CERT_FILE or `--ca-certs`, as
//! CAs; and, as curl and Python do, a server certificate that is itself in that file, even
//! a self-signed one marked CA:TRUE (what `openssl req -x509` makes); see `verifier`.
//! ARVADOS_API_HOST_INSECURE skips the check. The API client builds its agent from
//! `connector`, and Keep shares that agent, so both follow the same rules and wording.
//! Retrying and error texts of other failures are `retry`'s and `client`'s.

mod failure;
mod transport;
mod validity;
mod verifier;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use ureq::tls::PemItem;
use ureq::unversioned::transport::{ConnectProxyConnector, Connector, TcpConnector};

use crate::store::StoreError;

pub(crate) use failure::failure_of;
use transport::TlsConnector;

/// Where the system CA bundle may live; the first one that exists is used.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The connector chain for ureq: an HTTP CONNECT proxy if the environment names one, TCP,
/// then TLS with crunch-run's trust rules. Fails on an unreadable or empty CA file.
pub(crate) fn connector(
    insecure: bool,
    extra_ca_file: Option<&Path>,
) -> Result<impl Connector, StoreError> {
    let config = client_config(insecure, extra_ca_file)?;
    Ok(
        ().chain(ConnectProxyConnector::default())
            .chain(TcpConnector::default())
            .chain(TlsConnector::new(config)),
    )
}

/// The rustls settings: no verification if insecure; otherwise the system bundle and the
/// extra CA file as roots, the extra file's certificates also trusted as themselves. If
/// neither exists, the WebPki roots compiled in.
fn client_config(
    insecure: bool,
    extra_ca_file: Option<&Path>,
) -> Result<Arc<ClientConfig>, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = if insecure {
        verifier::ServerVerifier::anything(&provider)
    } else {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(system_certs());
        let pinned = match extra_ca_file {
            Some(path) => read_ca_file(path)?,
            None => Vec::new(),
        };
        roots.add_parsable_certificates(pinned.iter().cloned());
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        verifier::ServerVerifier::trusting(roots, pinned, &provider).map_err(|e| {
            StoreError::Invalid {
                what: "setting up TLS".to_string(),
                message: e.to_string(),
            }
        })?
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| StoreError::Invalid {
            what: "setting up TLS".to_string(),
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The certificates of the first system bundle that exists; none if it cannot be read.
fn system_certs() -> Vec<CertificateDer<'static>> {
    let Some(path) = SYSTEM_CA_BUNDLES.iter().find(|p| Path::new(p).exists()) else {
        return Vec::new();
    };
    // An unreadable system bundle is not fatal: go on as if there were none.
    let pem = fs::read(path).unwrap_or_default();
    ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(CertificateDer::from(c.der().to_vec())),
            _ => None,
        })
        .collect()
}

/// The certificates of SSL_CERT_FILE / `--ca-certs`: an error naming the file if it cannot
/// be read, is not PEM, or holds no certificate.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let what = format!("reading CA certificates from {}", path.display());
    let pem = fs::read(path).map_err(|source| StoreError::Io {
        what: what.clone(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(CertificateDer::from(c.der().to_vec())),
            Ok(_) => {}
            Err(_) => {
                return Err(StoreError::Invalid {
                    what,
                    message: "the file is not valid PEM".to_string(),
                });
            }
        }
    }
    if certs.is_empty() {
        return Err(StoreError::Invalid {
            what,
            message: "no certificates found in the file".to_string(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
