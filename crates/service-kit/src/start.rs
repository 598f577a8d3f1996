//! Starting and stopping a service: open its store, vault and projections, serve gRPC (health,
//! reflection, AuditService and the domain's service behind bearer-token roles), catch the views
//! up with the log (health NOT_SERVING and every RPC UNAVAILABLE until then), then connect to
//! NATS, create the streams, run one ingest loop per consumed subject filter and the outbox
//! relay, and report SERVING. On shutdown: stop pulling, finish the batch in hand, flush.
//!
//! **Loud failure** (DESIGN §5.11). Every long-running part (gRPC server, start-up, projector,
//! each ingest loop, the outbox relay, the store's failure watch) runs under a [`Supervisor`]:
//! a panic, an error it cannot retry, or an end before shutdown makes health NOT_SERVING,
//! every RPC UNAVAILABLE, stops the rest, and [`RunningService::wait`] returns
//! [`StartError::Fatal`], so the binary exits non-zero and its supervisor restarts it. A
//! failed commit is such an error: the store refuses writes until reopened.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use privacy_bus::{Ingest, IngestHandler, IngestStats, OutboxRelay, ensure_streams};
use privacy_event_store::{EventStore, MasterKey, Projection, Projector, StoreConfig, Vault};
use privacy_proto::Limits;
use privacy_proto::v1::audit_service_server::AuditServiceServer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::audit::Audit;
use crate::auth::{AuthInterceptor, Readiness};
use crate::config::{ConfigError, MasterKeySource, ServiceConfig};
use crate::door::{EnvelopeIngest, ServiceContext};
use crate::spec::{DomainService, ServiceSpec};
use crate::tenants::{TenantError, TenantRegistry};
use crate::timeline::SubjectTimeline;

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
        #[source]
        source: privacy_event_store::StoreError,
    },
    #[error("cannot listen on {addr}: {source} (set PRIVACY_GRPC_ADDR)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS file {path}: {source}")]
    TlsFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// A part of the running service failed; it stopped (fail-stop).
    #[error("the service stopped after a fatal failure: {0}")]
    Fatal(String),
}

/// Stops the service loudly when one of its parts fails.
#[derive(Clone)]
struct Supervisor {
    reason: Arc<OnceLock<String>>,
    shutdown: CancellationToken,
    health: tonic_health::server::HealthReporter,
    ready: Readiness,
}

impl Supervisor {
    /// Health NOT_SERVING, RPCs UNAVAILABLE, everything told to stop; the first reason wins.
    async fn fail(&self, reason: String) {
        if self.reason.set(reason.clone()).is_ok() {
            tracing::error!(
                reason,
                "fatal failure: the service stops; restart it to recover"
            );
        }
        self.ready.fail();
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<AuditServiceServer<Audit>>()
            .await;
        self.shutdown.cancel();
    }

    /// Runs `part` on its own task and watches it: a panic, an `Err`, or an end before
    /// shutdown fails the service.
    fn supervise(
        &self,
        name: String,
        part: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let sup = self.clone();
        async move {
            let reason = match tokio::spawn(part).await {
                Ok(Ok(())) if sup.shutdown.is_cancelled() => return,
                Ok(Ok(())) => format!("{name} stopped unexpectedly"),
                Ok(Err(e)) => format!("{name} failed: {e}"),
                Err(e) if e.is_panic() => {
                    format!("{name} panicked: {}", panic_message(e.into_panic()))
                }
                Err(e) => format!("{name} was cancelled: {e}"),
            };
            sup.fail(reason).await;
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast::<&'static str>()
            .map_or_else(|_| "(no message)".to_owned(), |s| (*s).to_owned()),
    }
}

/// A started service.
pub struct RunningService {
    /// Where gRPC listens (useful with port 0).
    pub grpc_addr: SocketAddr,
    pub store: EventStore,
    pub vault: Arc<Vault>,
    pub projector: Projector,
    pub stats: Arc<IngestStats>,
    /// Set once the views caught up with the log at start-up.
    pub ready: Readiness,
    /// The service's door (for tools and tests that drive it directly).
    pub context: ServiceContext,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    fatal: Arc<OnceLock<String>>,
}

impl RunningService {
    /// The token that stops the service.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Why the service failed, once it did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.get().cloned()
    }

