//! `Gateway` (one S2CS, its trust and token) and `Session` (one half of a
//! tunnel on one gateway).

use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::prelude::*;
use scistream_client::auth::store::TokenStore;
use scistream_client::config::ClientConfig;
use scistream_client::tunnel::{self, RequestOptions};
use scistream_client::{Auth, ClientError, Connection, Trust};
use scistream_protocol::Protocol;

use crate::errors::{invalid, to_py};
use crate::{json_to_py, wait};

/// One gateway's control server (S2CS).
///
/// Gateway(address, server_cert=None, scope=None, token=None, insecure=False)
///
/// address: "host:port" of the S2CS.
/// server_cert: PEM file to verify it with (its certificate or its CA);
///     default: the config file's `server_cert` (~/.config/scistream/s2uc.toml).
/// scope: whose stored token (from `s2uc login --scope`) to send; default:
///     the config file's map for this host; without one, no token.
/// token: a bearer token to send instead of a stored one (never shown).
/// insecure: talk without TLS to an `s2cs --insecure` (development only).
///
/// The connection is made at the first call and reused; a Gateway can be
/// shared between threads.
#[pyclass(frozen, module = "scistream_rs")]
pub(crate) struct Gateway {
    address: String,
    trust: Trust,
    scope: Option<String>,
    token: Option<String>,
    conn: Mutex<Option<Connection>>,
}

#[pymethods]
impl Gateway {
    #[new]
    #[pyo3(signature = (address, server_cert=None, scope=None, token=None, insecure=false))]
    fn new(
        address: String,
        server_cert: Option<PathBuf>,
        scope: Option<String>,
        token: Option<String>,
        insecure: bool,
    ) -> PyResult<Gateway> {
        let trust = if insecure {
            Trust::Insecure
        } else {
            let config = ClientConfig::load(None).map_err(to_py)?;
            let Some(path) = server_cert.or(config.server_cert) else {
                return Err(invalid(format!(
                    "no certificate to verify {address} with: give server_cert= (the gateway's certificate or its CA), \
                     or set server_cert in ~/.config/scistream/s2uc.toml"
                )));
            };
            if let Err(e) = std::fs::read(&path) {
                return Err(to_py(ClientError::TrustRoot {
                    path,
                    reason: e.to_string(),
                }));
            }
            Trust::Root(path)
        };
        Ok(Gateway {
            address,
            trust,
            scope,
            token,
            conn: Mutex::new(None),
        })
    }

    /// "host:port" of the gateway's control server.
    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    fn __repr__(&self) -> String {
        let trust = match &self.trust {
            Trust::Root(p) => format!("server_cert='{}'", p.display()),
            Trust::Insecure => "insecure=True".into(),
        };
        format!("Gateway('{}', {trust})", self.address)
    }

    /// Use case 1 (HPC side): listeners on this gateway forwarding to the
    /// receivers remote_ip:port. receiver_ports: an int or a list of ints.
    /// Returns the Session (its uid and listeners go to the instrument side).
    #[pyo3(signature = (remote_ip, receiver_ports, num_conn=5, rate=0, protocol="tcp"))]
    fn inbound_request(
        slf: Py<Self>,
        py: Python<'_>,
        remote_ip: String,
        receiver_ports: Ports,
        num_conn: u32,
        rate: u32,
        protocol: &str,
    ) -> PyResult<Session> {
        let options = options(num_conn, rate, protocol)?;
        let conn = slf.get().connection(py)?;
        let ports = receiver_ports.0;
        let t = wait(py, async {
            tunnel::inbound_request(&conn, &remote_ip, &ports, &options).await
        })?
        .map_err(to_py)?;
        Ok(Session::from_tunnel(t, slf))
    }

    /// Use case 2 (instrument side): listeners on this gateway forwarding
    /// to the inbound gateway's listeners of session `uid`.
    /// remote_listeners: the inbound Session's listeners ("host:port" list).
    #[pyo3(signature = (uid, remote_listeners, num_conn=5, rate=0, protocol="tcp"))]
    fn outbound_request(
        slf: Py<Self>,
        py: Python<'_>,
        uid: String,
        remote_listeners: Vec<String>,
        num_conn: u32,
        rate: u32,
        protocol: &str,
    ) -> PyResult<Session> {
        let options = options(num_conn, rate, protocol)?;
        let conn = slf.get().connection(py)?;
        let t = wait(py, async {
            tunnel::outbound_request(&conn, &uid, remote_listeners, Vec::new(), &options).await
        })?
        .map_err(to_py)?;
        Ok(Session::from_tunnel(t, slf))
    }

