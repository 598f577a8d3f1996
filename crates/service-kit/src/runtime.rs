//! Starting and stopping a service: open its store, vault and projections, serve gRPC (health,
//! reflection, AuditService behind bearer-token roles), connect to NATS, create the streams,
//! run one ingest loop per consumed subject and the outbox relay, and on SIGTERM/SIGINT stop
//! pulling, finish the batch in hand, flush and exit 0.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use privacy_bus::{Ingest, IngestHandler, IngestStats, OutboxRelay, Prepared, ensure_streams};
use privacy_event_store::{EventStore, NewEvent, Projection, Projector, StoreConfig, Vault};
use privacy_proto::v1::Envelope;
use privacy_proto::v1::audit_service_server::AuditServiceServer;
use privacy_proto::{EventType, Limits, Rejection, RejectionCode, validate_envelope};
use prost::Message;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::audit::Audit;
use crate::auth::AuthInterceptor;
use crate::config::{ConfigError, ServiceConfig};
use crate::personal::seal_envelope;
use crate::tenants::{Tenant, TenantError, TenantRegistry};
use crate::timeline::SubjectTimeline;

/// What makes one service different from another.
#[derive(Clone, Copy)]
pub struct ServiceSpec {
    /// Short name: `consent`, `subject-requests`, `retention`, `disclosure-log`.
    pub name: &'static str,
    /// Default gRPC port (DESIGN §7).
    pub default_port: u16,
    /// User-event subjects it consumes, after `<prefix>.in.` (e.g. `consent.*`).
    pub consumes: &'static [&'static str],
    /// The service's own projections, besides the subject timeline every service keeps.
    pub projections: fn() -> Vec<Arc<dyn Projection>>,
    /// The service's domain: its rules for incoming events and its own gRPC service.
    pub domain: fn(&ServiceContext) -> Arc<dyn DomainService>,
}

impl ServiceSpec {
    /// No projections of its own.
    pub fn no_projections() -> Vec<Arc<dyn Projection>> {
        Vec::new()
    }

    /// No domain of its own yet: every contract-valid event of a known tenant is stored.
    pub fn no_domain(_: &ServiceContext) -> Arc<dyn DomainService> {
        Arc::new(NoDomain)
    }
}

/// What a service's domain adds to the shared runtime.
pub trait DomainService: Send + Sync + 'static {
    /// The domain's rules for a contract-valid user event of a known tenant, applied alike to
    /// events from NATS and to gRPC commands. A refusal goes to the DLQ (or back to the caller).
    fn check(&self, _tenant: &Tenant, _envelope: &Envelope) -> Result<(), Rejection> {
        Ok(())
    }

    /// Domain events a stored user event implies (stored in the same atomic append). Their
    /// `event_id`s must be derived from the user event's, so a redelivery derives the same ids.
    fn derive(&self, _tenant: &Tenant, _envelope: &Envelope) -> Vec<Envelope> {
        Vec::new()
    }

    /// Whether a stored event of this type is also a domain event for the outbox.
    fn publishes(&self, _event_type: &str) -> bool {
        false
    }

    /// Adds the service's own gRPC services (behind the role interceptor in `ctx.auth`).
    fn routes(&self, _ctx: &ServiceContext, _routes: &mut tonic::service::RoutesBuilder) {}
}

/// The domain of a skeleton service.
pub struct NoDomain;

impl DomainService for NoDomain {}

/// Everything a service's domain may use.
#[derive(Clone)]
pub struct ServiceContext {
    pub spec: ServiceSpec,
    pub store: EventStore,
    pub vault: Arc<Vault>,
    pub projector: Projector,
    pub tenants: Arc<TenantRegistry>,
    pub auth: AuthInterceptor,
    pub limits: Limits,
}

/// Why a user event was not turned into a stored event.
#[derive(Debug)]
pub enum PrepareError {
    /// The event breaks the contract or a rule: refuse it.
    Rejected(Rejection),
    /// Storage or the vault failed: try again later.
    Transient(String),
}

