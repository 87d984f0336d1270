//! Body spooling on a full filesystem (a tiny tmpfs as `--spool-dir`): a clear 5xx, nothing half
//! delivered to the app or the client, nothing left behind, and the next request served whole.

mod run_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use run_support::*;

/// A 256 KiB tmpfs, unmounted on drop (before its mount point directory is removed).
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Option<Self> {
        let d = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
            .arg(d.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self {
            path: d.path().to_path_buf(),
            _dir: d,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the filesystem of `dir` until the kernel says it is full.
fn fill(dir: &Path) -> PathBuf {
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        if f.write_all(&chunk).and_then(|_| f.sync_all()).is_err() {
            break;
        }
    }
    p
}

fn spool_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "filler")
        .collect()
}

fn post(addr: std::net::SocketAddr, body: &[u8]) -> String {
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw(addr, &req)
}

#[test]
fn full_spool_filesystem_gives_a_clear_5xx_and_loses_nothing() {
    // A full filesystem is a fault we can cause for real; like the node-agent tests this needs
    // root, and it fails rather than skips without it.
    let fs = Tmpfs::mount()
        .expect("mounting a small tmpfs for the spool dir needs root (CAP_SYS_ADMIN)");
    let app = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("tests/apps/recorder/recorder.py"),
        app.path().join("recorder.py"),
    )
    .unwrap();
    let spool = fs.path.display().to_string();
    let r = Run::start(
        "recorder:app",
        app.path(),
        &[
            "--workers",
            "1",
            "--threads",
            "2",
            "--spool-dir",
            &spool,
            "--body-buffer-size",
            "16k",
            "--response-buffer-size",
            "16k",
        ],
    );
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let crc = python(
        "import zlib; print('%08x' % zlib.crc32(bytes(i % 251 for i in range(100000))))",
        &[],
    );
    let filler = fill(&fs.path);

    let resp = post(r.addr, &payload);
    assert_eq!(status(&resp), 500, "{resp}");
    assert!(body(&resp).contains("cannot buffer request body"), "{resp}");
    let resp = r.get("/big?big=100000");
    assert!(status(&resp) >= 500, "large response while full: {resp}");
    assert!(
        !resp.contains(&"x".repeat(1000)),
        "no partial body is sent: {}",
        &resp[..resp.len().min(300)]
    );
    let log = std::fs::read_to_string(app.path().join("requests.log")).unwrap_or_default();
    assert!(
        !log.contains("POST"),
        "a refused body reached the app: {log}"
    );
    assert_eq!(
        spool_files(&fs.path),
        Vec::<String>::new(),
        "spool leftovers"
    );

    std::fs::remove_file(filler).unwrap();
    let resp = post(r.addr, &payload);
    assert_eq!(status(&resp), 200, "{resp}");
    let log = std::fs::read_to_string(app.path().join("requests.log")).unwrap();
    let line = log.lines().find(|l| l.starts_with("POST")).unwrap();
    assert!(
        line.starts_with(&format!("POST /upload - 100000 {} ", crc.trim())),
        "{line}"
    );
    let resp = r.get("/big?big=100000");
    assert_eq!(status(&resp), 200);
    assert_eq!(body(&resp).len(), 100_000);
    assert_eq!(
        spool_files(&fs.path),
        Vec::<String>::new(),
        "spool leftovers"
    );
}
