//! A strict reader of the few gauges the autoscaler needs from Prometheus/OpenMetrics text.
//!
//! Only the lines of the wanted metrics are parsed (and must be well-formed); every other line
//! is skipped unread, so histograms, exemplars or new metrics elsewhere never break a scrape.

use super::{Error, Result};

/// Requests waiting for a worker slot.
pub const QUEUE_DEPTH: &str = "kubewsgi_queue_depth";
/// Requests holding a worker slot.
pub const INFLIGHT: &str = "kubewsgi_inflight_requests";
/// Worker slots now.
pub const CAPACITY: &str = "kubewsgi_worker_capacity";
/// Worker slots at the in-pod autoscaler's maximum.
pub const MAX_CAPACITY: &str = "kubewsgi_worker_max_capacity";

/// The autoscaling gauges of one pod, each summed over its label sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gauges {
    pub queue_depth: f64,
    pub inflight: f64,
    pub capacity: f64,
    /// `None` when the pod does not export it.
    pub max_capacity: Option<f64>,
}

const WANTED: [&str; 4] = [QUEUE_DEPTH, INFLIGHT, CAPACITY, MAX_CAPACITY];

/// Reads the autoscaling gauges; the first three are required.
pub fn parse_gauges(text: &str) -> Result<Gauges> {
    let mut sums: [Option<f64>; 4] = [None; 4];
    for (idx, line) in text.lines().enumerate() {
        let lineno = idx + 1;
        let line = line.trim_end_matches('\r');
        if let Some(comment) = line.strip_prefix('#') {
            check_type_line(comment, lineno)?;
            continue;
        }
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let Some(slot) = WANTED.iter().position(|w| *w == &line[..name_end]) else {
            continue;
        };
        let value = sample_value(&line[name_end..], lineno)?;
        *sums[slot].get_or_insert(0.0) += value;
    }
    let need = |slot: usize| sums[slot].ok_or(Error::MissingMetric(WANTED[slot]));
    Ok(Gauges {
        queue_depth: need(0)?,
        inflight: need(1)?,
        capacity: need(2)?,
        max_capacity: sums[3],
    })
}

/// A `# TYPE` line for a wanted metric must say gauge; anything else would be misread.
fn check_type_line(comment: &str, lineno: usize) -> Result<()> {
    let mut words = comment.split_whitespace();
    if words.next() != Some("TYPE") {
        return Ok(());
    }
    let (Some(name), Some(kind)) = (words.next(), words.next()) else {
        return Ok(());
    };
    if WANTED.contains(&name) && kind != "gauge" {
        return Err(parse_err(
            lineno,
            format!("{name} is declared {kind}, expected gauge"),
        ));
    }
    Ok(())
}

/// Parses `{labels} value [timestamp]` after a wanted metric's name.
fn sample_value(rest: &str, lineno: usize) -> Result<f64> {
    let rest = match rest.strip_prefix('{') {
        Some(labels) => skip_labels(labels, lineno)?,
        None => rest,
    };
    let mut fields = rest.split_whitespace();
    let raw = fields
        .next()
        .ok_or_else(|| parse_err(lineno, "sample has no value".into()))?;
    if let Some(ts) = fields.next() {
        ts.parse::<f64>()
            .map_err(|_| parse_err(lineno, format!("bad timestamp {ts:?}")))?;
    }
    if let Some(extra) = fields.next() {
        return Err(parse_err(
            lineno,
            format!("unexpected {extra:?} after the value"),
        ));
    }
    let value: f64 = raw
        .parse()
        .map_err(|_| parse_err(lineno, format!("bad value {raw:?}")))?;
    if !value.is_finite() || value < 0.0 {
        return Err(parse_err(
            lineno,
            format!("value {raw} is not a finite count ≥ 0"),
        ));
    }
    Ok(value)
}

/// Skips a label set up to its closing brace, honouring quoted values with escapes.
fn skip_labels(s: &str, lineno: usize) -> Result<&str> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (in_quotes, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => in_quotes = !in_quotes,
            (false, _, '}') => return Ok(&s[i + 1..]),
            _ => {}
        }
    }
    Err(parse_err(lineno, "unterminated label set".into()))
}

