//! The open file limit: every client connection is a descriptor.

/// Raises the soft limit on open files to the hard one, as nginx (`worker_rlimit_nofile`) and
/// Go's runtime do: every client connection is a descriptor, and the usual soft limit of 1024
/// would refuse connections long before `--max-connections`.
pub fn raise() {
    let Some((soft, hard)) = limit() else {
        return;
    };
    // An unlimited hard limit cannot be the soft one: the kernel caps it at fs.nr_open.
    let target = if hard == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft < target {
        let lim = libc::rlimit {
            rlim_cur: target,
            rlim_max: hard,
        };
        // SAFETY: setrlimit(2) with a valid, initialised struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!(soft, hard, error = %e, "cannot raise the open file limit");
        }
    }
    if let Some((soft, hard)) = limit() {
        tracing::info!(soft, hard, "open file limit");
    }
}

/// (soft, hard) RLIMIT_NOFILE.
fn limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0)
        .then_some((lim.rlim_cur, lim.rlim_max))
}

/// Says so when `--max-connections` cannot be reached within the open file limit (each
/// connection is one descriptor; the rest of the process needs some too).
pub fn warn_if_short(max_connections: usize) {
    if let Some((soft, _)) = limit()
        && (max_connections as u64).saturating_add(256) > soft
    {
        tracing::warn!(
            max_connections,
            open_file_limit = soft,
            "--max-connections is above what the open file limit allows; accepts past it fail"
        );
    }
}
