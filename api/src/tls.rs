//! TLS for the one listener (HTTP/1.1, HTTP/2, WebSocket and gRPC alike), with rustls: TLS 1.3
//! only unless `server.tls.min_version = "1.2"`, ALPN `h2` and `http/1.1`, optional client
//! certificates (mutual TLS, for node-to-node traffic). The certificate and key are re-read when
//! their files change, so a renewed certificate is served without a restart; a broken
//! replacement is logged and the previous one kept. The listener itself is `listener.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use common::config::{TlsConfig, TlsVersion};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(String),
    #[error("server.tls.cert and server.tls.key must both be set")]
    Missing,
}

fn read_err(path: &std::path::Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A rustls server configuration from the settings.
pub fn server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Err(TlsError::Missing);
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(cert, e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| read_err(key, e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version.unwrap_or_default() {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        _ => &[&rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| read_err(ca, e))? {
                roots
                    .add(c.map_err(|e| read_err(ca, e))?)
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The rustls client configuration a node uses to call another node over TLS: it presents its
/// own certificate (which `server.tls.client_ca` must have signed when mutual TLS is on) and
/// trusts the client CA and the certificates of its own chain, i.e. nodes that share its
/// certificate or its issuer. HTTP/2 only, as gRPC needs.
pub fn client_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, TlsError> {
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Err(TlsError::Missing);
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(cert, e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| read_err(key, e))?;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &tls.client_ca {
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| read_err(ca, e))? {
            roots
                .add(c.map_err(|e| read_err(ca, e))?)
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
        }
    }
    for c in &chain {
        roots
            .add(c.clone())
            .map_err(|e| TlsError::ClientCa(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The acceptor in use, swapped when the certificate files change.
pub struct Reloader {
    settings: TlsConfig,
    acceptor: ArcSwap<TlsAcceptor>,
}

fn stamps(tls: &TlsConfig) -> Vec<Option<SystemTime>> {
    [&tls.cert, &tls.key, &tls.client_ca]
        .into_iter()
        .map(|p| {
            p.as_ref()
                .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        })
        .collect()
}

impl Reloader {
    pub fn new(settings: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(settings)?));
        Ok(Arc::new(Self {
            settings: settings.clone(),
            acceptor: ArcSwap::from_pointee(acceptor),
        }))
    }

    /// The acceptor for a new connection (the current certificate).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::clone(&self.acceptor.load())
    }

    /// Watches the files every `period` while the reloader is in use.
    pub fn spawn_watch(self: &Arc<Self>, period: Duration) {
        let weak = Arc::downgrade(self);
        let mut seen = stamps(&self.settings);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(this) = weak.upgrade() else { return };
                let now = stamps(&this.settings);
                if now == seen {
                    continue;
                }
                seen = now;
                match server_config(&this.settings) {
                    Ok(config) => {
                        this.acceptor
                            .store(Arc::new(TlsAcceptor::from(Arc::new(config))));
                        tracing::info!("TLS certificate reloaded");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "TLS files changed but do not load; keeping the previous certificate");
                    }
                }
            }
        });
    }
}
