//! TLS for every listener: one rustls server configuration (ring provider, TLS 1.2 and 1.3)
//! from PEM files, with client certificates required when a CA is given; and the client side a
//! cluster node dials its peers with (the same certificate, peers verified against the CA).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("reading {what} {}: {source}", path.display())]
    Pem {
        /// Which file it was (certificate, key, client CA).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    /// rustls refused the configuration (a key that does not fit the certificate, a bad CA).
    #[error("{what}: {source}")]
    Config {
        /// What was being set up.
        what: &'static str,
        /// rustls' reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn pem(what: &'static str, path: &Path) -> impl FnOnce(rustls_pki_types::pem::Error) -> TlsError {
    let path = path.to_owned();
    move |source| TlsError::Pem { what, path, source }
}

fn config(what: &'static str) -> impl FnOnce(rustls::Error) -> TlsError {
    move |e| TlsError::Config {
        what,
        source: Box::new(e),
    }
}

fn read_certs(cert: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(pem("the TLS certificate", cert))?
        .collect::<Result<_, _>>()
        .map_err(pem("the TLS certificate", cert))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    Ok(certs)
}

fn read_roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(pem("the client CA", ca))? {
        let c = c.map_err(pem("the client CA", ca))?;
        roots
            .add(c)
            .map_err(config("a certificate of the client CA"))?;
    }
    Ok(roots)
}

/// The TLS client side of a cluster node: it presents `cert` and `key` (PEM) to the peers it
/// dials and verifies theirs against `ca` (PEM), so only holders of a certificate from that CA
/// take part (mutual TLS, with [`tls_acceptor`] given the same CA on the other side).
pub fn tls_peer_connector(cert: &Path, key: &Path, ca: &Path) -> Result<TlsConnector, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem("the TLS private key", key))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config("TLS protocol versions"))?
        .with_root_certificates(read_roots(ca)?)
        .with_client_auth_cert(certs, key)
        .map_err(config("the TLS certificate and key do not fit together"))?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TLS acceptor from a certificate chain and key (PEM), optionally verifying clients'
/// certificates against `client_ca` (PEM).
pub fn tls_acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem("the TLS private key", key))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config("TLS protocol versions"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = read_roots(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config {
                    what: "the client certificate verifier",
                    source: Box::new(e),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(config("the TLS certificate and key do not fit together"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
