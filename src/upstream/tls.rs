//! TLS client settings for upstream connections: the system trust store
//! (loaded once), a server's extra `ca_file`, and the deliberately unsafe
//! verifier behind `accept_invalid_certs`.
//!
//! Every config is built with [`crate::tls::provider`] (ring) and never
//! through rustls' default-provider paths, which panic when the process
//! has no default provider installed (CRATES.md pitfall 16).

use crate::config::SmtpServer;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::{Arc, OnceLock};
use tokio_rustls::TlsConnector;

/// The system trust store, loaded on first use and shared afterwards.
#[derive(Debug, Default)]
pub struct SystemRoots {
    roots: OnceLock<Arc<RootCertStore>>,
}

impl SystemRoots {
    /// The system's trusted roots. Unreadable or unparsable entries are
    /// skipped (logged once); an empty store just means only `ca_file`
    /// certificates will verify.
    pub fn get(&self) -> Arc<RootCertStore> {
        self.roots
            .get_or_init(|| {
                let found = rustls_native_certs::load_native_certs();
                for e in &found.errors {
                    tracing::warn!(error = %e, "problem loading the system trust store");
                }
                let mut roots = RootCertStore::empty();
                let (added, ignored) = roots.add_parsable_certificates(found.certs);
                tracing::debug!(added, ignored, "system trust store loaded");
                Arc::new(roots)
            })
            .clone()
    }
}

/// Builds the connector for `server` (TLS 1.2 and 1.3 only).
pub fn connector(system: &SystemRoots, server: &SmtpServer) -> Result<TlsConnector, String> {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let config = if server.accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
            .with_no_client_auth()
    } else {
        let mut roots = (*system.get()).clone();
        if let Some(ca) = &server.ca_file {
            for cert in crate::tls::read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("unusable certificate in {}: {e}", ca.display()))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name the server certificate must match (`tls_name`: a DNS name or an
/// IP address).
pub fn server_name(server: &SmtpServer) -> Result<ServerName<'static>, String> {
    let name = server
        .tls_name
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(name.to_owned()).map_err(|_| format!("invalid tls_name {name:?}"))
}

/// DANGER: accepts any server certificate, whoever issued it and whatever
/// name it carries. Only for `accept_invalid_certs = true` (lab servers),
/// which check-config warns about. Handshake signatures are still checked,
/// so the peer must at least hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS failure in plain words for logs, `test-server` and probes:
/// rustls prints some errors as Rust names (`Other(OtherError(
/// CaUsedAsEndEntity))`, `AlertReceived(HandshakeFailure)`).
pub fn describe_error(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => {
            let what = match c {
                C::UnknownIssuer => {
                    "is signed by an unknown certificate authority (not in the system trust store or `ca_file`)".to_owned()
                }
                C::Expired => "has expired".to_owned(),
                C::NotValidYet => "is not valid yet".to_owned(),
                C::NotValidForName => "does not name this host (see `tls_name`)".to_owned(),
                C::BadSignature => "has a bad signature".to_owned(),
                C::BadEncoding => "cannot be parsed".to_owned(),
                C::Revoked => "is revoked".to_owned(),
                C::InvalidPurpose => "is not meant for a TLS server".to_owned(),
                C::Other(o) => match o.to_string().as_str() {
                    "CaUsedAsEndEntity" => {
                        "is a certificate authority's certificate, not a server certificate".to_owned()
                    }
                    other => format!("is refused: {}", words(other)),
                },
                C::NotValidForNameContext {
                    expected,
                    presented,
                } => {
                    // `DnsName("localhost")`, `IpAddress(127.0.0.1)` → the name.
                    let names: Vec<&str> = presented
                        .iter()
                        .map(|p| {
                            p.split_once('(')
                                .map_or(p.as_str(), |(_, v)| v)
                                .trim_end_matches(')')
                                .trim_matches('"')
                        })
                        .collect();
                    format!(
                        "does not name {:?} (it names {}; see `tls_name`)",
                        expected.to_str(),
                        if names.is_empty() { "nothing".to_owned() } else { names.join(", ") }
                    )
                }
                C::ExpiredContext { .. } | C::NotValidYetContext { .. } => {
                    return format!("the server's certificate: {c}");
                }
                other => {
                    let dbg = format!("{other:?}");
                    let name = dbg.split([' ', '{', '(']).next().unwrap_or_default();
                    format!("is refused: {}", words(name))
                }
            };
            format!("the server's certificate {what}")
        }
        E::NoCertificatesPresented => "the server sent no certificate".to_owned(),
        E::AlertReceived(a) => format!(
            "the server ended the TLS handshake ({})",
            words(&format!("{a:?}"))
        ),
        E::PeerIncompatible(why) => format!(
            "no TLS version or cipher suite in common with the server ({})",
            words(&format!("{why:?}"))
        ),
        E::PeerMisbehaved(why) => format!(
            "the server broke the TLS protocol ({})",
            words(&format!("{why:?}"))
        ),
        other => words(&other.to_string()),
    }
}

/// `Other(OtherError(CaUsedAsEndEntity))` → `ca used as end entity`: the
/// innermost Rust name, split into lower-case words. Text that is already
/// words is returned as it is.
fn words(s: &str) -> String {
    let inner = s.rsplit('(').next().unwrap_or(s).trim_end_matches(')');
    if inner.contains(' ') || inner.is_empty() {
        return s.to_owned();
    }
    let mut out = String::new();
    for (i, ch) in inner.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(ch.to_lowercase());
    }
    out
}

#[cfg(test)]
mod words_tests {
    use super::*;

    #[test]
    fn tls_errors_in_plain_words() {
        let other = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(Arc::new(std::io::Error::other("CaUsedAsEndEntity"))),
        ));
        assert_eq!(
            describe_error(&other),
            "the server's certificate is a certificate authority's certificate, not a server certificate"
        );
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert_eq!(
            describe_error(&alert),
            "the server ended the TLS handshake (handshake failure)"
        );
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(describe_error(&unknown).contains("unknown certificate authority"));
        assert_eq!(
            words("Other(OtherError(UnsupportedCertVersion))"),
            "unsupported cert version"
        );
        assert_eq!(words("already words"), "already words");
    }
}
