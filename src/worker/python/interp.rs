//! Starting the embedded interpreter (venv, no signal handlers) and importing the app.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyModule;

/// Initialises CPython the way `VENV/bin/python` would start (so the venv's packages import),
/// without Python's signal handlers and with unbuffered stdio for container logs.
pub fn initialize(venv: Option<&Path>) -> Result<(), String> {
    // SAFETY: PyConfig is initialised by PyConfig_InitPythonConfig before any field is read,
    // strings are copied by PyConfig_SetBytesString, and the config is cleared after use.
    unsafe {
        if ffi::Py_IsInitialized() != 0 {
            return Ok(());
        }
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let mut config = config.assume_init();
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        config.buffered_stdio = 0;
        let cfg: *mut ffi::PyConfig = &raw mut config;
        let set = move |field: *mut *mut libc::wchar_t, value: &[u8]| -> Result<(), String> {
            let c = CString::new(value).map_err(|_| "NUL byte in a path".to_string())?;
            status(ffi::PyConfig_SetBytesString(cfg, field, c.as_ptr()))
        };
        if let Some(v) = venv {
            let exe = v.join("bin").join("python");
            set(&raw mut (*cfg).executable, exe.as_os_str().as_bytes())?;
        }
        set(&raw mut (*cfg).program_name, b"kubewsgi")?;
        let argv0 = CString::new("kubewsgi").unwrap_or_default();
        let mut argv = [argv0.as_ptr()];
        status(ffi::PyConfig_SetBytesArgv(
            &mut config,
            1,
            argv.as_mut_ptr(),
        ))?;
        let st = ffi::Py_InitializeFromConfig(&config);
        ffi::PyConfig_Clear(&mut config);
        status(st)?;
        // The interpreter starts attached to this thread; release it so `Python::attach` works anywhere.
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

fn status(st: ffi::PyStatus) -> Result<(), String> {
    // SAFETY: PyStatus_Exception only reads the status value.
    if unsafe { ffi::PyStatus_Exception(st) } == 0 {
        return Ok(());
    }
    let msg = if st.err_msg.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: err_msg is a static C string set by CPython.
        unsafe { std::ffi::CStr::from_ptr(st.err_msg) }
            .to_string_lossy()
            .into_owned()
    };
    Err(format!("Python initialisation failed: {msg}"))
}

/// Imports the app named by `spec` with `dir` first on `sys.path`; the error is a full traceback.
pub fn load_app(py: Python<'_>, spec: &str, dir: &Path) -> Result<Py<PyAny>, String> {
    let (module, attr) = crate::worker::config::split_app(spec)?;
    let run = || -> PyResult<Py<PyAny>> {
        let sys = py.import("sys")?;
        sys.getattr("path")?
            .call_method1("insert", (0, dir.to_string_lossy()))?;
        let loader = PyModule::from_code(
            py,
            c_str(include_str!("loader.py")).as_c_str(),
            c"<kubewsgi loader>",
            c"_kubewsgi_loader",
        )?;
        Ok(loader.getattr("load")?.call1((module, attr))?.unbind())
    };
    run().map_err(|e| traceback(py, &e))
}

fn c_str(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// The exception with its traceback, formatted as Python prints it.
pub fn traceback(py: Python<'_>, e: &PyErr) -> String {
    let formatted = py
        .import("traceback")
        .and_then(|tb| {
            tb.call_method1(
                "format_exception",
                (e.get_type(py), e.value(py), e.traceback(py)),
            )
        })
        .and_then(|lines| {
            let parts: Vec<String> = lines.extract()?;
            Ok(parts.concat())
        });
    match formatted {
        Ok(s) => s.trim_end().to_string(),
        Err(_) => e.to_string(),
    }
}
