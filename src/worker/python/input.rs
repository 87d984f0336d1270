//! `wsgi.input`: the request body as a file-like object, streamed from the connection.
//! Waits for body chunks happen detached from the interpreter.

use bytes::{Buf, Bytes, BytesMut};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use tokio::sync::mpsc;

use crate::worker::child::job::{Chunk, Input as Source};

/// The request body stream.
#[pyclass(module = "kubewsgi", name = "Input")]
pub struct Input {
    buf: Bytes,
    rx: Option<mpsc::Receiver<Chunk>>,
}

impl Input {
    pub fn new(src: Source) -> Self {
        match src {
            Source::Full(b) => Input { buf: b, rx: None },
            Source::Stream(rx) => Input {
                buf: Bytes::new(),
                rx: Some(rx),
            },
        }
    }

    /// Fetches the next chunk into `buf`; false at end of body.
    fn fill(&mut self, py: Python<'_>) -> PyResult<bool> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(false);
        };
        match py.detach(|| rx.blocking_recv()) {
            Some(Ok(b)) => {
                self.buf = b;
                Ok(true)
            }
            Some(Err(_)) => {
                self.rx = None;
                Err(PyOSError::new_err(
                    "the request body broke off (the client left, or sent a malformed chunk)",
                ))
            }
            None => {
                self.rx = None;
                Ok(false)
            }
        }
    }

    fn read_bytes(&mut self, py: Python<'_>, size: Option<usize>) -> PyResult<Bytes> {
        let want = size.unwrap_or(usize::MAX);
        if self.buf.len() >= want {
            return Ok(self.buf.split_to(want));
        }
        if self.rx.is_none() {
            return Ok(std::mem::take(&mut self.buf));
        }
        let mut out = BytesMut::from(std::mem::take(&mut self.buf));
        while out.len() < want && self.fill(py)? {
            let take = (want - out.len()).min(self.buf.len());
            out.extend_from_slice(&self.buf.split_to(take));
        }
        Ok(out.freeze())
    }

    fn read_line(&mut self, py: Python<'_>, limit: Option<usize>) -> PyResult<Bytes> {
        let limit = limit.unwrap_or(usize::MAX);
        let mut out = BytesMut::new();
        loop {
            let room = limit - out.len();
            if let Some(i) = self.buf.iter().take(room).position(|&c| c == b'\n') {
                let line = self.buf.split_to(i + 1);
                if out.is_empty() {
                    return Ok(line);
                }
                out.extend_from_slice(&line);
                return Ok(out.freeze());
            }
            let take = self.buf.len().min(room);
            out.extend_from_slice(&self.buf[..take]);
            self.buf.advance(take);
            if out.len() >= limit || !self.fill(py)? {
                return Ok(out.freeze());
            }
        }
    }
}

fn size_arg(n: Option<isize>) -> Option<usize> {
    n.and_then(|n| usize::try_from(n).ok())
}

#[pymethods]
impl Input {
    /// `read(size=-1)`: up to `size` bytes, everything when negative or omitted.
    #[pyo3(signature = (size = None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let b = self.read_bytes(py, size_arg(size))?;
        Ok(PyBytes::new(py, &b))
    }

    /// `readline(limit=-1)`: one line including its newline, at most `limit` bytes.
    #[pyo3(signature = (limit = None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        limit: Option<isize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let b = self.read_line(py, size_arg(limit))?;
        Ok(PyBytes::new(py, &b))
    }

    /// `readlines(hint=-1)`: lines until their total size reaches `hint`.
    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<isize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let hint = size_arg(hint).filter(|&h| h > 0).unwrap_or(usize::MAX);
        let out = PyList::empty(py);
        let mut total = 0;
        loop {
            let line = self.read_line(py, None)?;
            if line.is_empty() {
                break;
            }
            total += line.len();
            out.append(PyBytes::new(py, &line))?;
            if total >= hint {
                break;
            }
        }
        Ok(out)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.read_line(py, None)?;
        Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
    }
}
