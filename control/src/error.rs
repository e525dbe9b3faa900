//! Errors of the control service, each mapped to the gRPC code a client
//! acts on. Messages are for people: they say what was wrong and what to do.

use tonic::{Code, Status};

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The caller sent something malformed (`INVALID_ARGUMENT`).
    #[error("{0}")]
    InvalidArgument(String),
    /// No such session (`NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// The session exists already (`ALREADY_EXISTS`).
    #[error("{0}")]
    AlreadyExists(String),
    /// Not enough ports or capacity (`RESOURCE_EXHAUSTED`).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The call does not fit the session's state (`FAILED_PRECONDITION`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The hello did not arrive in time (`DEADLINE_EXCEEDED`).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The session was released while the call waited (`ABORTED`).
    #[error("{0}")]
    Aborted(String),
    /// The data plane is not answering (`UNAVAILABLE`); retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// No valid token (`UNAUTHENTICATED`).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but not allowed (`PERMISSION_DENIED`).
    #[error("{0}")]
    PermissionDenied(String),
    /// A fault on this gateway (`INTERNAL`).
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            ControlError::InvalidArgument(_) => Code::InvalidArgument,
            ControlError::NotFound(_) => Code::NotFound,
            ControlError::AlreadyExists(_) => Code::AlreadyExists,
            ControlError::ResourceExhausted(_) => Code::ResourceExhausted,
            ControlError::FailedPrecondition(_) => Code::FailedPrecondition,
            ControlError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ControlError::Aborted(_) => Code::Aborted,
            ControlError::Unavailable(_) => Code::Unavailable,
            ControlError::Unauthenticated(_) => Code::Unauthenticated,
            ControlError::PermissionDenied(_) => Code::PermissionDenied,
            ControlError::Internal(_) => Code::Internal,
        }
    }
}

impl ControlError {
    /// A short name for the kind of failure, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlError::InvalidArgument(_) => "invalid_argument",
            ControlError::NotFound(_) => "not_found",
            ControlError::AlreadyExists(_) => "already_exists",
            ControlError::ResourceExhausted(_) => "resource_exhausted",
            ControlError::FailedPrecondition(_) => "failed_precondition",
            ControlError::DeadlineExceeded(_) => "deadline_exceeded",
            ControlError::Aborted(_) => "aborted",
            ControlError::Unavailable(_) => "unavailable",
            ControlError::Unauthenticated(_) => "unauthenticated",
            ControlError::PermissionDenied(_) => "permission_denied",
            ControlError::Internal(_) => "internal",
        }
    }
}

impl ControlError {
    /// The error a gRPC status stands for (another node's answer, passed
    /// on): same code, same message.
    pub fn from_status(s: &Status) -> ControlError {
        let m = s.message().to_owned();
        match s.code() {
            Code::InvalidArgument => ControlError::InvalidArgument(m),
            Code::NotFound => ControlError::NotFound(m),
            Code::AlreadyExists => ControlError::AlreadyExists(m),
            Code::ResourceExhausted => ControlError::ResourceExhausted(m),
            Code::FailedPrecondition => ControlError::FailedPrecondition(m),
            Code::DeadlineExceeded => ControlError::DeadlineExceeded(m),
            Code::Aborted | Code::Cancelled => ControlError::Aborted(m),
            Code::Unauthenticated => ControlError::Unauthenticated(m),
            Code::PermissionDenied => ControlError::PermissionDenied(m),
            Code::Unavailable => ControlError::Unavailable(m),
            _ => ControlError::Internal(m),
        }
    }
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
