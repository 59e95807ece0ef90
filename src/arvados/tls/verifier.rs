//! Deciding whether to trust the certificate a server presents.
//!
//! First the usual WebPki check: a chain to one of the roots, valid now, for the host name.
//! If that fails and the server's certificate is byte for byte one of the certificates of
//! the CA file the operator named (SSL_CERT_FILE / `--ca-certs`), it is trusted as itself,
//! as curl and Python do, provided it is valid for the host name (its subjectAltName, as
//! WebPki and Go read it) and now is within its notBefore..notAfter. This is what lets the
//! API server's own self-signed certificate in, which WebPki refuses as an end entity when
//! it says CA:TRUE. Nothing else is relaxed: a certificate not in the file, a wrong name or
//! an expired certificate is refused as before. With ARVADOS_API_HOST_INSECURE every
//! certificate passes. In every case the handshake's signatures are checked against the
//! certificate's key, so the server must hold the key of the certificate it shows.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::validity::validity;

#[derive(Debug)]
enum Trust {
    /// ARVADOS_API_HOST_INSECURE.
    Anything,
    Roots {
        webpki: Arc<WebPkiServerVerifier>,
        /// The certificates of the CA file, each also trusted as a server certificate.
        pinned: Vec<CertificateDer<'static>>,
    },
}

#[derive(Debug)]
pub(super) struct ServerVerifier {
    trust: Trust,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerVerifier {
    /// Trust every certificate (the handshake signatures are still checked).
    pub(super) fn anything(provider: &Arc<CryptoProvider>) -> ServerVerifier {
        ServerVerifier {
            trust: Trust::Anything,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// Trust chains to `roots`, and the `pinned` certificates as themselves.
    pub(super) fn trusting(
        roots: RootCertStore,
        pinned: Vec<CertificateDer<'static>>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<ServerVerifier, rustls::client::VerifierBuilderError> {
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()?;
        Ok(ServerVerifier {
            trust: Trust::Roots { webpki, pinned },
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

/// A certificate trusted as itself: valid for `server_name` and at `now`.
fn check_pinned(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<ServerCertVerified, rustls::Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    rustls::client::verify_server_name(&parsed, server_name)?;
    let (not_before, not_after) = validity(cert.as_ref()).ok_or(CertificateError::BadEncoding)?;
    let at = |secs: u64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    if now.as_secs() < not_before {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before: at(not_before),
        }
        .into());
    }
    if now.as_secs() > not_after {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after: at(not_after),
        }
        .into());
    }
    Ok(ServerCertVerified::assertion())
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (webpki, pinned) = match &self.trust {
            Trust::Anything => return Ok(ServerCertVerified::assertion()),
            Trust::Roots { webpki, pinned } => (webpki, pinned),
        };
        let refused = match webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(e) => e,
        };
        if pinned.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            check_pinned(end_entity, server_name, now)
        } else {
            Err(refused)
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
