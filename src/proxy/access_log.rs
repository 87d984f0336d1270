//! Access log on stdout, combined or JSON. Requests append their line to a shared buffer; one
//! writer thread empties it a few milliseconds after it stops being empty, so under load one
//! wake-up and one write(2) carry hundreds of lines and no request ever waits on stdout.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Version};

use super::config::AccessLog;
use super::forwarded::peer_text;

/// How long the writer lets lines gather after the first one arrives.
const GATHER: Duration = Duration::from_millis(20);
/// Lines beyond this many buffered bytes (stdout blocked) are dropped and counted.
const MAX_BUFFERED: usize = 8 << 20;

/// What is logged about one request.
pub struct Entry<'a> {
    pub peer: IpAddr,
    pub method: &'a Method,
    pub target: &'a str,
    pub version: Version,
    pub status: u16,
    pub bytes: u64,
    pub referer: Option<&'a HeaderValue>,
    pub user_agent: Option<&'a HeaderValue>,
    pub host: Option<&'a HeaderValue>,
    pub duration: Duration,
}

/// Appends access log lines to the buffer the writer thread empties.
#[derive(Clone)]
pub struct AccessLogger {
    format: AccessLog,
    shared: Arc<Buffer>,
}

#[derive(Default)]
struct Buffer {
    lines: Mutex<Vec<u8>>,
    filled: Condvar,
    dropped: AtomicU64,
    /// Serialises writes to stdout between the writer thread and [`AccessLogger::flush`].
    out: Mutex<()>,
}

impl Buffer {
    /// Writes whatever is buffered; `spare` is reused as the next buffer.
    fn write_out(&self, spare: &mut Vec<u8>) {
        let _out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *lines, spare);
        }
        if !spare.is_empty() {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(spare);
            let _ = stdout.flush();
            spare.clear();
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "stdout is not keeping up: access log lines dropped"
            );
        }
    }
}

impl AccessLogger {
    /// Starts the writer thread; `None` for `--access-log off`.
    pub fn start(format: AccessLog) -> Option<Self> {
        if format == AccessLog::Off {
            return None;
        }
        let shared = Arc::new(Buffer::default());
        let buf = shared.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut spare = Vec::with_capacity(64 * 1024);
                loop {
                    {
                        let lines = buf.lines.lock().unwrap_or_else(|e| e.into_inner());
                        let _lines = buf
                            .filled
                            .wait_while(lines, |l| l.is_empty())
                            .unwrap_or_else(|e| e.into_inner());
                    }
                    std::thread::sleep(GATHER);
                    buf.write_out(&mut spare);
                }
            })
            .ok()?;
        Some(Self { format, shared })
    }

    /// Logs one request.
    pub fn log(&self, e: &Entry<'_>) {
        LINE.with_borrow_mut(|line| {
            line.clear();
            format_line(line, self.format, e, SystemTime::now());
            let mut lines = self.shared.lines.lock().unwrap_or_else(|e| e.into_inner());
            if lines.len() + line.len() > MAX_BUFFERED {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let was_empty = lines.is_empty();
            lines.extend_from_slice(line.as_bytes());
            drop(lines);
            // Only the first line after a write wakes the writer; the rest just append.
            if was_empty {
                self.shared.filled.notify_one();
            }
        });
    }

    /// Writes every buffered line now (on shutdown).
    pub fn flush(&self) {
        self.shared.write_out(&mut Vec::new());
    }
}

thread_local! {
    /// The line being formatted, reused across requests of a runtime thread.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
    /// The formatted timestamp of the current second (the unix second and its text).
    static CLOCK: RefCell<Clock> = RefCell::new(Clock::default());
}

/// Timestamps formatted once per second: the date, time and offset do not change within it.
#[derive(Default)]
struct Clock {
    second: Option<u64>,
    /// `25/Nov/2026:18:09:14 +0000`
    combined: String,
    /// `2026-11-25T18:09:14` and `+00:00`, the milliseconds go between.
    iso: String,
    offset: String,
}

impl Clock {
    fn at(&mut self, now: SystemTime) -> u32 {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.second != Some(second) {
            let t: chrono::DateTime<chrono::Local> =
                (UNIX_EPOCH + Duration::from_secs(second)).into();
            self.combined.clear();
            let _ = write!(self.combined, "{}", t.format("%d/%b/%Y:%H:%M:%S %z"));
            self.iso.clear();
            let _ = write!(self.iso, "{}", t.format("%Y-%m-%dT%H:%M:%S"));
            self.offset.clear();
            let _ = write!(self.offset, "{}", t.format("%:z"));
            self.second = Some(second);
        }
        since.subsec_millis()
    }
}