    /// Waits until every task has stopped, then makes everything durable. After a fatal
    /// failure it returns [`StartError::Fatal`] (the binary exits non-zero).
    pub async fn wait(mut self) -> Result<(), StartError> {
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "a supervisor task failed");
            }
        }
        // The views' folded changes, so the next start folds from here (they are derived
        // from the log: a failure costs only a longer start).
        let projector = self.projector.clone();
        match tokio::task::spawn_blocking(move || projector.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "writing the views at shutdown failed"),
            Err(e) => tracing::warn!(error = %e, "writing the views at shutdown failed"),
        }
        let path = "flush".to_owned();
        let flushed = self
            .store
            .flush()
            .await
            .map_err(|source| StartError::Store { path, source });
        if let Err(e) = self.vault.sync() {
            tracing::error!(error = %e, "vault sync at shutdown failed");
        }
        let [accepted, duplicates, rejected, naked] = self.stats.snapshot();
        tracing::info!(accepted, duplicates, rejected, naked, "stopped");
        if let Some(reason) = self.fatal.get() {
            return Err(StartError::Fatal(reason.clone()));
        }
        flushed
    }
}

/// How often the vault is compacted when keys were shredded since the last compaction.
const VAULT_COMPACTION_EVERY: Duration = Duration::from_secs(60);

/// The vault's master key from the configuration (see [`MasterKeySource`]).
fn master_key(
    config: &ServiceConfig,
    base: &std::path::Path,
) -> Result<MasterKey, privacy_event_store::StoreError> {
    let (path, development) = match &config.master_key {
        MasterKeySource::Key(key) => return Ok(key.clone()),
        MasterKeySource::File(path) => (path.clone(), false),
        MasterKeySource::Development => {
            std::fs::create_dir_all(base)
                .map_err(|e| privacy_event_store::StoreError::Storage(e.to_string()))?;
            (base.join("master.key"), true)
        }
    };
    let (key, generated) = MasterKey::load_or_generate(&path)?;
    if development {
        tracing::warn!(
            path = %path.display(),
            "the vault's master key is a development key kept beside the data it protects; \
             in production set PRIVACY_MASTER_KEY_FILE (or PRIVACY_MASTER_KEY) from a secret store"
        );
    }
    if generated {
        tracing::info!(path = %path.display(), "generated a new master key");
    }
    Ok(key)
}