impl ServiceContext {
    /// The one path by which a decoded, contract-valid user event becomes an event to store:
    /// known tenant, the domain's rules, personal data sealed, stream named.
    pub fn prepare(
        &self,
        domain: &dyn DomainService,
        mut envelope: Envelope,
    ) -> Result<Vec<NewEvent>, PrepareError> {
        let Some(tenant) = self.tenants.get(&envelope.tenant) else {
            return Err(PrepareError::Rejected(Rejection::new(
                RejectionCode::UnknownTenant,
                "tenant",
                format!("tenant {:?} is not in the tenant registry", envelope.tenant),
            )));
        };
        domain
            .check(tenant, &envelope)
            .map_err(PrepareError::Rejected)?;
        let derived = domain.derive(tenant, &envelope);
        envelope.recorded_at = None;
        seal_envelope(&self.vault, &mut envelope)
            .map_err(|e| PrepareError::Transient(e.to_string()))?;
        let stream = if envelope.subject_id.is_empty() {
            format!("{}/-", envelope.tenant)
        } else {
            format!("{}/{}", envelope.tenant, envelope.subject_id)
        };
        let mut events = Vec::with_capacity(1 + derived.len());
        for env in std::iter::once(envelope).chain(derived) {
            events.push(NewEvent {
                event_id: env.event_id.clone(),
                stream: stream.clone(),
                publish: domain.publishes(&env.event_type),
                event_type: env.event_type.clone(),
                data: env.encode_to_vec(),
            });
        }
        Ok(events)
    }

    /// Checks and stores one user event given as a gRPC command, answering after it is durable.
    pub async fn record(
        &self,
        domain: &dyn DomainService,
        envelope: Envelope,
    ) -> Result<privacy_event_store::Position, tonic::Status> {
        validate_envelope(&envelope, None, std::time::SystemTime::now(), &self.limits)
            .map_err(rejection_status)?;
        let events = match self.prepare(domain, envelope) {
            Ok(e) => e,
            Err(PrepareError::Rejected(r)) => return Err(rejection_status(r)),
            Err(PrepareError::Transient(e)) => return Err(tonic::Status::unavailable(e)),
        };
        self.vault
            .sync()
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let positions = self
            .store
            .append(events, privacy_event_store::ExpectedVersion::Any)
            .await
            .map_err(crate::audit::status_of)?;
        Ok(positions[0])
    }
}

/// The gRPC status of a refused command: INVALID_ARGUMENT naming the field, or
/// FAILED_PRECONDITION when a rule forbids it.
pub fn rejection_status(r: Rejection) -> tonic::Status {
    let message = format!("{}: {}", r.field, r.reason);
    match r.code {
        RejectionCode::UnknownTenant => tonic::Status::not_found(message),
        RejectionCode::Forbidden => tonic::Status::failed_precondition(message),
        _ => tonic::Status::invalid_argument(message),
    }
}

/// A service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tenants(#[from] TenantError),
    #[error("event store at {path}: {source}")]
    Store {
        path: String,
        source: privacy_event_store::StoreError,
    },
    #[error("cannot listen on {addr}: {reason} (set PRIVACY_GRPC_ADDR)")]
    Listen { addr: SocketAddr, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("gRPC server: {0}")]
    Server(String),
}

/// A started service.
pub struct RunningService {
    /// Where gRPC listens (useful with port 0).
    pub grpc_addr: SocketAddr,
    pub store: EventStore,
    pub vault: Arc<Vault>,
    pub projector: Projector,
    pub stats: Arc<IngestStats>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningService {
    /// The token that stops the service.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every task has stopped, then makes everything durable.
    pub async fn wait(mut self) -> Result<(), StartError> {
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "a service task panicked");
            }
        }
        let path = "flush".to_owned();
        self.store
            .flush()
            .await
            .map_err(|source| StartError::Store { path, source })?;
        if let Err(e) = self.vault.sync() {
            tracing::error!(error = %e, "vault sync at shutdown failed");
        }
        let [accepted, duplicates, rejected, naked] = self.stats.snapshot();
        tracing::info!(accepted, duplicates, rejected, naked, "stopped");
        Ok(())
    }
}

/// The ingest handler every service shares: [`ServiceContext::prepare`] for each event.
struct EnvelopeIngest {
    ctx: ServiceContext,
    domain: Arc<dyn DomainService>,
}

