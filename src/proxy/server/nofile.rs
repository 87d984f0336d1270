//! The open file limit: every client connection is a descriptor.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept back for everything that is not a client connection (listeners, upstream
/// connections, spooled bodies, static files, logs).
const RESERVED: u64 = 256;

/// Raises the soft limit on open files to the hard one, as nginx (`worker_rlimit_nofile`) and
/// Go's runtime do: the usual soft limit of 1024 would refuse connections long before
/// `--max-connections`.
pub fn raise() {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    // An unlimited hard limit cannot be the soft one: the kernel caps it at fs.nr_open.
    let target = if hard == nix::libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft < target
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard)
    {
        tracing::warn!(soft, hard, error = %e, "cannot raise the open file limit");
    }
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        tracing::info!(soft, hard, "open file limit");
    }
}

/// `max_connections`, lowered to what the open file limit allows: past it accepts would fail
/// with EMFILE, while under the cap new clients wait in the listen backlog until a slot frees.
pub fn cap(max_connections: usize) -> usize {
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return max_connections;
    };
    let room = usize::try_from(soft.saturating_sub(RESERVED)).unwrap_or(usize::MAX);
    if max_connections > room {
        tracing::info!(
            max_connections,
            open_file_limit = soft,
            capped_to = room,
            "--max-connections lowered to fit the open file limit"
        );
        return room.max(1);
    }
    max_connections
}