/// Starts a service; it runs until `shutdown` is cancelled (then call [`RunningService::wait`]).
/// Returns once gRPC listens; the views catch up and the bus starts in the background, and
/// health says SERVING only after both.
pub async fn start(
    spec: ServiceSpec,
    config: ServiceConfig,
    shutdown: CancellationToken,
) -> Result<RunningService, StartError> {
    if privacy_event_store::SLOW_SEAL_BUILD {
        tracing::warn!(
            "built without `--cfg poly1305_force_soft` (.cargo/config.toml sets it; a RUSTFLAGS \
             variable replaces that): sealing and opening personal data is about 3× slower"
        );
    }
    let tenants = Arc::new(TenantRegistry::load(&config.tenants_dir)?);
    if tenants.is_empty() {
        tracing::warn!(dir = %config.tenants_dir.display(), "no tenants configured: every event will be refused");
    }
    config
        .tokens
        .check_tenants(&tenants.ids().collect::<Vec<_>>())
        .map_err(|reason| ConfigError::Invalid {
            key: "TOKENS(_FILE)".into(),
            reason,
        })?;
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
            cache_bytes: config.cache_bytes,
            ..StoreConfig::default()
        },
    )
    .map_err(store_err(&events_dir))?;
    let vault_dir = base.join("vault");
    let master_key = master_key(&config, &base).map_err(store_err(&base))?;
    let vault = Arc::new(Vault::open(&vault_dir, &master_key).map_err(store_err(&vault_dir))?);
    let mut projections: Vec<Arc<dyn Projection>> = vec![Arc::new(SubjectTimeline)];
    projections.extend((spec.projections)());
    let projector = Projector::open(&store, projections).map_err(store_err(&events_dir))?;

    let listen_err = |source| StartError::Listen {
        addr: config.grpc_addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .map_err(listen_err)?;
    let grpc_addr = listener.local_addr().map_err(listen_err)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    // Both reflection versions: grpcurl and buf speak v1; Python's grpcio-reflection and several
    // GUI clients speak only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(privacy_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(StartError::Reflection)?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(StartError::Reflection)?;
    if config.tokens.is_empty() {
        tracing::warn!(
            "no tokens configured (PRIVACY_TOKENS): every RPC but health and reflection is refused"
        );
    }
    let ready = Readiness::default();
    let auth = AuthInterceptor::new(config.tokens.clone(), ready.clone());
    let mut ctx = ServiceContext::new(
        spec,
        store.clone(),
        vault.clone(),
        projector.clone(),
        tenants.clone(),
        auth.clone(),
        config.peers.clone(),
    );
    ctx.peer_token = config.peer_token.as_deref().map(Arc::from);
    let domain = ctx.install_domain();
    let audit = Audit {
        store: store.clone(),
        projector: projector.clone(),
        shutdown: shutdown.clone(),
    };
    let mut routes = tonic::service::RoutesBuilder::default();
    routes
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            AuditServiceServer::new(audit).max_decoding_message_size(ctx.limits.max_message_bytes),
            auth,
        ));
    domain.routes(&ctx, &mut routes);
    // Each call is a `grpc` span, parented by the auth interceptor on the caller's trace.
    let mut builder = tonic::transport::Server::builder()
        .trace_fn(|req| tracing::info_span!("grpc", path = %req.uri().path()));
    if let Some((cert, key)) = &config.tls {
        let read = |p: &std::path::PathBuf| {
            std::fs::read(p).map_err(|source| StartError::TlsFile {
                path: p.clone(),
                source,
            })
        };
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(StartError::Tls)?;
    }
    let router = builder.add_routes(routes.routes());

    let fatal = Arc::new(OnceLock::new());
    let sup = Supervisor {
        reason: fatal.clone(),
        shutdown: shutdown.clone(),
        health: health.clone(),
        ready: ready.clone(),
    };
    let mut tasks = JoinSet::new();
    let server_shutdown = shutdown.clone();
    tasks.spawn(sup.supervise("the gRPC server".into(), async move {
        // TCP_NODELAY: without it a response written in two parts waits for the client's
        // delayed ACK (about 40 ms a call at concurrency 1).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        router
            .serve_with_incoming_shutdown(incoming, server_shutdown.cancelled_owned())
            .await
            .map_err(|e| e.to_string())
    }));
    let watched = store.clone();
    let store_shutdown = shutdown.clone();
    tasks.spawn(sup.supervise("the event store".into(), async move {
        let mut failure = watched.watch_failure();
        tokio::select! {
            _ = store_shutdown.cancelled() => Ok(()),
            failed = failure.wait_for(Option::is_some) => Err(match failed {
                Ok(e) => e.as_ref().map(ToString::to_string).unwrap_or_default(),
                Err(_) => "the store's failure watch closed".into(),
            }),
        }
    }));
    let compacted = vault.clone();
    let vault_shutdown = shutdown.clone();
    tasks.spawn(sup.supervise("the vault's compaction".into(), async move {
        // A shredded key's bytes survive in sled's log until the vault is rewritten: compact
        // soon after shredding (at most once a minute), so an erasure reaches the disk.
        loop {
            tokio::select! {
                _ = vault_shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(VAULT_COMPACTION_EVERY) => {}
            }
            if compacted.shreds_since_compaction() > 0 {
                let vault = compacted.clone();
                tokio::task::spawn_blocking(move || vault.compact())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("compacting the vault: {e}"))?;
                tracing::info!("compacted the vault after shredding");
            }
        }
    }));

    let stats = Arc::new(IngestStats::default());
    let handler: Arc<dyn IngestHandler> = Arc::new(EnvelopeIngest { ctx: ctx.clone() });
    let lifecycle = Lifecycle {
        domain: domain.clone(),
        ctx: ctx.clone(),
        spec,
        bus: config.bus.clone(),
        store: store.clone(),
        projector: projector.clone(),
        handler,
        stats: stats.clone(),
        health,
        ready: ready.clone(),
        shutdown: shutdown.clone(),
        sup: sup.clone(),
    };
    tasks.spawn(sup.supervise("start-up".into(), lifecycle.run()));
    tracing::info!(
        service = spec.name,
        grpc = %grpc_addr,
        nats = %config.bus.url,
        data = %base.display(),
        tenants = tenants.len(),
        tls = config.tls.is_some(),
        "started; catching the views up with the log"
    );
    Ok(RunningService {
        grpc_addr,
        store,
        vault,
        projector,
        stats,
        ready,
        context: ctx,
        shutdown,
        tasks,
        fatal,
    })
}

/// What runs after gRPC listens: views first, then the domain's tasks and the bus, then SERVING.
struct Lifecycle {
    domain: Arc<dyn DomainService>,
    ctx: ServiceContext,
    spec: ServiceSpec,
    bus: privacy_bus::BusConfig,
    store: EventStore,
    projector: Projector,
    handler: Arc<dyn IngestHandler>,
    stats: Arc<IngestStats>,
    health: tonic_health::server::HealthReporter,
    ready: Readiness,
    shutdown: CancellationToken,
    sup: Supervisor,
}

