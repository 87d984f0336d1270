//! What a worker process tells its master over the report socket: one JSON object per line.

use serde::{Deserialize, Serialize};

/// Environment variable that turns `kubewsgi worker` into a worker process; its value is the worker id.
pub const CHILD_ENV: &str = "KUBEWSGI_WORKER_CHILD";
/// File descriptor of the shared listening socket in a worker process.
pub const LISTEN_FD: i32 = 3;
/// File descriptor of the report socket (worker → master) in a worker process.
pub const REPORT_FD: i32 = 4;
/// How often a worker sends a heartbeat.
pub const BEAT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// One report line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Report {
    /// The app is imported and the worker accepts connections.
    Ready { threads: u32 },
    /// Liveness plus the numbers `/stats` aggregates.
    Beat { busy: u32, requests: u64 },
    /// The worker stopped accepting and drains; start a replacement now.
    Retire { reason: String },
    /// Importing the app failed; the worker exits next.
    BootError { traceback: String },
}

impl Report {
    /// The report as one line of JSON, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for r in [
            Report::Ready { threads: 4 },
            Report::Beat {
                busy: 1,
                requests: 9,
            },
            Report::Retire {
                reason: "timeout".into(),
            },
            Report::BootError {
                traceback: "Traceback\n  line\nKeyError: 'x'".into(),
            },
        ] {
            let line = r.to_line();
            assert_eq!(
                line.iter().filter(|&&b| b == b'\n').count(),
                1,
                "one line per report"
            );
            assert_eq!(serde_json::from_slice::<Report>(&line).unwrap(), r);
        }
    }
}
