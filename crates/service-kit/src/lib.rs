//! The shared runtime of the four services. A service crate is a [`ServiceSpec`] (name, port,
//! what it publishes, projections, domain) and a `main` that calls [`main`]; everything else
//! lives here:
//!
//! - [`spec`]: [`ServiceSpec`] and the [`DomainService`] hook (check, derive, routes);
//! - [`door`]: [`ServiceContext`], the one door into the log for NATS events, gRPC commands and
//!   domain events;
//! - [`config`]: `PRIVACY_*` configuration with local defaults;
//! - [`tenants`]: the tenant registry from `PRIVACY_TENANTS_DIR`;
//! - [`auth`]: bearer tokens → roles, enforced per RPC, and the start-up readiness gate;
//! - [`audit`]: the `AuditService` every service serves over its own store;
//! - [`personal`]: sealing and opening personal data with the key vault;
//! - [`projection`]: helpers for a service's projections (decode a stored envelope);
//! - `react`: other services' domain events — every service shreds on `subject.erased`, the
//!   rest goes to the domain;
//! - [`timeline`]: the per-subject timeline projection;
//! - [`start`]: start-up in order (views, then bus, then SERVING) and graceful shutdown;
//! - [`cli`]: the binary's `serve` / `healthcheck` entry point.

#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod door;
pub mod personal;
pub mod projection;
mod react;
pub mod spec;
pub mod start;
pub mod tenants;
pub mod timeline;

pub use auth::{Readiness, Role, Tokens};
pub use cli::main;
pub use config::{MasterKeySource, ServiceConfig};
pub use door::{
    Admitted, Command, DoorError, Emit, Recorded, ServiceContext, StreamKey, check_code,
    rejection_status,
};
pub use spec::{Derived, DomainService, DomainTask, NoDomain, ServiceSpec};
pub use start::{RunningService, StartError, start};
pub use tenants::{Tenant, TenantRegistry};
