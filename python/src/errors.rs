//! The client's errors as Python exceptions: one base class with `.code`
//! (the gRPC status name) and `.message`, a subclass per code a caller
//! handles, and `TrustError` with `.path` for trust-file problems.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use scistream_client::ClientError;

create_exception!(
    scistream_rs,
    ScistreamError,
    PyException,
    "Any error from a gateway or from the client. `.code` is the gRPC status name (e.g. \"NOT_FOUND\"), `.message` the words."
);
create_exception!(
    scistream_rs,
    InvalidArgumentError,
    ScistreamError,
    "Bad input, refused before or by the gateway (INVALID_ARGUMENT)."
);
create_exception!(
    scistream_rs,
    UnauthenticatedError,
    ScistreamError,
    "The gateway needs a valid token (UNAUTHENTICATED): `s2uc login --scope SCOPE`, or pass token=."
);
create_exception!(
    scistream_rs,
    PermissionDeniedError,
    ScistreamError,
    "The identity is known but not allowed to do this (PERMISSION_DENIED)."
);
create_exception!(
    scistream_rs,
    NotFoundError,
    ScistreamError,
    "No such session on that gateway (NOT_FOUND)."
);
create_exception!(
    scistream_rs,
    ResourceExhaustedError,
    ScistreamError,
    "The gateway has no ports, or the identity's quota is used up (RESOURCE_EXHAUSTED)."
);
create_exception!(
    scistream_rs,
    FailedPreconditionError,
    ScistreamError,
    "The request cannot be carried out in the gateway's present state (FAILED_PRECONDITION)."
);
create_exception!(
    scistream_rs,
    UnavailableError,
    ScistreamError,
    "The gateway could not be reached or could not serve the call now (UNAVAILABLE)."
);
create_exception!(
    scistream_rs,
    TrustError,
    ScistreamError,
    "The trust file is missing or unreadable, or the gateway's certificate is not trusted by it. `.path` names the file."
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ScistreamError", py.get_type::<ScistreamError>())?;
    m.add(
        "InvalidArgumentError",
        py.get_type::<InvalidArgumentError>(),
    )?;
    m.add(
        "UnauthenticatedError",
        py.get_type::<UnauthenticatedError>(),
    )?;
    m.add(
        "PermissionDeniedError",
        py.get_type::<PermissionDeniedError>(),
    )?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add(
        "ResourceExhaustedError",
        py.get_type::<ResourceExhaustedError>(),
    )?;
    m.add(
        "FailedPreconditionError",
        py.get_type::<FailedPreconditionError>(),
    )?;
    m.add("UnavailableError", py.get_type::<UnavailableError>())?;
    m.add("TrustError", py.get_type::<TrustError>())?;
    Ok(())
}

/// The Python exception for a client error.
pub(crate) fn to_py(e: ClientError) -> PyErr {
    let message = e.to_string();
    let (err, code, path) = match &e {
        ClientError::Input(_) => (
            InvalidArgumentError::new_err(message.clone()),
            "INVALID_ARGUMENT",
            None,
        ),
        ClientError::TrustRoot { path, .. } => (
            TrustError::new_err(message.clone()),
            "FAILED_PRECONDITION",
            Some(path.display().to_string()),
        ),
        ClientError::Tls { trust, .. } => (
            TrustError::new_err(message.clone()),
            "UNAVAILABLE",
            Some(trust.clone()),
        ),
        ClientError::Unreachable { .. } => (
            UnavailableError::new_err(message.clone()),
            "UNAVAILABLE",
            None,
        ),
        ClientError::Auth(_) => (
            UnauthenticatedError::new_err(message.clone()),
            "UNAUTHENTICATED",
            None,
        ),
        _ => {
            let code = e.grpc_code().unwrap_or(tonic::Code::Unknown);
            let err = by_code(code, message.clone());
            (err, scistream_client::connect::code_name(code), None)
        }
    };
    Python::attach(|py| {
        let value = err.value(py);
        let _ = value.setattr("code", code);
        let _ = value.setattr("message", &message);
        let _ = value.setattr("path", path);
    });
    err
}

fn by_code(code: tonic::Code, message: String) -> PyErr {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::OutOfRange => InvalidArgumentError::new_err(message),
        Code::Unauthenticated => UnauthenticatedError::new_err(message),
        Code::PermissionDenied => PermissionDeniedError::new_err(message),
        Code::NotFound => NotFoundError::new_err(message),
        Code::ResourceExhausted => ResourceExhaustedError::new_err(message),
        Code::FailedPrecondition => FailedPreconditionError::new_err(message),
        Code::Unavailable | Code::DeadlineExceeded => UnavailableError::new_err(message),
        _ => ScistreamError::new_err(message),
    }
}

/// Bad input from Python (caught before any call).
pub(crate) fn invalid(message: impl Into<String>) -> PyErr {
    to_py(ClientError::Input(message.into()))
}
