//! The embedded interpreter of a worker process: start-up, app loading, the WSGI objects
//! (`environ`, `wsgi.input`, `start_response`, `wsgi.errors`, `wsgi.file_wrapper`) and the Python threads.

pub mod app;
pub mod environ;
pub mod input;
pub mod interp;
pub mod response;
pub mod streams;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use pyo3::prelude::*;

use self::app::App;
use self::environ::Consts;
use super::child::server::Shared;
use super::{Result, WorkerOpts};

/// Starts CPython and imports the app; the error is the traceback to report.
pub fn boot(opts: &WorkerOpts, multiprocess: bool) -> Result<Arc<App>, String> {
    // A relative --venv names a directory as seen from where kubewsgi was started, as for
    // `python`: resolve it before --chdir moves us.
    let venv = match &opts.venv {
        Some(v) => {
            Some(std::path::absolute(v).map_err(|e| format!("--venv {}: {e}", v.display()))?)
        }
        None => None,
    };
    let dir = match &opts.chdir {
        Some(d) => {
            std::env::set_current_dir(d).map_err(|e| format!("--chdir {}: {e}", d.display()))?;
            std::env::current_dir().map_err(|e| e.to_string())?
        }
        None => std::env::current_dir().map_err(|e| e.to_string())?,
    };
    interp::initialize(venv.as_deref())?;
    Python::attach(|py| {
        let callable = interp::load_app(py, &opts.app, &dir)?;
        let errors = Py::new(py, streams::Errors::default())
            .map_err(|e| interp::traceback(py, &e))?
            .into_any();
        let wrapper = py.get_type::<streams::FileWrapper>().into_any().unbind();
        let consts = Consts::new(py, errors, wrapper, opts.threads > 1, multiprocess)
            .map_err(|e| interp::traceback(py, &e))?;
        Ok(Arc::new(App { callable, consts }))
    })
}

/// Starts the Python threads serving `jobs`.
pub fn spawn_threads(
    app: Arc<App>,
    n: u32,
    jobs: Arc<super::child::queue::JobQueue>,
    shared: Arc<Shared>,
) -> Result<()> {
    for i in 0..n {
        let (app, jobs, shared) = (app.clone(), jobs.clone(), shared.clone());
        std::thread::Builder::new()
            .name(format!("kubewsgi-py-{i}"))
            .spawn(move || app::thread_main(app, jobs, shared))?;
    }
    Ok(())
}

/// Flushes Python's stdout/stderr before the process exits without finalising the interpreter;
/// gives up after a second, because a stuck app thread may never release the GIL.
pub fn flush_stdio() {
    at_exit(false, std::time::Duration::from_secs(1));
}

/// What a Python process does on a normal exit, short of finalising the interpreter (app threads
/// may still be inside the app): runs the `atexit` handlers (log and metric flushers, as under
/// gunicorn), then flushes stdout/stderr. Gives up after `limit`, since a stuck app thread may
/// never release the GIL.
pub fn exit_handlers(limit: std::time::Duration) {
    at_exit(true, limit);
}

fn at_exit(handlers: bool, limit: std::time::Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("kubewsgi-exit".into())
        .spawn(move || {
            Python::try_attach(|py| {
                if handlers {
                    // Exceptions inside handlers are printed by atexit itself, as at a normal exit.
                    let run = py
                        .import("atexit")
                        .and_then(|m| m.call_method0("_run_exitfuncs"));
                    if let Err(e) = run {
                        e.print(py);
                    }
                }
                if let Ok(sys) = py.import("sys") {
                    for s in ["stdout", "stderr"] {
                        let _ = sys.getattr(s).and_then(|f| f.call_method0("flush"));
                    }
                }
            });
            let _ = tx.send(());
        });
    if spawned.is_ok() {
        let _ = rx.recv_timeout(limit);
    }
}
