//! TLS for client connections: rustls with ALPN `h2` and `http/1.1`, and a certificate that is
//! replaced in place when its files change.
//!
//! The kubelet updates a mounted Secret by swapping a symlink in the volume, without restarting
//! the pod; watching the files' directories lets a renewed certificate (cert-manager, a manual
//! `kubectl apply`) take effect on the next handshake, with no restart and no dropped connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// Reads the PEM certificate chain and key (before any port is bound), builds the acceptor, and
/// starts watching both files for replacements.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let loaded = load(cert, key, &provider)?;
    let resolver = Arc::new(Reloading {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        provider: provider.clone(),
        current: RwLock::new(Arc::new(loaded)),
        watcher: Mutex::new(None),
    });
    Reloading::watch(&resolver)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// The chain and key from their PEM files, checked to belong together.
fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS certificate {}: no certificate found",
            cert.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("TLS key {}: {e}", key.display()))?;
    CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| format!("TLS certificate and key do not fit: {e}"))
}

/// Serves the last certificate that loaded; a replacement that does not load is logged and the
/// previous one kept, so a half-written Secret never takes TLS down.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// Lives as long as the resolver; its callbacks hold only a weak reference back.
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl Reloading {
    fn watch(this: &Arc<Self>) -> Result<(), String> {
        use notify::Watcher as _;
        let weak = Arc::downgrade(this);
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Access events (reads, including our own) change nothing.
            if let (Some(me), Ok(ev)) = (weak.upgrade(), ev)
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                me.reload();
            }
        })
        .map_err(|e| format!("TLS: cannot watch the certificate files: {e}"))?;
        // The directories, not the files: Secret volumes and most renewers replace a file by
        // renaming another over it, which a watch on the old file never sees.
        let mut dirs: Vec<PathBuf> = [&this.cert, &this.key].iter().map(|p| parent(p)).collect();
        dirs.dedup();
        for dir in dirs {
            watcher
                .watch(&dir, notify::RecursiveMode::NonRecursive)
                .map_err(|e| format!("TLS: cannot watch {}: {e}", dir.display()))?;
        }
        *this.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher);
        Ok(())
    }

    fn reload(&self) {
        match load(&self.cert, &self.key, &self.provider) {
            Ok(new) => {
                let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
                if current.cert != new.cert {
                    *current = Arc::new(new);
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                }
            }
            // Between the writes of the certificate and the key the pair may not match yet;
            // the write that completes it triggers another reload.
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded; keeping the current one")
            }
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let err = acceptor(&dir.path().join("none.pem"), &junk).err().unwrap();
        assert!(err.contains("none.pem"), "{err}");
        let err = acceptor(&junk, &junk).err().unwrap();
        assert!(err.contains("no certificate"), "{err}");
    }
}