fn text(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn format_line(out: &mut String, format: AccessLog, e: &Entry<'_>, now: SystemTime) {
    let referer = text(e.referer);
    let agent = text(e.user_agent);
    CLOCK.with_borrow_mut(|clock| {
        let millis = clock.at(now);
        match format {
            AccessLog::Json => {
                let line = serde_json::json!({
                    "time": format!("{}.{millis:03}{}", clock.iso, clock.offset),
                    "remote_addr": text(Some(&peer_text(e.peer))),
                    "method": e.method.as_str(),
                    "uri": e.target,
                    "protocol": format!("{:?}", e.version),
                    "status": e.status,
                    "bytes": e.bytes,
                    "duration_ms": (e.duration.as_secs_f64() * 1e6).round() / 1e3,
                    "referer": referer,
                    "user_agent": agent,
                    "host": text(e.host),
                });
                let _ = write!(out, "{line}");
            }
            _ => {
                let _ = write!(
                    out,
                    "{} - - [{}] \"{} ",
                    text(Some(&peer_text(e.peer))),
                    clock.combined,
                    e.method
                );
                push_escaped(out, e.target);
                let _ = write!(out, " {:?}\" {} {} \"", e.version, e.status, e.bytes);
                push_field(out, referer);
                out.push_str("\" \"");
                push_field(out, agent);
                // Seconds with milliseconds, from integers: float formatting costs more than
                // the rest of the line.
                let ms = e.duration.as_millis();
                let _ = write!(out, "\" {}.{:03}", ms / 1000, ms % 1000);
            }
        }
        out.push('\n');
    });
}

/// A quoted field: `-` when empty.
fn push_field(out: &mut String, s: &str) {
    if s.is_empty() {
        out.push('-');
    } else {
        push_escaped(out, s);
    }
}

/// Keeps a log line one line and its quoted fields unambiguous.
fn push_escaped(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(ua: &'a HeaderValue, m: &'a Method) -> Entry<'a> {
        Entry {
            peer: "127.0.0.1".parse().unwrap(),
            method: m,
            target: "/a?b=\"c\"",
            version: Version::HTTP_11,
            status: 200,
            bytes: 12,
            referer: None,
            user_agent: Some(ua),
            host: None,
            duration: Duration::from_millis(1500),
        }
    }

    fn line(format: AccessLog, e: &Entry<'_>, now: SystemTime) -> String {
        let mut out = String::new();
        format_line(&mut out, format, e, now);
        out
    }

    #[test]
    fn combined_and_json() {
        let ua = HeaderValue::from_static("curl/8");
        let now = UNIX_EPOCH + Duration::from_millis(1_767_323_045_250);
        let l = line(AccessLog::Combined, &entry(&ua, &Method::GET), now);
        assert!(l.starts_with("127.0.0.1 - - ["), "{l}");
        assert!(
            l.ends_with("] \"GET /a?b=\\\"c\\\" HTTP/1.1\" 200 12 \"-\" \"curl/8\" 1.500\n"),
            "{l}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&line(AccessLog::Json, &entry(&ua, &Method::GET), now)).unwrap();
        assert_eq!(json["status"], 200);
        assert_eq!(json["uri"], "/a?b=\"c\"");
        assert_eq!(json["user_agent"], "curl/8");
        assert_eq!(json["duration_ms"], 1500.0);
    }

    #[test]
    fn cached_timestamps_match_the_clock_across_seconds() {
        let ua = HeaderValue::from_static("x");
        for ms in [1_767_323_045_250u64, 1_767_323_045_999, 1_767_323_046_001] {
            let now = UNIX_EPOCH + Duration::from_millis(ms);
            let t: chrono::DateTime<chrono::Local> = now.into();
            let l = line(AccessLog::Combined, &entry(&ua, &Method::GET), now);
            let want = t.format("[%d/%b/%Y:%H:%M:%S %z]").to_string();
            assert!(l.contains(&want), "{l} lacks {want}");
            let json: serde_json::Value =
                serde_json::from_str(&line(AccessLog::Json, &entry(&ua, &Method::GET), now))
                    .unwrap();
            assert_eq!(
                json["time"],
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
            );
        }
    }

    #[test]
    fn lines_gather_in_the_buffer_and_beyond_its_bound_are_counted_as_dropped() {
        // No writer thread: the lines stay where requests put them.
        let log = AccessLogger {
            format: AccessLog::Combined,
            shared: Arc::new(Buffer::default()),
        };
        let ua = HeaderValue::from_static("x");
        log.log(&entry(&ua, &Method::GET));
        log.log(&entry(&ua, &Method::POST));
        let text = String::from_utf8(log.shared.lines.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("\"POST /a"), "{text}");
        log.shared.lines.lock().unwrap().resize(MAX_BUFFERED, b'.');
        log.log(&entry(&ua, &Method::GET));
        assert_eq!(log.shared.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(log.shared.lines.lock().unwrap().len(), MAX_BUFFERED);
    }

    #[test]
    fn control_bytes_are_escaped() {
        let mut out = String::new();
        push_escaped(&mut out, "a\"b\\c\u{7f}\n");
        assert_eq!(out, "a\\\"b\\\\c\\x7F\\x0A");
    }
}
