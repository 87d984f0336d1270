//! `start_response`, `write()` and the path of the app's status, headers and body to the HTTP side.
//! Status and headers are validated here; chunks are sent detached from the interpreter.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use tokio::sync::mpsc;

use crate::worker::child::job::{BodyBroken, Chunk, Reply, ReplyBody};
use crate::worker::child::reply::ReplyTx;

/// A validated status line and header list.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: StatusCode,
    pub reason: Option<Bytes>,
    pub headers: HeaderMap,
    pub content_length: Option<u64>,
}

/// The `start_response` callable of one request; also owns the way back to the HTTP side.
#[pyclass(module = "kubewsgi", name = "StartResponse")]
pub struct StartResponse {
    head: Option<Head>,
    reply: Option<ReplyTx>,
    stream: Option<mpsc::Sender<Chunk>>,
    is_head_request: bool,
    sent: u64,
    /// The client is gone or the Content-Length is reached: stop producing.
    pub done: bool,
}

/// Encodes a native string as latin-1 (borrowed when it is ASCII); code points above U+00FF are an error.
pub fn to_latin1<'a>(s: &'a Bound<'_, PyString>, what: &str) -> PyResult<Cow<'a, [u8]>> {
    let s = s.to_str()?;
    if s.is_ascii() {
        return Ok(Cow::Borrowed(s.as_bytes()));
    }
    s.chars()
        .map(|c| {
            u8::try_from(c as u32)
                .map_err(|_| PyValueError::new_err(format!("{what} {s:?} is not latin-1")))
        })
        .collect::<PyResult<Vec<u8>>>()
        .map(Cow::Owned)
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// Validates `status` and `headers` as given to `start_response`.
pub fn validate(status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<Head> {
    let status = status.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!("status must be a str, not {}", type_name(status)))
    })?;
    let line = to_latin1(status, "status")?;
    let valid_line = line.len() >= 4
        && line[..3].iter().all(u8::is_ascii_digit)
        && line[3] == b' '
        && line.iter().all(|&c| c >= 0x20 && c != 0x7f);
    let code = std::str::from_utf8(line.get(..3).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse::<u16>().ok());
    let status = match code.and_then(|c| StatusCode::from_u16(c).ok()) {
        Some(s) if valid_line && s.as_u16() >= 200 => s,
        _ => {
            return Err(PyValueError::new_err(format!(
                "invalid status {:?}: expected \"NNN Reason\" with NNN from 200 to 999",
                String::from_utf8_lossy(&line)
            )));
        }
    };
    let reason = &line[4..];
    let reason = (status.canonical_reason().map(str::as_bytes) != Some(reason))
        .then(|| Bytes::copy_from_slice(reason));

    if !headers.is_instance_of::<PyList>() && !headers.is_instance_of::<PyTuple>() {
        return Err(PyTypeError::new_err(format!(
            "headers must be a list of (name, value) tuples, not {}",
            type_name(headers)
        )));
    }
    // Room for the headers the server adds (Server, Connection), so the map is allocated once.
    let mut map = HeaderMap::with_capacity(headers.len()? + 2);
    let mut content_length = None;
    for item in headers.try_iter()? {
        let item = item?;
        let pair = item.cast::<PyTuple>().map_err(|_| {
            PyTypeError::new_err(format!("header {item} is not a (name, value) tuple"))
        })?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err(format!(
                "header {pair} is not a (name, value) tuple"
            )));
        }
        let (n, v) = (pair.get_item(0)?, pair.get_item(1)?);
        let (Ok(n), Ok(v)) = (n.cast::<PyString>(), v.cast::<PyString>()) else {
            return Err(PyTypeError::new_err(format!(
                "header {pair}: name and value must be str"
            )));
        };
        let nb = to_latin1(n, "header name")?;
        let name = HeaderName::from_bytes(&nb).map_err(|_| {
            PyValueError::new_err(format!(
                "invalid header name {:?}",
                String::from_utf8_lossy(&nb)
            ))
        })?;
        let vb = to_latin1(v, "header value")?;
        let value = HeaderValue::from_bytes(&vb).map_err(|_| {
            PyValueError::new_err(format!(
                "invalid value for header {name}: {:?}",
                String::from_utf8_lossy(&vb)
            ))
        })?;
        if HOP_BY_HOP.contains(&name.as_str()) {
            // Connection management belongs to the server; `Connection: close` is honoured, the rest dropped.
            if name == header::CONNECTION && vb.eq_ignore_ascii_case(b"close") {
                map.insert(header::CONNECTION, value);
            } else {
                tracing::debug!(header = %name, "dropping hop-by-hop header set by the app");
            }
            continue;
        }
        if name == header::CONTENT_LENGTH {
            let n: u64 = std::str::from_utf8(&vb)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "invalid Content-Length {:?}",
                        String::from_utf8_lossy(&vb)
                    ))
                })?;
            if content_length.is_some_and(|c| c != n) {
                return Err(PyValueError::new_err("conflicting Content-Length headers"));
            }
            if content_length.is_some() {
                continue;
            }
            content_length = Some(n);
        }
        map.append(name, value);
    }
    Ok(Head {
        status,
        reason,
        headers: map,
        content_length,
    })
}

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

