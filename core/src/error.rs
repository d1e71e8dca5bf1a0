//! The engine's one error type.
//!
//! Every failure the engine reports to its caller (the bindings, a test) is an [`Error`] with a
//! [`ErrorKind`] that the bindings map once into `pyproxy.errors`. Per-request failures on the
//! data path never surface here: they become local replies (503, 504, 400) and stats.

use std::fmt;

/// What went wrong, at the granularity a caller acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The snapshot does not compile (bad regex, unknown cluster, invalid JSON).
    Config,
    /// A listener socket could not be bound.
    Bind,
    /// The engine is in the wrong state for the call, or a worker failed.
    Engine,
}

/// An engine error: a kind plus a message that names what was wrong and where.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// A config compile error; `message` names the path (`clusters[0].name`) and the value.
    pub fn config(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Config,
            message: message.into(),
        }
    }

    /// A bind error; `message` names the listener and address.
    pub fn bind(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Bind,
            message: message.into(),
        }
    }

    /// An engine state or internal error.
    pub fn engine(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Engine,
            message: message.into(),
        }
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the snapshot was rejected.
    pub fn is_config(&self) -> bool {
        self.kind == ErrorKind::Config
    }

    /// Whether a listener failed to bind.
    pub fn is_bind(&self) -> bool {
        self.kind == ErrorKind::Bind
    }

    /// The human-readable message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
