//! The shared runtime of the four services. A service crate is a [`ServiceSpec`] (name, port,
//! consumed subjects, projections) and a `main` that calls [`main`]; everything else lives here:
//!
//! - [`config`]: `PRIVACY_*` configuration with local defaults;
//! - [`tenants`]: the tenant registry from `PRIVACY_TENANTS_DIR`;
//! - [`auth`]: bearer tokens → roles, enforced per RPC;
//! - [`audit`]: the `AuditService` every service serves over its own store;
//! - [`personal`]: sealing and opening personal data with the key vault;
//! - [`timeline`]: the per-subject timeline projection;
//! - [`runtime`]: start-up, the ingest loops and outbox relay, graceful shutdown, health check.

#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod config;
pub mod personal;
pub mod runtime;
pub mod tenants;
pub mod timeline;

pub use auth::{Role, Tokens};
pub use config::ServiceConfig;
pub use runtime::{
    DomainService, NoDomain, PrepareError, RunningService, ServiceContext, ServiceSpec, StartError,
    main, rejection_status, start,
};
pub use tenants::{Tenant, TenantRegistry};
