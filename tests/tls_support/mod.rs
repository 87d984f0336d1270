//! TLS for tests: self-signed certificates made with `openssl`, and a rustls client.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for `localhost` and 127.0.0.1 in `dir`: (cert, key).
pub fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    make_cert_named(dir, "cert.pem", "key.pem")
}

/// [`make_cert`] with the file names given.
pub fn make_cert_named(dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(cert), dir.join(key));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext"])
        .args(["subjectAltName=DNS:localhost,IP:127.0.0.1", "-addext"])
        // Not a CA: rustls refuses a CA certificate as the server's own.
        .args(["basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// The DER of the first certificate in a PEM file.
pub fn der(cert: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(cert)
        .unwrap()
        .next()
        .expect("a certificate")
        .unwrap()
        .to_vec()
}

/// A client trusting only `certs`, offering `alpn`.
pub fn client(certs: &[&Path], alpn: &[u8]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        for c in CertificateDer::pem_file_iter(cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

/// Connects and completes the handshake; the protocol ALPN chose must be the one offered.
pub fn connect(addr: SocketAddr, cfg: &Arc<ClientConfig>, read_timeout: Duration) -> Tls {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(read_timeout)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut s = StreamOwned::new(ClientConnection::new(cfg.clone(), name).unwrap(), tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("TLS handshake");
    }
    assert_eq!(
        s.conn.alpn_protocol(),
        cfg.alpn_protocols.first().map(|p| &p[..]),
        "ALPN"
    );
    s
}

/// The DER of the certificate the server presented on `s`.
pub fn served_cert(s: &Tls) -> Vec<u8> {
    s.conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the server presented a certificate")
        .to_vec()
}

/// `--tls-cert CERT --tls-key KEY`.
pub fn tls_flags(cert: &Path, key: &Path) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]
}
