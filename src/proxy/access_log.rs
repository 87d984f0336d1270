//! Access log on stdout, combined or JSON. Lines go through a channel to one writer thread that
//! flushes when it runs out of lines, so logging never blocks a request on a write syscall.

use std::io::Write;
use std::net::IpAddr;
use std::sync::mpsc;
use std::time::Duration;

use http::{HeaderMap, Method, Version};

use super::config::AccessLog;

/// What is logged about one request.
pub struct Entry<'a> {
    pub peer: IpAddr,
    pub method: &'a Method,
    pub target: &'a str,
    pub version: Version,
    pub status: u16,
    pub bytes: u64,
    pub headers: &'a HeaderMap,
    pub duration: Duration,
}

/// Sends access log lines to the writer thread.
#[derive(Clone)]
pub struct AccessLogger {
    format: AccessLog,
    tx: mpsc::Sender<String>,
}

impl AccessLogger {
    /// Starts the writer thread; `None` for `--access-log off`.
    pub fn start(format: AccessLog) -> Option<Self> {
        if format == AccessLog::Off {
            return None;
        }
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                // Stdout is locked per flush only: others (the `run` banner) print there too.
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    while let Ok(line) = rx.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                }
            })
            .ok()?;
        Some(Self { format, tx })
    }

    /// Logs one request.
    pub fn log(&self, e: &Entry<'_>) {
        let _ = self
            .tx
            .send(format_line(self.format, e, chrono::Local::now()));
    }
}

fn header(h: &HeaderMap, name: http::header::HeaderName) -> &str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn format_line(format: AccessLog, e: &Entry<'_>, now: chrono::DateTime<chrono::Local>) -> String {
    let referer = header(e.headers, http::header::REFERER);
    let agent = header(e.headers, http::header::USER_AGENT);
    match format {
        AccessLog::Json => {
            let mut line = serde_json::json!({
                "time": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
                "remote_addr": e.peer.to_canonical().to_string(),
                "method": e.method.as_str(),
                "uri": e.target,
                "protocol": format!("{:?}", e.version),
                "status": e.status,
                "bytes": e.bytes,
                "duration_ms": (e.duration.as_secs_f64() * 1e6).round() / 1e3,
                "referer": referer,
                "user_agent": agent,
                "host": header(e.headers, http::header::HOST),
            })
            .to_string();
            line.push('\n');
            line
        }
        _ => {
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    escape(s)
                }
            };
            format!(
                "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\" {:.3}\n",
                e.peer.to_canonical(),
                now.format("%d/%b/%Y:%H:%M:%S %z"),
                e.method,
                escape(e.target),
                e.version,
                e.status,
                e.bytes,
                dash(referer),
                dash(agent),
                e.duration.as_secs_f64(),
            )
        }
    }
}

/// Keeps a log line one line and its quoted fields unambiguous.
fn escape(s: &str) -> String {
    if !s
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b))
    {
        return s.to_string();
    }
    s.bytes()
        .map(|b| match b {
            b'"' => "\\\"".to_string(),
            b'\\' => "\\\\".to_string(),
            0x20..=0x7e => (b as char).to_string(),
            _ => format!("\\x{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(h: &'a HeaderMap, m: &'a Method) -> Entry<'a> {
        Entry {
            peer: "127.0.0.1".parse().unwrap(),
            method: m,
            target: "/a?b=\"c\"",
            version: Version::HTTP_11,
            status: 200,
            bytes: 12,
            headers: h,
            duration: Duration::from_millis(1500),
        }
    }

    #[test]
    fn combined_and_json() {
        let mut h = HeaderMap::new();
        h.insert(http::header::USER_AGENT, "curl/8".parse().unwrap());
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&chrono::Local);
        let line = format_line(AccessLog::Combined, &entry(&h, &Method::GET), now);
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(
            line.ends_with("] \"GET /a?b=\\\"c\\\" HTTP/1.1\" 200 12 \"-\" \"curl/8\" 1.500\n"),
            "{line}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&format_line(AccessLog::Json, &entry(&h, &Method::GET), now))
                .unwrap();
        assert_eq!(json["status"], 200);
        assert_eq!(json["uri"], "/a?b=\"c\"");
        assert_eq!(json["user_agent"], "curl/8");
        assert_eq!(json["duration_ms"], 1500.0);
    }
}
