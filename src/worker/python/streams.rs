//! `wsgi.errors` (to the log) and `wsgi.file_wrapper`.

use std::sync::Mutex;

use pyo3::prelude::*;

/// `wsgi.errors`: text written by the app goes to the log, one event per line.
#[pyclass(module = "kubewsgi", name = "Errors")]
#[derive(Default)]
pub struct Errors {
    pending: Mutex<String>,
}

#[pymethods]
impl Errors {
    fn write(&self, s: &str) -> usize {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.push_str(s);
        while let Some(i) = p.find('\n') {
            let line: String = p.drain(..=i).collect();
            tracing::warn!(target: "wsgi.errors", "{}", line.trim_end());
        }
        s.len()
    }

    fn writelines(&self, lines: Bound<'_, PyAny>) -> PyResult<()> {
        for l in lines.try_iter()? {
            self.write(l?.extract::<&str>()?);
        }
        Ok(())
    }

    fn flush(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !p.is_empty() {
            tracing::warn!(target: "wsgi.errors", "{}", p.trim_end());
            p.clear();
        }
    }
}

/// `wsgi.file_wrapper(filelike, blksize=8192)`: iterable over the file; served from Rust when it is a real file.
#[pyclass(module = "kubewsgi", name = "FileWrapper")]
pub struct FileWrapper {
    pub filelike: Py<PyAny>,
    pub blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize = 8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> Self {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1("read", (self.blksize,))?;
        Ok((data.len()? > 0).then_some(data))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}
