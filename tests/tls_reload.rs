//! A renewed certificate takes effect without a restart: the TLS files sit in a directory laid out
//! as the kubelet lays out a Secret volume (`tls.crt -> ..data/tls.crt`, `..data -> ..<version>`),
//! and the update swaps `..data` atomically, as the kubelet does. A broken update is refused and
//! the last good certificate kept.

mod run_support;
mod tls_support;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use run_support::*;
use tls_support::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// Publishes the files of `version` as the volume's content, atomically.
fn publish(volume: &Path, version: &str) {
    let tmp = volume.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, volume.join("..data")).unwrap();
}

/// A request over a fresh TLS connection: (served certificate, status).
fn fetch(addr: std::net::SocketAddr, cfg: &std::sync::Arc<rustls::ClientConfig>) -> (Vec<u8>, u16) {
    use std::io::{Read, Write};
    let mut s = connect(addr, cfg, Duration::from_secs(30));
    let cert = served_cert(&s);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (cert, status(&String::from_utf8_lossy(&out)))
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_refused() {
    let volume = tempfile::tempdir().unwrap();
    let v = volume.path();
    for version in ["..v1", "..v2", "..v3"] {
        std::fs::create_dir(v.join(version)).unwrap();
    }
    let (first, _) = make_cert_named(&v.join("..v1"), "tls.crt", "tls.key");
    let (second, _) = make_cert_named(&v.join("..v2"), "tls.crt", "tls.key");
    // A certificate with a key that is not its own.
    let (third, _) = make_cert_named(&v.join("..v3"), "tls.crt", "other.key");
    std::fs::copy(v.join("..v1/tls.key"), v.join("..v3/tls.key")).unwrap();
    publish(v, "..v1");
    symlink("..data/tls.crt", v.join("tls.crt")).unwrap();
    symlink("..data/tls.key", v.join("tls.key")).unwrap();

    let app = probe_dir();
    let flags = tls_flags(&v.join("tls.crt"), &v.join("tls.key"));
    let mut args: Vec<&str> = vec!["--workers", "1", "--threads", "2"];
    args.extend(flags.iter().map(String::as_str));
    let run = Run::start("probe:app", &app, &args);
    // Without resumption every handshake shows the certificate served now, not the one a
    // resumed session was first made with.
    let mut cfg = (*client(&[&first, &second, &third], b"http/1.1")).clone();
    cfg.resumption = rustls::client::Resumption::disabled();
    let cfg = std::sync::Arc::new(cfg);
    let (served, code) = fetch(run.addr, &cfg);
    assert_eq!(served, der(&first), "the first certificate is served");
    assert_eq!(code, 200);

    // A long-lived connection opened before the renewal keeps working across it.
    let before = connect(run.addr, &cfg, Duration::from_secs(30));

    publish(v, "..v2");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (served, code) = fetch(run.addr, &cfg);
        assert_eq!(code, 200);
        if served == der(&second) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served within {DEADLINE:?}\n{}",
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        run.stderr().contains("TLS certificate reloaded"),
        "{}",
        run.stderr()
    );
    let (mut s, req) = (
        before,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    {
        use std::io::{Read, Write};
        s.write_all(req).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert_eq!(status(&String::from_utf8_lossy(&out)), 200);
    }

    // A pair that does not belong together is refused with a log line; the renewed one stays.
    publish(v, "..v3");
    let deadline = Instant::now() + DEADLINE;
    while !run.stderr().contains("TLS certificate not reloaded") {
        assert!(
            Instant::now() < deadline,
            "no word about the broken certificate within {DEADLINE:?}\n{}",
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (served, code) = fetch(run.addr, &cfg);
    assert_eq!(
        served,
        der(&second),
        "the last good certificate is still served"
    );
    assert_eq!(code, 200);
}