impl StartResponse {
    pub fn new(reply: ReplyTx, is_head_request: bool) -> Self {
        StartResponse {
            head: None,
            reply: Some(reply),
            stream: None,
            is_head_request,
            sent: 0,
            done: false,
        }
    }

    pub fn head_sent(&self) -> bool {
        self.reply.is_none()
    }

    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Content-Length set by the app, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.head.as_ref().and_then(|h| h.content_length)
    }

    /// Sets Content-Length when the server knows the size and the app left it out.
    pub fn default_content_length(&mut self, n: u64) {
        if let Some(h) = self
            .head
            .as_mut()
            .filter(|h| h.content_length.is_none() && self.reply.is_some())
        {
            h.content_length = Some(n);
            h.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }

    fn body_allowed(&self) -> bool {
        let s = self.head.as_ref().map_or(StatusCode::OK, |h| h.status);
        !self.is_head_request && s != StatusCode::NO_CONTENT && s != StatusCode::NOT_MODIFIED
    }

    /// The head to send; status and Content-Length stay behind for the body checks.
    fn take_head(&mut self) -> PyResult<Head> {
        let h = self
            .head
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("the app did not call start_response"))?;
        Ok(Head {
            status: h.status,
            reason: h.reason.take(),
            headers: std::mem::take(&mut h.headers),
            content_length: h.content_length,
        })
    }

    /// Cuts `data` to what Content-Length still allows.
    fn allowed<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        match self.content_length() {
            Some(cl) => {
                let room = cl.saturating_sub(self.sent) as usize;
                if data.len() >= room {
                    if data.len() > room {
                        tracing::warn!(
                            content_length = cl,
                            "the app sent more than its Content-Length; the rest is dropped"
                        );
                    }
                    self.done = true;
                }
                &data[..room.min(data.len())]
            }
            None => data,
        }
    }

    /// Sends one body chunk, the headers first if they are not out yet.
    pub fn send_chunk(&mut self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        if data.is_empty() || self.done {
            return Ok(());
        }
        if !self.body_allowed() {
            if !self.head_sent() {
                self.finish_full(Bytes::new())?;
            }
            return Ok(());
        }
        let data = Bytes::copy_from_slice(self.allowed(data));
        if self.done && !self.head_sent() {
            // The first chunk completes the declared Content-Length: nothing can follow it, so it
            // goes out as one whole reply, without a stream to the HTTP thread.
            return self.finish_full(data);
        }
        if let Some(reply) = self.reply.take() {
            let head = self.take_head()?;
            let (tx, rx) = mpsc::channel(4);
            self.sent += data.len() as u64;
            let _ = tx.try_send(Ok(data));
            self.stream = Some(tx);
            let r = Reply {
                status: head.status,
                reason: head.reason,
                headers: head.headers,
                body: ReplyBody::Stream(rx),
            };
            if reply.send(r).is_err() {
                self.done = true;
            }
            return Ok(());
        }
        self.sent += data.len() as u64;
        if let Some(tx) = &self.stream
            && py.detach(|| tx.blocking_send(Ok(data))).is_err()
        {
            self.done = true;
        }
        Ok(())
    }

    /// The whole body in one piece (nothing sent yet): one reply, no streaming.
    pub fn finish_full(&mut self, data: Bytes) -> PyResult<()> {
        let Some(reply) = self.reply.take() else {
            return Ok(());
        };
        let head = self.take_head()?;
        let allowed = self.body_allowed();
        let (data, short) = match head.content_length {
            _ if !allowed => (Bytes::new(), false),
            Some(cl) if (data.len() as u64) > cl => {
                tracing::warn!(
                    content_length = cl,
                    "the app sent more than its Content-Length; the rest is dropped"
                );
                (data.slice(..cl as usize), false)
            }
            Some(cl) => {
                let short = (data.len() as u64) < cl;
                if short {
                    tracing::warn!(
                        content_length = cl,
                        sent = data.len(),
                        "the app sent less than its Content-Length; closing the connection"
                    );
                }
                (data, short)
            }
            None => (data, false),
        };
        self.done = true;
        let _ = reply.send(Reply {
            status: head.status,
            reason: head.reason,
            headers: head.headers,
            body: ReplyBody::Full { data, short },
        });
        Ok(())
    }

    /// The app's iterable is exhausted.
    pub fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        if !self.head_sent() {
            return self.finish_full(Bytes::new());
        }
        if let Some(tx) = self.stream.take()
            && self.body_allowed()
            && self.content_length().is_some_and(|cl| self.sent < cl)
        {
            tracing::warn!(
                sent = self.sent,
                "the app sent less than its Content-Length; closing the connection"
            );
            let _ = py.detach(|| tx.blocking_send(Err(BodyBroken)));
        }
        self.done = true;
        Ok(())
    }

    /// Something failed: 500 if nothing is out yet, otherwise the connection is cut.
    pub fn fail(&mut self, py: Python<'_>) {
        self.done = true;
        if let Some(reply) = self.reply.take() {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            let body = Bytes::from_static(b"Internal Server Error\n");
            let _ = reply.send(Reply {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                reason: None,
                headers,
                body: ReplyBody::Full {
                    data: body,
                    short: false,
                },
            });
        } else if let Some(tx) = self.stream.take() {
            let _ = py.detach(|| tx.blocking_send(Err(BodyBroken)));
        }
    }
}