impl Lifecycle {
    /// Returns at shutdown; the parts it starts are supervised on their own.
    async fn run(self) -> Result<(), String> {
        // Views catch up (stale ones rebuilt in a shadow) before anything reads them. A fold
        // that fails here would fail the same way on every retry: stop loudly instead.
        let applied = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            r = self.projector.catch_up() => r,
        }
        .map_err(|e| format!("catching the views up with the log: {e}"))?;
        tracing::info!(applied, head = self.store.head().seq, "views caught up");
        self.ready.set();
        let mut parts = JoinSet::new();
        let projector = self.projector.clone();
        let projector_shutdown = self.shutdown.clone();
        parts.spawn(self.sup.supervise("the projector".into(), async move {
            projector
                .run(projector_shutdown.cancelled_owned())
                .await
                .map_err(|e| e.to_string())
        }));
        for task in self.domain.tasks(&self.ctx, self.shutdown.clone()) {
            parts.spawn(self.sup.supervise(task.name.into(), task.run));
        }
        let reaction: Arc<dyn privacy_bus::Reaction> = Arc::new(crate::react::KitReaction {
            ctx: self.ctx.clone(),
            domain: self.domain.clone(),
        });
        run_bus(
            self.spec,
            self.bus,
            self.store,
            self.handler,
            reaction,
            self.stats,
            self.ctx.links.clone(),
            self.health,
            self.shutdown,
            &self.sup,
            &mut parts,
        )
        .await;
        while parts.join_next().await.is_some() {}
        Ok(())
    }
}

/// Connects to NATS (retrying), ensures the streams, starts the ingest loops and the outbox
/// relay (supervised, in `parts`); reports SERVING once ingest runs, NOT_SERVING at shutdown.
/// Every loop restarts after an error it can retry (NATS, the network) until shutdown.
#[allow(clippy::too_many_arguments)]
async fn run_bus(
    spec: ServiceSpec,
    config: privacy_bus::BusConfig,
    store: EventStore,
    handler: Arc<dyn IngestHandler>,
    reaction: Arc<dyn privacy_bus::Reaction>,
    stats: Arc<IngestStats>,
    links: Arc<privacy_telemetry::TraceLinks>,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
    sup: &Supervisor,
    parts: &mut JoinSet<()>,
) {
    let client_name = format!("privacy-{}", spec.name);
    let client = tokio::select! {
        _ = shutdown.cancelled() => return,
        c = privacy_bus::connect(&config, &client_name) => match c {
            Ok(c) => c,
            Err(e) => {
                sup.fail(format!("NATS connection: {e}")).await;
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
        links: links.clone(),
    };
    for tail in spec.consumes() {
        let filter = format!("{}.in.{tail}", config.prefix);
        let ingest = ingest.clone();
        let shutdown = shutdown.clone();
        let name = format!("the ingest loop of {filter}");
        parts.spawn(sup.supervise(name, async move {
            while !shutdown.is_cancelled() {
                if let Err(e) = ingest.run(&filter, shutdown.clone()).await {
                    tracing::warn!(error = %e, filter, "ingest loop failed; restarting");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Ok(())
        }));
    }
    for (_, name, filter) in privacy_bus::reaction_consumers(&config)
        .into_iter()
        .filter(|(owner, _, _)| *owner == spec.name)
    {
        let (js, config, reaction) = (js.clone(), config.clone(), reaction.clone());
        let shutdown = shutdown.clone();
        let task = format!("the reaction loop of {filter}");
        parts.spawn(sup.supervise(task, async move {
            while !shutdown.is_cancelled() {
                let run = privacy_bus::run_reactions(
                    &js,
                    &config,
                    &name,
                    &filter,
                    reaction.clone(),
                    shutdown.clone(),
                );
                if let Err(e) = run.await {
                    tracing::warn!(error = %e, filter, "reaction loop failed; restarting");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Ok(())
        }));
    }
    let relay = OutboxRelay::new(js, store, spec.name, config).with_links(links);
    let relay_shutdown = shutdown.clone();
    parts.spawn(sup.supervise("the outbox relay".into(), async move {
        while !relay_shutdown.is_cancelled() {
            if let Err(e) = relay.run(relay_shutdown.clone()).await {
                // A corrupt cursor or record fails the same way every time: stop loudly.
                if let privacy_bus::BusError::Store(
                    privacy_event_store::StoreError::Corrupt { .. }
                    | privacy_event_store::StoreError::Invalid(_),
                ) = e
                {
                    return Err(e.to_string());
                }
                tracing::warn!(error = %e, "outbox relay failed; restarting");
                tokio::select! {
                    _ = relay_shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        Ok(())
    }));
    if shutdown.is_cancelled() {
        return;
    }
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health.set_serving::<AuditServiceServer<Audit>>().await;
    shutdown.cancelled().await;
    // Also after a fatal failure that raced with the SERVING above.
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    health.set_not_serving::<AuditServiceServer<Audit>>().await;
}
