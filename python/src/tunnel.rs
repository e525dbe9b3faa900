//! `connect()` and `Tunnel`: both halves of a tunnel as one object,
//! released as a unit (a context manager).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pyo3::prelude::*;
use scistream_client::tunnel::new_uid;
use scistream_client::whole::{self, Gateways};

use crate::errors::{invalid, to_py};
use crate::gateway::{Gateway, Ports, Session, options};
use crate::wait;

/// A whole tunnel: the inbound half at the HPC gateway and the outbound
/// half at the instrument gateway, under one uid. `listeners` are the
/// instrument-facing addresses ("host:port"): where the instrument sends.
///
/// Use it as a context manager: leaving the `with` block (also by an
/// exception) waits for the tunnel's connections to close, at most
/// `drain_timeout` seconds (data still crossing the gateways reaches the
/// receivers), then releases both halves. `release()` does the same by hand.
#[pyclass(frozen, module = "scistream_rs")]
pub(crate) struct Tunnel {
    #[pyo3(get)]
    uid: String,
    #[pyo3(get)]
    listeners: Vec<String>,
    /// The HPC gateway's half.
    #[pyo3(get)]
    inbound: Py<Session>,
    /// The instrument gateway's half.
    #[pyo3(get)]
    outbound: Py<Session>,
    hpc: Py<Gateway>,
    instrument: Py<Gateway>,
    drain_timeout: Duration,
    released: AtomicBool,
}

#[pymethods]
impl Tunnel {
    /// Waits (at most drain_timeout) for the tunnel's connections to close,
    /// then releases both halves; a second call does nothing.
    #[pyo3(signature = (drain=true))]
    fn release(&self, py: Python<'_>, drain: bool) -> PyResult<()> {
        if self.released.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let hpc = self.hpc.get().connection(py)?;
        let instrument = self.instrument.get().connection(py)?;
        let (uid, bound) = (self.uid.clone(), self.drain_timeout);
        wait(py, async move {
            let gateways = Gateways {
                hpc: &hpc,
                instrument: &instrument,
            };
            if drain {
                whole::drained(gateways, &uid, bound).await;
            }
            whole::close(gateways, &uid).await
        })?
        .map_err(to_py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Releases both halves; an exception in the block does not wait for
    /// the connections to drain. Exceptions are not swallowed.
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.release(py, exc_type.is_none())?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("Tunnel(uid='{}', listeners={:?})", self.uid, self.listeners)
    }
}

/// Makes a whole tunnel: the inbound request at `hpc` (listeners forwarding
/// to remote_ip:receiver_ports), then the outbound request at `instrument`
/// (listeners forwarding to those). When the second half fails, the first
/// is released before the error is raised. Returns a Tunnel; use it in a
/// `with` block so that both halves are released in the end.
#[pyfunction]
#[pyo3(signature = (hpc, instrument, remote_ip, receiver_ports, num_conn=5, rate=0, protocol="tcp", drain_timeout=60.0))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn connect(
    py: Python<'_>,
    hpc: Py<Gateway>,
    instrument: Py<Gateway>,
    remote_ip: String,
    receiver_ports: Ports,
    num_conn: u32,
    rate: u32,
    protocol: &str,
    drain_timeout: f64,
) -> PyResult<Tunnel> {
    let options = options(num_conn, rate, protocol)?;
    if !(drain_timeout.is_finite() && drain_timeout >= 0.0) {
        return Err(invalid(
            "drain_timeout must be a number of seconds, 0 or more",
        ));
    }
    let hpc_conn = hpc.get().connection(py)?;
    let inst_conn = instrument.get().connection(py)?;
    let uid = new_uid();
    let ports = receiver_ports.0;
    let t = wait(py, async {
        let gateways = Gateways {
            hpc: &hpc_conn,
            instrument: &inst_conn,
        };
        whole::open(gateways, &uid, &remote_ip, &ports, &options).await
    })?
    .map_err(to_py)?;
    let inbound = Py::new(py, Session::from_tunnel(t.inbound, hpc.clone_ref(py)))?;
    let outbound = Py::new(
        py,
        Session::from_tunnel(t.outbound.clone(), instrument.clone_ref(py)),
    )?;
    Ok(Tunnel {
        uid: t.uid,
        listeners: t.outbound.listeners,
        inbound,
        outbound,
        hpc,
        instrument,
        drain_timeout: Duration::from_secs_f64(drain_timeout),
        released: AtomicBool::new(false),
    })
}