#[pymethods]
impl StartResponse {
    /// `start_response(status, headers, exc_info=None)`; returns the `write` callable.
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__<'py>(
        slf: Bound<'py, Self>,
        status: Bound<'py, PyAny>,
        headers: Bound<'py, PyAny>,
        exc_info: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let exc = exc_info.filter(|e| !e.is_none());
        {
            let this = slf.borrow();
            match &exc {
                // After the headers went out the app's error cannot be reported any more: re-raise it.
                Some(e) if this.head_sent() => return Err(PyErr::from_value(e.get_item(1)?)),
                Some(_) => {}
                None if this.head.is_some() => {
                    return Err(PyRuntimeError::new_err(
                        "start_response called a second time without exc_info",
                    ));
                }
                None => {}
            }
        }
        let head = validate(&status, &headers)?;
        slf.borrow_mut().head = Some(head);
        slf.getattr(pyo3::intern!(slf.py(), "write"))
    }

    /// The legacy `write(data)` callable: sends `data` at once.
    fn write(&mut self, py: Python<'_>, data: Bound<'_, PyAny>) -> PyResult<()> {
        let b = data.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!("write() takes bytes, not {}", type_name(&data)))
        })?;
        if self.head.is_none() {
            return Err(PyRuntimeError::new_err(
                "write() called before start_response",
            ));
        }
        self.send_chunk(py, b.as_bytes())
    }
}
