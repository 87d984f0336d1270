//! The worker's side of the report socket to its master.

use std::io::Write as _;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::worker::protocol::{REPORT_FD, Report};

/// Sends report lines; notices when the master is gone.
pub struct Reporter {
    sock: Mutex<Option<UnixStream>>,
    gone: AtomicBool,
}

impl Reporter {
    /// Takes over the report socket the master passed on fd 4 (absent when run by hand).
    pub fn from_inherited_fd() -> Self {
        // SAFETY: fcntl(F_GETFD) only probes whether fd 4 is open.
        let open = unsafe { libc::fcntl(REPORT_FD, libc::F_GETFD) } >= 0;
        let sock = open.then(|| {
            // SAFETY: the master dup'ed the report socket to fd 4; nothing else in this process owns it.
            let s = unsafe { UnixStream::from_raw_fd(REPORT_FD) };
            // SAFETY: mark it close-on-exec so subprocesses of the app do not keep it open.
            unsafe { libc::fcntl(REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
            s
        });
        Reporter {
            sock: Mutex::new(sock),
            gone: AtomicBool::new(false),
        }
    }

    pub fn send(&self, r: &Report) {
        let mut g = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = g.as_mut()
            && s.write_all(&r.to_line()).is_err()
        {
            self.gone.store(true, Ordering::SeqCst);
            *g = None;
        }
    }

    /// True once a write failed: the master exited.
    pub fn master_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }
}