fn parse_err(line: usize, message: String) -> Error {
    Error::Parse { line, message }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
    use prometheus_client::registry::Registry;

    use super::*;

    /// Text as the real `prometheus-client` encoder writes it, with the proxy's metric names.
    fn encoded(max_capacity: Option<i64>, labelled_queue: bool) -> String {
        let mut registry = Registry::default();
        let inflight = Gauge::<i64>::default();
        inflight.set(3);
        let capacity = Gauge::<i64>::default();
        capacity.set(4);
        let hist = Histogram::new(exponential_buckets(0.001, 2.0, 4));
        hist.observe(0.003);
        registry.register("kubewsgi_request_duration_seconds", "Latency", hist);
        if labelled_queue {
            let queue = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
            queue
                .get_or_create(&vec![("pool".into(), "a\"}b".into())])
                .set(2.5);
            queue
                .get_or_create(&vec![("pool".into(), "c".into())])
                .set(1.5);
            registry.register("kubewsgi_queue_depth", "Waiting requests", queue);
        } else {
            let queue = Gauge::<i64>::default();
            queue.set(7);
            registry.register("kubewsgi_queue_depth", "Waiting requests", queue);
        }
        registry.register("kubewsgi_inflight_requests", "Running requests", inflight);
        registry.register("kubewsgi_worker_capacity", "Worker slots", capacity);
        if let Some(m) = max_capacity {
            let g = Gauge::<i64>::default();
            g.set(m);
            registry.register("kubewsgi_worker_max_capacity", "Max worker slots", g);
        }
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn reads_gauges_encoded_by_prometheus_client() {
        let text = encoded(Some(8), false);
        assert!(text.contains("# TYPE kubewsgi_queue_depth gauge"), "{text}");
        let g = parse_gauges(&text).unwrap();
        assert_eq!(
            g,
            Gauges {
                queue_depth: 7.0,
                inflight: 3.0,
                capacity: 4.0,
                max_capacity: Some(8.0)
            }
        );
    }

    #[test]
    fn sums_label_sets_and_survives_quoted_braces() {
        let g = parse_gauges(&encoded(None, true)).unwrap();
        assert_eq!(g.queue_depth, 4.0);
        assert_eq!(g.max_capacity, None);
    }

    #[test]
    fn missing_required_gauge_is_an_error() {
        let text = "kubewsgi_queue_depth 1\nkubewsgi_worker_capacity 2\n";
        let err = parse_gauges(text).unwrap_err();
        assert!(matches!(err, Error::MissingMetric(INFLIGHT)), "{err}");
    }

    #[test]
    fn similar_names_are_not_taken_for_wanted_ones() {
        let text = "kubewsgi_queue_depth_total 9\nkubewsgi_queue_depth 1\n\
                    kubewsgi_inflight_requests 0\nkubewsgi_worker_capacity 2 1700000000000\n";
        let g = parse_gauges(text).unwrap();
        assert_eq!((g.queue_depth, g.capacity), (1.0, 2.0));
    }

    #[test]
    fn malformed_wanted_lines_are_refused_with_their_line() {
        for (text, line) in [
            ("kubewsgi_queue_depth\n", 1),
            ("x 1\nkubewsgi_queue_depth abc\n", 2),
            ("kubewsgi_queue_depth -1\n", 1),
            ("kubewsgi_queue_depth NaN\n", 1),
            ("kubewsgi_queue_depth{a=\"b\" 1\n", 1),
            ("kubewsgi_queue_depth 1 2 3\n", 1),
            ("# TYPE kubewsgi_inflight_requests counter\n", 1),
        ] {
            match parse_gauges(text) {
                Err(Error::Parse { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unwanted_lines_are_not_judged() {
        let text = "weird{{{ line\nkubewsgi_queue_depth 0\nkubewsgi_inflight_requests 0\n\
                    kubewsgi_worker_capacity 1\n# EOF\n";
        assert_eq!(parse_gauges(text).unwrap().capacity, 1.0);
    }
}
