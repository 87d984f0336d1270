//! Binding the server socket in the master: Unix socket (stale file removed, live owner refused) or TCP.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use super::{Error, Result};

/// The bound listening socket shared by every worker process.
#[derive(Debug)]
pub struct Listener {
    pub fd: OwnedFd,
    pub describe: String,
}

impl Listener {
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// Binds a Unix socket at `path`: a leftover file from a dead server is removed, a live one is refused.
pub fn bind_unix(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::Config(format!(
                "{} is in use by another running server",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| {
            Error::Config(format!(
                "cannot remove stale socket {}: {e}",
                path.display()
            ))
        })?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(Error::Config(format!(
            "socket directory {} does not exist",
            dir.display()
        )));
    }
    UnixListener::bind(path)
        .map_err(|e| Error::Config(format!("cannot bind {}: {e}", path.display())))
}

/// Binds the server socket from `--socket` or `--bind` (with a backlog large enough for bursts).
pub fn bind(socket: Option<&Path>, bind: Option<&str>) -> Result<Listener> {
    let (fd, describe): (OwnedFd, String) = match (socket, bind) {
        (Some(p), _) => (bind_unix(p)?.into(), format!("unix:{}", p.display())),
        (None, Some(addr)) => {
            let sa: SocketAddr = addr.parse().map_err(|_| {
                Error::Config(format!(
                    "--bind {addr}: expected HOST:PORT with a literal IP address"
                ))
            })?;
            let l = TcpListener::bind(sa)
                .map_err(|e| Error::Config(format!("cannot bind {sa}: {e}")))?;
            let local = l.local_addr()?;
            (l.into(), format!("http://{local}"))
        }
        (None, None) => {
            return Err(Error::Config(
                "one of --socket PATH or --bind HOST:PORT is required".into(),
            ));
        }
    };
    // std binds with a backlog of 128; a bigger queue rides out SIGHUP rolls and bursts.
    // SAFETY: listen(2) on a socket we own.
    unsafe { libc::listen(fd.as_raw_fd(), 1024) };
    Ok(Listener { fd, describe })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_socket_is_replaced_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let live = bind_unix(&p).unwrap();
        let err = bind_unix(&p).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        drop(live); // the file stays behind, nobody listens: stale
        assert!(p.exists());
        let again = bind_unix(&p).unwrap();
        assert!(UnixStream::connect(&p).is_ok());
        drop(again);
    }

    #[test]
    fn bind_needs_an_address() {
        assert!(bind(None, None).is_err());
        assert!(
            bind(None, Some("localhost:80"))
                .unwrap_err()
                .to_string()
                .contains("HOST:PORT")
        );
        let l = bind(None, Some("127.0.0.1:0")).unwrap();
        assert!(l.describe.starts_with("http://127.0.0.1:"));
    }
}