    /// The sessions of `uid` on this gateway, each a dict as `s2uc status
    /// --json` prints it (role, phase, listeners, targets, connections,
    /// bytes, ...). Raises NotFoundError when the gateway holds none.
    fn status(&self, py: Python<'_>, uid: String) -> PyResult<Vec<Py<PyAny>>> {
        let conn = self.connection(py)?;
        let sessions = wait(py, async { tunnel::status(&conn, &uid).await })?.map_err(to_py)?;
        sessions
            .iter()
            .map(|s| json_to_py(py, &tunnel::status_json(s)))
            .collect()
    }

    /// The caller's sessions on this gateway (every one, for its
    /// administrators), as dicts like status().
    fn list(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        let conn = self.connection(py)?;
        let sessions = wait(py, async { tunnel::list(&conn).await })?.map_err(to_py)?;
        sessions
            .iter()
            .map(|s| json_to_py(py, &tunnel::status_json(s)))
            .collect()
    }

    /// Releases every session of `uid` on this gateway: closes its
    /// listeners and connections and frees its ports.
    fn release(&self, py: Python<'_>, uid: String) -> PyResult<()> {
        let conn = self.connection(py)?;
        wait(py, async { tunnel::release(&conn, &uid).await })?.map_err(to_py)
    }
}

impl Gateway {
    /// The connection, made at the first call (token looked up then).
    pub(crate) fn connection(&self, py: Python<'_>) -> PyResult<Connection> {
        if let Some(c) = self.held()?.as_ref() {
            return Ok(c.clone());
        }
        // Made without the lock held: a thread waiting for the lock would
        // hold the GIL that this wait gives up and must take back.
        let (address, trust) = (self.address.clone(), self.trust.clone());
        let (scope, token) = (self.scope.clone(), self.token.clone());
        let made = wait(py, async move {
            let auth = match token {
                Some(t) => Auth::bearer(&t)?,
                None => {
                    let config = ClientConfig::load(None)?;
                    let store = TokenStore::default_path();
                    scistream_client::auth::bearer_for(&config, scope.as_deref(), &address, &store)
                        .await?
                }
            };
            scistream_client::connect(&address, &trust, auth).await
        })?
        .map_err(to_py)?;
        // Another thread may have made one meanwhile: keep the first.
        Ok(self.held()?.get_or_insert(made).clone())
    }

    fn held(&self) -> PyResult<std::sync::MutexGuard<'_, Option<Connection>>> {
        self.conn
            .lock()
            .map_err(|_| invalid("the gateway's connection lock was poisoned"))
    }
}

/// `receiver_ports`: one port or a list of ports.
pub(crate) struct Ports(pub(crate) Vec<u16>);

impl<'py> FromPyObject<'_, 'py> for Ports {
    type Error = PyErr;

    fn extract(ob: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(p) = ob.extract::<u16>() {
            return Ok(Ports(vec![p]));
        }
        match ob.extract::<Vec<u16>>() {
            Ok(v) => Ok(Ports(v)),
            Err(_) => Err(invalid(
                "receiver_ports must be a port (1-65535) or a list of ports",
            )),
        }
    }
}

pub(crate) fn options(num_conn: u32, rate: u32, protocol: &str) -> PyResult<RequestOptions> {
    let protocol: Protocol = protocol
        .parse()
        .map_err(|e: scistream_protocol::ProtocolError| invalid(format!("protocol: {e}")))?;
    Ok(RequestOptions {
        num_conn,
        rate_kbps: rate,
        protocol,
    })
}

/// One half of a tunnel on one gateway: `uid`, `role` ("PROD" at the HPC
/// gateway, "CONS" at the instrument gateway), `listeners` ("host:port")
/// and `targets` (where each listener forwards).
#[pyclass(frozen, module = "scistream_rs")]
pub(crate) struct Session {
    #[pyo3(get)]
    uid: String,
    #[pyo3(get)]
    role: String,
    #[pyo3(get)]
    listeners: Vec<String>,
    #[pyo3(get)]
    targets: Vec<String>,
    #[pyo3(get)]
    gateway: Py<Gateway>,
}

impl Session {
    pub(crate) fn from_tunnel(t: scistream_client::Tunnel, gateway: Py<Gateway>) -> Session {
        Session {
            uid: t.uid,
            role: t.role.as_str().to_owned(),
            listeners: t.listeners,
            targets: t.targets,
            gateway,
        }
    }
}

#[pymethods]
impl Session {
    /// Releases this session on its gateway.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.gateway.get().release(py, self.uid.clone())
    }

    fn __repr__(&self) -> String {
        format!(
            "Session(uid='{}', role='{}', listeners={:?})",
            self.uid, self.role, self.listeners
        )
    }
}
