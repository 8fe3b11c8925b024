//! `nats-protocol`: what a NATS payment bridge (the caller) and its workers (the callees)
//! share, so that neither depends on the other.
//!
//! Map of the crate:
//! - [`catalogue`]: the 35 operations, one row each; everything else derives from it.
//! - [`envelope`]: request and response bodies.
//! - [`headers`]: header names (never a custom `Nats-` header).
//! - [`request`]: an operation instance with its stable message id.
//! - [`subjects`]: subject templates and wildcard matching.
//! - [`naming`]: [`Naming`], the subject and stream names of a deployment, read from the
//!   `[nats_bridge]` table and `NATS_BRIDGE_*` variables.
//! - [`streams`]: stream plans per family + dead letters.
//! - [`connection`]: TLS, credentials, server URLs and readable connect errors.
//! - [`error`]: [`ConfigError`], for configuration that cannot be read or used.

pub mod catalogue;
pub mod connection;
pub mod envelope;
pub mod error;
pub mod headers;
pub mod naming;
pub mod request;
pub mod streams;
pub mod subjects;

pub use catalogue::{Family, Operation, OperationSpec, Pattern, CATALOGUE};
pub use connection::{AuthConfig, TlsConfig};
pub use envelope::{ErrorBody, RequestEnvelope, ResponseEnvelope, ResponseStatus};
pub use error::ConfigError;
pub use naming::{Naming, SubjectScheme};
pub use request::OperationRequest;
