//! `scistream_rs._native`: the scistream-rs client library (`client/`) as a
//! Python module. Thin: every call goes to the same functions `s2uc` uses,
//! with the same trust handling, token store and config file.
//!
//! Each blocking call releases the GIL and runs on one shared tokio
//! runtime, so the module can be used from several Python threads at once.
#![forbid(unsafe_code)]

mod errors;
mod gateway;
mod tunnel;

use std::future::Future;
use std::sync::OnceLock;

use pyo3::prelude::*;

/// The runtime every call runs on (two worker threads: calls are waits on
/// the network, not work).
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("scistream-rs")
        .enable_all()
        .build()
        .map_err(|e| {
            pyo3::exceptions::PyRuntimeError::new_err(format!(
                "scistream_rs cannot start its I/O threads: {e}"
            ))
        })?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Runs `f` to completion with the GIL released.
fn wait<F>(py: Python<'_>, f: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let rt = runtime()?;
    Ok(py.detach(|| rt.block_on(f)))
}

/// A JSON value as the Python object `json.loads` makes of it.
fn json_to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    let json = py.import("json")?;
    Ok(json.call_method1("loads", (v.to_string(),))?.unbind())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<gateway::Gateway>()?;
    m.add_class::<gateway::Session>()?;
    m.add_class::<tunnel::Tunnel>()?;
    m.add_function(wrap_pyfunction!(tunnel::connect, m)?)?;
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
