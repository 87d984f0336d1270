//! `kubewsgi run` under test: started with real apps from `tests/apps/` and the project venv,
//! announced by its "serving" line, killed on drop.
#![allow(dead_code)]

#[path = "../capture/mod.rs"]
mod capture;
#[path = "../wire/mod.rs"]
mod wire;
pub use wire::*;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The crate root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project venv (made by `scripts/setup`).
pub fn venv() -> PathBuf {
    root().join(".venv")
}

/// `kubewsgi run APP --chdir DIR` with the project venv and without backtraces in its errors.
pub fn command(app: &str, chdir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kubewsgi"));
    c.arg("run")
        .arg(app)
        .arg("--chdir")
        .arg(chdir)
        .env("VIRTUAL_ENV", venv())
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    c
}

/// A running `kubewsgi run`.
pub struct Run {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Run {
    /// Starts `kubewsgi run APP --chdir DIR --bind … --admin … EXTRA…` without waiting.
    pub fn spawn(app: &str, chdir: &Path, extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = command(app, chdir)
            .args(["--bind", &addr.to_string(), "--admin", &admin.to_string()])
            .args(extra)
            // Its own process group, like a shell job, so a terminal's Ctrl-C can be imitated.
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kubewsgi run");
        let (out, err) = capture::capture(&mut child);
        Self {
            child,
            addr,
            admin,
            out,
            err,
        }
    }

    /// Starts and waits for the "serving" line. A port taken between choosing and binding it
    /// (another test's outgoing connection) means another try on new ports.
    pub fn start(app: &str, chdir: &Path, extra: &[&str]) -> Self {
        for attempt in 0..4 {
            let mut r = Self::spawn(app, chdir, extra);
            let end = Instant::now() + Duration::from_secs(120);
            loop {
                if r.stdout().contains("kubewsgi: serving") {
                    return r;
                }
                if let Ok(Some(st)) = r.child.try_wait() {
                    if attempt < 3 && r.stderr().contains("cannot listen") {
                        break;
                    }
                    panic!(
                        "kubewsgi run exited early ({st}):\n{}\n{}",
                        r.stdout(),
                        r.stderr()
                    );
                }
                assert!(
                    Instant::now() < end,
                    "no serving line:\n{}\n{}",
                    r.stdout(),
                    r.stderr()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Signals the whole process group, as a terminal does on Ctrl-C.
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) on the process group we created for the child.
        unsafe { libc::kill(-(self.child.id() as i32), sig) };
    }

    /// Waits up to `limit` for exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// GET on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let r = raw(
            self.admin,
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        (status(&r), body(&r).to_string())
    }

    /// GET on the main listener, returning the raw response.
    pub fn get(&self, path: &str) -> String {
        raw(
            self.addr,
            format!("GET {path} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // SIGTERM first so the worker server is stopped too, then make sure.
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(15)).is_none() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// Runs Python code with the project venv; returns stdout (panics on failure).
pub fn python(code: &str, args: &[&str]) -> String {
    let out = Command::new(venv().join("bin/python"))
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The probe app's directory.
pub fn probe_dir() -> PathBuf {
    root().join("tests/apps/proxy_probe")
}

/// Direct children of `pid`, from `/proc`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The command name may hold spaces; fields after its closing parenthesis are fixed.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}