impl IngestHandler for EnvelopeIngest {
    fn prepare(&self, envelope: Envelope, _event_type: EventType) -> Result<Prepared, String> {
        match self.ctx.prepare(self.domain.as_ref(), envelope) {
            Ok(events) => Ok(Prepared::Store(events)),
            Err(PrepareError::Rejected(r)) => Ok(Prepared::Reject(r)),
            Err(PrepareError::Transient(e)) => Err(e),
        }
    }

    fn before_append(&self) -> Result<(), String> {
        self.ctx.vault.sync().map_err(|e| e.to_string())
    }
}

/// Starts a service; it runs until `shutdown` is cancelled (then call [`RunningService::wait`]).
pub async fn start(
    spec: ServiceSpec,
    config: ServiceConfig,
    shutdown: CancellationToken,
) -> Result<RunningService, StartError> {
    let tenants = Arc::new(TenantRegistry::load(&config.tenants_dir)?);
    if tenants.is_empty() {
        tracing::warn!(dir = %config.tenants_dir.display(), "no tenants configured: every event will be refused");
    }
    let base = config.data_dir.join(spec.name);
    let store_err = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| StartError::Store { path, source }
    };
    let events_dir = base.join("events");
    let store = EventStore::open(
        &events_dir,
        StoreConfig {
            fsync: config.fsync,
            ..StoreConfig::default()
        },
    )
    .map_err(store_err(&events_dir))?;
    let vault_dir = base.join("vault");
    let vault = Arc::new(Vault::open(&vault_dir).map_err(store_err(&vault_dir))?);
    let mut projections: Vec<Arc<dyn Projection>> = vec![Arc::new(SubjectTimeline)];
    projections.extend((spec.projections)());
    let projector = Projector::open(&store, projections).map_err(store_err(&events_dir))?;

    let listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|e| StartError::Listen {
            addr: config.grpc_addr,
            reason: e.to_string(),
        })?;
    let grpc_addr = listener.local_addr().map_err(|e| StartError::Listen {
        addr: config.grpc_addr,
        reason: e.to_string(),
    })?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(privacy_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Server(e.to_string()))?;
    if config.tokens.is_empty() {
        tracing::warn!(
            "no tokens configured (PRIVACY_TOKENS): every RPC but health and reflection is refused"
        );
    }
    let auth = AuthInterceptor::new(config.tokens.clone());
    let ctx = ServiceContext {
        spec,
        store: store.clone(),
        vault: vault.clone(),
        projector: projector.clone(),
        tenants: tenants.clone(),
        auth: auth.clone(),
        limits: Limits::default(),
    };
    let domain = (spec.domain)(&ctx);
    let audit = Audit {
        store: store.clone(),
        projector: projector.clone(),
        shutdown: shutdown.clone(),
    };
    let mut routes = tonic::service::RoutesBuilder::default();
    routes
        .add_service(health_service)
        .add_service(reflection)
        .add_service(InterceptedService::new(
            AuditServiceServer::new(audit),
            auth,
        ));
    domain.routes(&ctx, &mut routes);
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &config.tls {
        let read = |p: &std::path::PathBuf| {
            std::fs::read(p).map_err(|e| StartError::Tls(format!("{}: {e}", p.display())))
        };
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| StartError::Tls(e.to_string()))?;
    }
    let router = builder.add_routes(routes.routes());

    let mut tasks = JoinSet::new();
    let server_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, server_shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    });
    let run_projector = projector.clone();
    let projector_shutdown = shutdown.clone();
    tasks.spawn(async move {
        run_projector
            .run(projector_shutdown.cancelled_owned())
            .await;
    });

    let stats = Arc::new(IngestStats::default());
    let handler: Arc<dyn IngestHandler> = Arc::new(EnvelopeIngest { ctx, domain });
    let bus_store = store.clone();
    let bus_stats = stats.clone();
    let bus_shutdown = shutdown.clone();
    let bus_config = config.bus.clone();
    tasks.spawn(async move {
        run_bus(
            spec,
            bus_config,
            bus_store,
            handler,
            bus_stats,
            health,
            bus_shutdown,
        )
        .await;
    });
    tracing::info!(
        service = spec.name,
        grpc = %grpc_addr,
        nats = %config.bus.url,
        data = %base.display(),
        tenants = tenants.len(),
        tls = config.tls.is_some(),
        "started"
    );
    Ok(RunningService {
        grpc_addr,
        store,
        vault,
        projector,
        stats,
        shutdown,
        tasks,
    })
}

