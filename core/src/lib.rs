//! pyproxy's data plane: per-core workers serving HTTP/1.1 listeners, a router, upstream
//! clusters with connection pools and load balancers, and stats with Envoy's names.
//!
//! The control plane hands the [`Engine`] a validated [`config::Snapshot`]; the engine compiles
//! it ([`snapshot`]), and each worker serves it until the next one arrives.

pub mod accesslog;
pub mod config;
pub mod engine;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod http1;
pub mod lb;
pub mod overload;
pub mod router;
pub mod snapshot;
pub mod stats;
pub mod upstream;
pub mod worker;

pub use engine::{ClusterInfo, Engine, HostInfo, Stop};
pub use error::{Error, ErrorKind};
