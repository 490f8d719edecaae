//! TLS for Ferry's listeners: a certificate chain and key from PEM files, reloaded when the
//! files change (checked every few seconds) or when the process gets SIGHUP, so a renewed
//! certificate is used by the next connection without a restart. A reload that fails (a key
//! that does not match, a file half-written) keeps the certificate in use and is logged.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;

/// How often the files' modification times are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it ({detail})")]
    NoCertificate { path: String, detail: String },
    #[error("{path}: no PEM private key in it ({detail})")]
    NoKey { path: String, detail: String },
    #[error("{cert} and {key} do not make a TLS identity: {detail}")]
    Identity {
        cert: String,
        key: String,
        detail: String,
    },
}

/// A listener's certificate and key, reloadable.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<TlsAcceptor>,
    /// The files' modification times when last loaded.
    loaded: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Builds a server configuration from PEM files (HTTP/1.1 over ALPN).
fn load(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NoCertificate {
            path: cert.display().to_string(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.display().to_string(),
            detail: "the file is empty".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| TlsError::NoKey {
        path: key.display().to_string(),
        detail: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
    .map_err(|e| TlsError::Identity {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        detail: e.to_string(),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Tls {
    /// Loads the certificate chain and key; an error names the file and what is wrong.
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let stamps = (modified(cert), modified(key));
        let config = load(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(TlsAcceptor::from(Arc::new(config))),
            loaded: Mutex::new(stamps),
        }))
    }

    /// What accepts the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again; on an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = (modified(&self.cert), modified(&self.key));
        let config = match load(&self.cert, &self.key) {
            Ok(c) => c,
            Err(e) => {
                // Not tried again until the files change again: from the times they had when
                // read, so a file that lands meanwhile (the other half of a pair) is loaded.
                if let Ok(mut l) = self.loaded.lock() {
                    *l = stamps;
                }
                return Err(e);
            }
        };
        let acceptor = TlsAcceptor::from(Arc::new(config));
        match self.current.write() {
            Ok(mut a) => *a = acceptor,
            Err(poisoned) => *poisoned.into_inner() = acceptor,
        }
        if let Ok(mut l) = self.loaded.lock() {
            *l = stamps;
        }
        tracing::info!(cert = %self.cert.display(), "TLS certificate loaded");
        Ok(())
    }

    /// Reloads when either file's modification time changes, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = (modified(&self.cert), modified(&self.key));
            let changed = self.loaded.lock().map(|l| *l != now).unwrap_or(false);
            if changed {
                self.reload_logged();
            }
        }
    }

    /// `reload`, with a failure logged (SIGHUP and the watcher).
    pub fn reload_logged(&self) {
        if let Err(e) = self.reload() {
            tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
        }
    }
}
