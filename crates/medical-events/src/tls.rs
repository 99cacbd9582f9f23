//! Optional HTTPS for both services (`TLS_CERT_PATH`, `TLS_KEY_PATH`): a
//! rustls acceptor in front of the same axum app. Each handshake runs in
//! its connection's task under the header timer (`http::listener`), so a
//! slow or silent client cannot stall the accept loop.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;

use crate::config::{ConfigError, Source, optional, readable_path};

/// PEM certificate chain and private key for HTTPS (`TLS_CERT_PATH`, `TLS_KEY_PATH`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// Both paths or neither (plain HTTP); each must be readable.
    pub fn from_source(source: &impl Source) -> Result<Option<Self>, ConfigError> {
        let cert = optional(source, "TLS_CERT_PATH");
        let key = optional(source, "TLS_KEY_PATH");
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert: readable_path("TLS_CERT_PATH", &cert)?,
                key: readable_path("TLS_KEY_PATH", &key)?,
            })),
            (Some(_), None) => Err(ConfigError::Missing {
                name: "TLS_KEY_PATH",
                example: "set with TLS_CERT_PATH",
            }),
            (None, Some(_)) => Err(ConfigError::Missing {
                name: "TLS_CERT_PATH",
                example: "set with TLS_KEY_PATH",
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
}

/// Builds the acceptor from PEM files.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let (certs, key) = read_identity(files)?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An acceptor for a raw TCP protocol (MLLP): no ALPN; with `client_ca`,
/// every client must present a certificate that CA signed (mutual TLS).
pub fn stream_acceptor(
    files: &TlsFiles,
    client_ca: Option<&std::path::Path>,
) -> Result<TlsAcceptor, TlsError> {
    let (certs, key) = read_identity(files)?;
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let config = match client_ca {
        None => builder.with_no_client_auth().with_single_cert(certs, key)?,
        Some(path) => {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert)?;
            }
            let verifier =
                tokio_rustls::rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| TlsError::Certificate {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)?
        }
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn read_identity(files: &TlsFiles) -> Result<Identity, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok((certs, key))
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: shown,
            reason: "no certificate in the file".to_owned(),
        });
    }
    Ok(certs)
}

/// A client for a raw TCP protocol (MLLP delivery) that trusts only the CA
/// in `ca` (PEM): receivers on a hospital network carry private certificates.
pub fn connector_trusting(ca: &std::path::Path) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert)?;
    }
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