/// Connects to NATS (retrying), ensures the streams, runs the ingest loops and the outbox relay;
/// reports SERVING once ingest runs. Every loop restarts after an error until shutdown.
async fn run_bus(
    spec: ServiceSpec,
    config: privacy_bus::BusConfig,
    store: EventStore,
    handler: Arc<dyn IngestHandler>,
    stats: Arc<IngestStats>,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let client_name = format!("privacy-{}", spec.name);
    let client = tokio::select! {
        _ = shutdown.cancelled() => return,
        c = privacy_bus::connect(&config, &client_name) => match c {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "NATS connection failed");
                return;
            }
        },
    };
    let js = async_nats::jetstream::new(client);
    let mut delay = Duration::from_millis(200);
    loop {
        match ensure_streams(&js, &config).await {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "creating streams failed; retrying in {delay:?}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    let ingest = Ingest {
        js: js.clone(),
        store: store.clone(),
        handler,
        service: spec.name.to_owned(),
        config: config.clone(),
        limits: Limits::default(),
        stats,
    };
    let mut loops = JoinSet::new();
    for tail in spec.consumes {
        let filter = format!("{}.in.{tail}", config.prefix);
        let ingest = ingest.clone();
        let shutdown = shutdown.clone();
        loops.spawn(async move {
            while !shutdown.is_cancelled() {
                if let Err(e) = ingest.run(&filter, shutdown.clone()).await {
                    tracing::warn!(error = %e, filter, "ingest loop failed; restarting");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
    let relay = OutboxRelay::new(js, store, spec.name, config);
    let relay_shutdown = shutdown.clone();
    loops.spawn(async move {
        while !relay_shutdown.is_cancelled() {
            if let Err(e) = relay.run(relay_shutdown.clone()).await {
                tracing::warn!(error = %e, "outbox relay failed; restarting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health.set_serving::<AuditServiceServer<Audit>>().await;
    shutdown.cancelled().await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    while loops.join_next().await.is_some() {}
}

/// The `main` of every service binary: `serve` (default) or `healthcheck`.
pub fn main(spec: ServiceSpec) -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        None | Some("serve") => serve(spec),
        Some("healthcheck") => healthcheck(spec),
        Some("-h" | "--help" | "help") => {
            println!(
                "privacy-{name}: the {name} service of Privacy Ledger\n\n\
                 usage: privacy-{name} [serve|healthcheck]\n\n\
                 Configuration is PRIVACY_* environment variables (see README):\n  {keys}\n\
                 Default gRPC address 127.0.0.1:{port}.",
                name = spec.name,
                port = spec.default_port,
                keys = crate::config::KEYS.join(", "),
            );
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("unknown command {other:?}; try --help");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn serve(spec: ServiceSpec) -> ExitCode {
    let _telemetry = match privacy_telemetry::init(&format!("privacy-{}", spec.name)) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("telemetry: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match ServiceConfig::from_env(spec.default_port) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    runtime().block_on(async move {
        let shutdown = CancellationToken::new();
        let service = match start(spec, config, shutdown.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: finishing the batch in hand");
            shutdown.cancel();
        });
        match service.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Exits 0 when the service's gRPC health endpoint answers SERVING.
fn healthcheck(spec: ServiceSpec) -> ExitCode {
    let config = match ServiceConfig::from_env(spec.default_port) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut addr = config.grpc_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{addr}");
    runtime().block_on(async move {
        let check = async {
            let channel = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            let resp = client
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(resp.into_inner().status)
        };
        match tokio::time::timeout(Duration::from_secs(5), check).await {
            Ok(Ok(status))
                if status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
            {
                println!("{url}: SERVING");
                ExitCode::SUCCESS
            }
            Ok(Ok(status)) => {
                eprintln!("{url}: not serving (status {status})");
                ExitCode::FAILURE
            }
            Ok(Err(e)) => {
                eprintln!("{url}: {e}");
                ExitCode::FAILURE
            }
            Err(_) => {
                eprintln!("{url}: no answer within 5 s");
                ExitCode::FAILURE
            }
        }
    })
}
