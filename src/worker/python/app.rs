//! The Python threads: each attaches once, takes requests from the queue (detached while waiting),
//! calls the app and drives its iterable. `close()` is always called.

use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Method;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use super::environ::{Consts, EnvBuilder};
use super::input::Input;
use super::interp::traceback;
use super::response::StartResponse;
use super::streams::FileWrapper;
use crate::worker::child::job::{Input as Source, Job};
use crate::worker::child::queue::JobQueue;
use crate::worker::child::reply::ReplyTx;
use crate::worker::child::server::Shared;

/// The loaded app and the per-process environ constants.
pub struct App {
    pub callable: Py<PyAny>,
    pub consts: Consts,
}

/// One Python thread's loop.
pub fn thread_main(app: Arc<App>, jobs: Arc<JobQueue>, shared: Arc<Shared>) {
    Python::attach(|py| {
        let mut env = EnvBuilder::new();
        loop {
            // Take queued work without giving up the GIL; when there is none, sleep detached until
            // woken as standby, and look at the queue again once the GIL is ours (see `queue`).
            let job = match jobs.try_pop() {
                Some(j) => j,
                None => {
                    py.detach(|| jobs.wait());
                    match jobs.take_as_standby() {
                        Some(j) => j,
                        None => continue,
                    }
                }
            };
            if job.reply.is_closed() {
                continue; // the client left (or got 504) while the request waited
            }
            job.picked_at.store(shared.now_ms(), Ordering::Release);
            shared.busy.fetch_add(1, Ordering::Relaxed);
            serve(py, &app, &mut env, job);
            shared.busy.fetch_sub(1, Ordering::Relaxed);
        }
    });
}

fn serve(py: Python<'_>, app: &App, env: &mut EnvBuilder, mut job: Job) {
    let input = std::mem::replace(&mut job.input, Source::Full(Bytes::new()));
    let reply = std::mem::replace(&mut job.reply, ReplyTx::detached());
    let is_head = job.method == Method::HEAD;
    let result = (|| -> PyResult<(Bound<'_, StartResponse>, PyResult<Bound<'_, PyAny>>)> {
        let sr = Bound::new(py, StartResponse::new(reply, is_head))?;
        let input = Bound::new(py, Input::new(input))?.into_any();
        let environ = env.build(py, &app.consts, &job, input)?;
        let out = app.callable.bind(py).call1((environ, &sr));
        Ok((sr, out))
    })();
    let (sr, out) = match result {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(method = %job.method, path = job.uri.path(), "cannot build the request:\n{}", traceback(py, &e));
            return;
        }
    };
    match out {
        Err(e) => {
            tracing::error!(method = %job.method, path = job.uri.path(), "the app raised:\n{}", traceback(py, &e));
            sr.borrow_mut().fail(py);
        }
        Ok(iterable) => {
            if let Err(e) = drive(py, &sr, &iterable) {
                tracing::error!(method = %job.method, path = job.uri.path(), "error producing the response:\n{}", traceback(py, &e));
                sr.borrow_mut().fail(py);
            }
            // PEP 3333: close() is called whatever happened, also when the client went away.
            // Plain lists and tuples have none; looking it up would raise and discard an AttributeError.
            let plain = iterable.is_exact_instance_of::<PyList>()
                || iterable.is_exact_instance_of::<PyTuple>();
            if !plain
                && let Ok(true) = iterable.hasattr(pyo3::intern!(py, "close"))
                && let Err(e) = iterable.call_method0(pyo3::intern!(py, "close"))
            {
                tracing::error!(
                    path = job.uri.path(),
                    "the app's close() raised:\n{}",
                    traceback(py, &e)
                );
            }
        }
    }
}

fn as_bytes<'a, 'py>(item: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, PyBytes>> {
    item.cast::<PyBytes>().map_err(|_| {
        PyTypeError::new_err(format!(
            "the app's iterable yielded {}, not bytes",
            item.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })
}

/// Sends what the app returned: lists in one piece, real files from Rust, anything else chunk by chunk.
fn drive(py: Python<'_>, sr: &Bound<'_, StartResponse>, it: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(list) = it.cast_exact::<PyList>()
        && list.len() == 1
        && !sr.borrow().head_sent()
    {
        // The common `return [body]`: one copy straight into the reply.
        let item = list.get_item(0)?;
        return sr
            .borrow_mut()
            .finish_full(Bytes::copy_from_slice(as_bytes(&item)?.as_bytes()));
    }
    if it.is_instance_of::<PyList>() || it.is_instance_of::<PyTuple>() {
        let seq = it.try_iter()?.collect::<PyResult<Vec<_>>>()?;
        let mut parts = Vec::with_capacity(seq.len());
        for item in &seq {
            parts.push(as_bytes(item)?.as_bytes());
        }
        let mut sr = sr.borrow_mut();
        if sr.head_sent() {
            for p in parts {
                sr.send_chunk(py, p)?;
            }
            return sr.finish(py);
        }
        let body = match parts.as_slice() {
            [one] => Bytes::copy_from_slice(one),
            _ => Bytes::from(parts.concat()),
        };
        return sr.finish_full(body);
    }
    if let Ok(fw) = it.cast::<FileWrapper>()
        && send_file(py, sr, fw)?
    {
        return Ok(());
    }
    for item in it.try_iter()? {
        let item = item?;
        let b = as_bytes(&item)?;
        let mut s = sr.borrow_mut();
        s.send_chunk(py, b.as_bytes())?;
        if s.done {
            break;
        }
    }
    sr.borrow_mut().finish(py)
}

/// Serves a `wsgi.file_wrapper` over a real file from Rust, without the GIL; false if it is not one.
fn send_file(
    py: Python<'_>,
    sr: &Bound<'_, StartResponse>,
    fw: &Bound<'_, FileWrapper>,
) -> PyResult<bool> {
    let f = fw.borrow().filelike.clone_ref(py);
    let f = f.bind(py);
    let fd: Option<i32> = f.call_method0("fileno").ok().and_then(|x| x.extract().ok());
    let pos: Option<u64> = f.call_method0("tell").ok().and_then(|x| x.extract().ok());
    let (Some(fd), Some(mut pos)) = (fd, pos) else {
        return Ok(false);
    };
    // SAFETY: dup gives this code its own descriptor; the app keeps (and later closes) its own.
    let dup = unsafe { libc::dup(fd) };
    if dup < 0 {
        return Ok(false);
    }
    // SAFETY: `dup` is a fresh descriptor owned by this File.
    let file = unsafe { std::fs::File::from_raw_fd(dup) };
    let size = match file.metadata() {
        Ok(m) if m.is_file() => m.len(),
        _ => return Ok(false),
    };
    let mut s = sr.borrow_mut();
    if !s.has_head() {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "the app did not call start_response",
        ));
    }
    let remaining = size.saturating_sub(pos);
    s.default_content_length(remaining);
    let mut left = s.content_length().map_or(remaining, |cl| cl.min(remaining));
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 && !s.done {
        let want = buf.len().min(left as usize);
        let n = py.detach(|| file.read_at(&mut buf[..want], pos))?;
        if n == 0 {
            break;
        }
        s.send_chunk(py, &buf[..n])?;
        pos += n as u64;
        left -= n as u64;
    }
    s.finish(py)?;
    Ok(true)
}
