//! The one door into a service's log. NATS user events ([`EnvelopeIngest`]), gRPC commands
//! ([`ServiceContext::command`]), emitted domain events ([`ServiceContext::emit`]) and the
//! domain events a stored event implies ([`crate::Derived`]) all pass through
//! [`ServiceContext`] here, which builds the envelope, validates it against the contract, runs
//! the domain's check, seals personal data, names the stream, marks what the outbox publishes,
//! and appends. No service builds an envelope or appends to its store itself (a tidy test in
//! `tests/e2e/tidy.rs` enforces it).
//!
//! **Idempotency.** An event's key is (`tenant`, `event_id`); its content digest is BLAKE3 of
//! the envelope as received (protobuf encoding, `recorded_at` cleared, before sealing — so the
//! same event sent as JSON or protobuf has one digest). The key is looked up *before* the
//! domain check: a redelivery of a stored event is answered as a duplicate (never refused by a
//! rule that its own effect now triggers), and the same key with other content is refused as
//! `conflicting_duplicate`. gRPC commands must carry `event_id` (the client's idempotency key,
//! reused on retries); their digest covers the fields the client sent, not the defaults the
//! door fills in, so a retry without `occurred_at` is still the same command.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use privacy_bus::{IngestHandler, Prepared, Transient};
use privacy_event_store::{
    EventStore, ExpectedVersion, HASH_LEN, MAX_RECORD_BYTES, NewEvent, Position, Projector,
    StoreError, Vault, content_digest,
};
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::{DomainEvent, Envelope, PersonalValue};
use privacy_proto::{DomainBody, Limits, Rejection, RejectionCode, UserEvent, validate_envelope};
use prost::Message;
use tonic::Status;

use crate::auth::AuthInterceptor;
use crate::personal::{seal_envelope, seal_map};
use crate::spec::{Body, Derived, DomainService, PendingBody, ServiceSpec};
use crate::tenants::{Tenant, TenantRegistry};

/// How long a command waits for the views to fold its event before answering.
const READ_YOUR_WRITES: Duration = Duration::from_secs(5);
/// How long a refused event waits for lagging views before its refusal is checked again.
const VIEW_WAIT: Duration = Duration::from_secs(5);

/// Everything a service's domain may use: read access to its store, views and tenants, and the
/// one door to write.
#[derive(Clone)]
pub struct ServiceContext {
    pub spec: ServiceSpec,
    /// For reads (`get`, `read`, `lookup`); writes go through the door.
    pub store: EventStore,
    pub vault: Arc<Vault>,
    pub projector: Projector,
    pub tenants: Arc<TenantRegistry>,
    pub auth: AuthInterceptor,
    pub limits: Limits,
    /// The other services' gRPC URLs, by service name (from the configuration).
    pub peers: Arc<BTreeMap<&'static str, String>>,
    /// The token presented to the other services for this service's own calls, if configured.
    pub peer_token: Option<Arc<str>>,
    /// The span that committed each event still to be published (read by the outbox relay).
    pub links: Arc<privacy_telemetry::TraceLinks>,
    domain: Arc<OnceLock<Arc<dyn DomainService>>>,
}

/// Why an event did not get through the door.
#[derive(Debug, thiserror::Error)]
pub enum DoorError {
    /// The event breaks the contract or a rule: refuse it.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Sealing personal data or appending failed: try again later.
    #[error("store or vault: {0}")]
    Store(#[from] StoreError),
    /// A domain check refused the event while the views were behind the log, and they did not
    /// catch up in time: try again later rather than refuse for good.
    #[error("the views are at {checkpoint}, behind the log's head {head}; retry")]
    ViewsBehind { checkpoint: u64, head: u64 },
    /// The service's domain is not wired yet (a start-up bug).
    #[error("the service's domain is not set")]
    NoDomain,
}

impl DoorError {
    /// A store error as the door reports it: a reused key or an oversized event is the
    /// event's fault (refused), anything else is the store's (retried).
    fn from_store(e: StoreError) -> DoorError {
        match e {
            StoreError::ConflictingDuplicate { event_id, seq, .. } => {
                DoorError::Rejected(conflicting(&event_id, seq))
            }
            StoreError::TooLarge { bytes, max, .. } => DoorError::Rejected(Rejection::new(
                RejectionCode::TooLarge,
                "message",
                format!("the event is {bytes} bytes once stored; the limit is {max}"),
            )),
            e => DoorError::Store(e),
        }
    }

    /// The gRPC status an operator can act on.
    pub fn status(self) -> Status {
        match self {
            DoorError::Rejected(r) => rejection_status(r),
            DoorError::Store(e) => crate::audit::status_of(e),
            e @ DoorError::ViewsBehind { .. } => Status::unavailable(e.to_string()),
            e @ DoorError::NoDomain => Status::internal(e.to_string()),
        }
    }
}

/// The gRPC status of a refused command: INVALID_ARGUMENT naming the field, NOT_FOUND for an
/// unknown tenant, ALREADY_EXISTS, or FAILED_PRECONDITION when a rule forbids it.
pub fn rejection_status(r: Rejection) -> Status {
    let message = format!("{}: {}", r.field, r.reason);
    match r.code {
        RejectionCode::UnknownTenant => Status::not_found(message),
        RejectionCode::Forbidden => Status::failed_precondition(message),
        RejectionCode::AlreadyExists | RejectionCode::ConflictingDuplicate => {
            Status::already_exists(message)
        }
        _ => Status::invalid_argument(message),
    }
}

/// A code an operator gives (a reason, a method, who placed a hold): letters, digits and
/// `- _ . : ( )`, 1–64 characters — never free text, which could name a person.
pub fn check_code(field: &str, code: &str, required: bool) -> Result<(), Rejection> {
    if code.is_empty() {
        return if required {
            Err(Rejection::new(
                RejectionCode::MissingField,
                field,
                format!("{field} is required"),
            ))
        } else {
            Ok(())
        };
    }
    if code.len() > 64
        || !code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:()".contains(&b))
    {
        return Err(Rejection::new(
            RejectionCode::InvalidField,
            field,
            format!(
                "{field} is a code: at most 64 letters, digits and - _ . : ( ) (the value is not \
                 repeated here)"
            ),
        ));
    }
    Ok(())
}

fn conflicting(event_id: &str, seq: Option<u64>) -> Rejection {
    let at = seq.map_or_else(String::new, |s| format!(" (event {s})"));
    Rejection::new(
        RejectionCode::ConflictingDuplicate,
        "event_id",
        format!(
            "event_id {event_id:?} is already stored{at} with other content; \
             a new event needs a new event_id"
        ),
    )
}

/// The content digest of an envelope as received (see the module's idempotency notes).
fn digest_of(envelope: &Envelope) -> [u8; HASH_LEN] {
    if envelope.recorded_at.is_none() {
        content_digest(&envelope.encode_to_vec())
    } else {
        let mut copy = envelope.clone();
        copy.recorded_at = None;
        content_digest(&copy.encode_to_vec())
    }
}

/// What the door made of a user event.
#[derive(Debug)]
pub enum Admitted {
    /// New: append these atomically (the user event first).
    New(Vec<NewEvent>),
    /// Stored before with the same content: nothing to append.
    Duplicate(Position),
}

/// A user event given as a gRPC command.
#[derive(Debug, Clone, Default)]
pub struct Command<E> {
    pub tenant: String,
    pub subject_id: String,
    /// The caller's idempotency key (required; a UUID is best). A retry must reuse it: the
    /// command is then answered with the first one's record, never stored twice.
    pub event_id: String,
    /// Now when absent.
    pub occurred_at: Option<prost_types::Timestamp>,
    /// The calling system; `grpc` when empty.
    pub source: String,
    pub correlation_id: String,
    pub event: E,
}

/// Which stream an emitted domain event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKey {
    /// The subject's stream (`<tenant>/<subject>`, or `<tenant>/-` without a subject).
    Subject,
    /// A tenant-wide aggregate `<tenant>/-<name>`, appended only if it did not change between
    /// the domain check and the append (two operators at once: the second gets ABORTED).
    Tenant(&'static str),
}

/// A domain event a service emits for an operator's command.
#[derive(Debug, Clone)]
pub struct Emit<B> {
    pub tenant: String,
    pub subject_id: String,
    pub body: B,
    pub stream: StreamKey,
    /// An idempotency key, for an event that must exist at most once (e.g. `<request>/overdue`):
    /// emitting it again with the same body answers with the first one's position; with another
    /// body it is refused as `conflicting_duplicate`. `None`: a fresh UUIDv7.
    pub event_id: Option<String>,
}

/// Where a command's event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub event_id: String,
    pub position: Position,
}

fn stream_of(tenant: &str, subject: &str, key: StreamKey) -> String {
    match key {
        StreamKey::Tenant(name) => format!("{tenant}/-{name}"),
        StreamKey::Subject if subject.is_empty() => format!("{tenant}/-"),
        StreamKey::Subject => format!("{tenant}/{subject}"),
    }
}

impl ServiceContext {
    pub(crate) fn new(
        spec: ServiceSpec,
        store: EventStore,
        vault: Arc<Vault>,
        projector: Projector,
        tenants: Arc<TenantRegistry>,
        auth: AuthInterceptor,
        peers: BTreeMap<&'static str, String>,
    ) -> ServiceContext {
        ServiceContext {
            spec,
            store,
            vault,
            projector,
            tenants,
            auth,
            peers: Arc::new(peers),
            peer_token: None,
            limits: Limits::default(),
            links: Arc::default(),
            domain: Arc::default(),
        }
    }

    /// Creates the service's domain and wires it behind the door.
    pub(crate) fn install_domain(&self) -> Arc<dyn DomainService> {
        let domain = (self.spec.domain)(self);
        let _ = self.domain.set(domain.clone());
        domain
    }

    fn domain(&self) -> Result<&Arc<dyn DomainService>, DoorError> {
        self.domain.get().ok_or(DoorError::NoDomain)
    }

    /// Waits until `sub` yields an event of one of `types` and the views have folded it (or
    /// `fold_wait` passed): what a domain task that reacts to stored events waits on.
    pub async fn stored(
        &self,
        sub: &mut privacy_event_store::Subscription,
        types: &[&str],
        fold_wait: Duration,
    ) -> Result<(), StoreError> {
        loop {
            let batch = sub.next_batch(1024).await?;
            if let Some(last) = batch
                .iter()
                .rev()
                .find(|e| types.contains(&e.event_type.as_str()))
            {
                self.projector.wait_for(last.seq, fold_wait).await;
                return Ok(());
            }
        }
    }

    /// A gRPC channel to another service at its configured URL (`PRIVACY_<SERVICE>_URL`): two
    /// seconds to connect, ten for each call; UNAVAILABLE saying why when it cannot connect.
    pub async fn peer_channel(&self, service: &str) -> Result<tonic::transport::Channel, Status> {
        let url = self.peers.get(service).cloned().unwrap_or_default();
        tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| Status::invalid_argument(format!("{service} URL {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot connect to {service} at {url}: {e}")))
    }

    /// A tenant of the registry, or NOT_FOUND naming the field.
    pub fn tenant(&self, id: &str) -> Result<&Tenant, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("tenant: tenant is required"));
        }
        self.known_tenant(id).map_err(rejection_status)
    }

    fn known_tenant(&self, id: &str) -> Result<&Tenant, Rejection> {
        self.tenants.get(id).ok_or_else(|| {
            Rejection::new(
                RejectionCode::UnknownTenant,
                "tenant",
                format!(
                    "the tenant is not in the tenant registry ({} characters; the value is not \
                     repeated here)",
                    id.chars().count()
                ),
            )
        })
    }

    /// Runs the domain's check; a refusal while the views lag the log is checked again once
    /// they caught up (or becomes [`DoorError::ViewsBehind`]), never refused for good.
    async fn check(
        &self,
        domain: &dyn DomainService,
        tenant: &Tenant,
        envelope: &Envelope,
    ) -> Result<(), DoorError> {
        let head = self.store.head().seq;
        match domain.check(tenant, envelope) {
            Ok(()) => Ok(()),
            Err(r) if self.projector.checkpoint() >= head => Err(r.into()),
            Err(_) => {
                if !self.projector.wait_for(head, VIEW_WAIT).await {
                    return Err(DoorError::ViewsBehind {
                        checkpoint: self.projector.checkpoint(),
                        head,
                    });
                }
                domain.check(tenant, envelope).map_err(DoorError::from)
            }
        }
    }

    fn seal(
        &self,
        tenant: &str,
        subject: &str,
    ) -> impl FnMut(&'static str, &mut BTreeMap<String, PersonalValue>) -> Result<(), DoorError> + '_
    {
        let (tenant, subject) = (tenant.to_owned(), subject.to_owned());
        move |name, map| Ok(seal_map(&self.vault, &tenant, &subject, name, map)?)
    }

    /// The door for a decoded user event: contract, tenant, the idempotency key, domain check,
    /// implied events, sealing, stream. `content` is the event's digest when the caller
    /// computed it (a gRPC command), else that of `envelope`.
    pub async fn admit(
        &self,
        mut envelope: Envelope,
        subject_type: Option<&str>,
        now: SystemTime,
        content: Option<[u8; HASH_LEN]>,
    ) -> Result<Admitted, DoorError> {
        validate_envelope(&envelope, subject_type, now, &self.limits)?;
        let content = content.unwrap_or_else(|| digest_of(&envelope));
        let domain = self.domain()?.clone();
        let tenant = self.known_tenant(&envelope.tenant)?;
        if let Some(known) = self.store.lookup(&tenant.id, &envelope.event_id)? {
            if !known.same_content(&content) {
                return Err(conflicting(&envelope.event_id, Some(known.position.seq)).into());
            }
            return Ok(Admitted::Duplicate(known.position));
        }
        self.check(domain.as_ref(), tenant, &envelope).await?;
        let derived = domain.derive(tenant, &envelope);
        envelope.recorded_at = None;
        let stream = stream_of(&envelope.tenant, &envelope.subject_id, StreamKey::Subject);
        let mut events = Vec::with_capacity(1 + derived.len());
        for d in derived {
            events.push(self.derived(&envelope, &content, &stream, d)?);
        }
        seal_envelope(&self.vault, &mut envelope)?;
        events.insert(0, self.new_event(&envelope, stream, content));
        if let Some(e) = events.iter().find(|e| e.stored_len() > MAX_RECORD_BYTES) {
            return Err(DoorError::Rejected(Rejection::new(
                RejectionCode::TooLarge,
                "message",
                format!(
                    "the event is {} bytes once sealed and stored; the limit is {MAX_RECORD_BYTES}",
                    e.stored_len()
                ),
            )));
        }
        Ok(Admitted::New(events))
    }

    fn new_event(&self, envelope: &Envelope, stream: String, content: [u8; HASH_LEN]) -> NewEvent {
        NewEvent {
            scope: envelope.tenant.clone(),
            event_id: envelope.event_id.clone(),
            stream,
            publish: self.spec.publishes(&envelope.event_type),
            event_type: envelope.event_type.clone(),
            data: envelope.encode_to_vec(),
            content,
        }
    }

    /// The envelope of a domain event implied by `parent`, sealed. Its content digest derives
    /// from the parent's, so a redelivered parent implies the very same events.
    fn derived(
        &self,
        parent: &Envelope,
        parent_content: &[u8; HASH_LEN],
        stream: &str,
        d: Derived,
    ) -> Result<NewEvent, DoorError> {
        let (event_type, payload) = match d.body {
            Body::User(payload) => {
                let t = privacy_proto::EventType::of_payload(&payload)
                    .map(|t| t.as_str())
                    .unwrap_or_default();
                (t, *payload)
            }
            Body::Domain(body) => {
                self.check_publisher(body.as_ref())?;
                let t = body.event_type();
                let mut seal = self.seal(&parent.tenant, &parent.subject_id);
                let bytes = body.seal_and_encode(&mut seal)?;
                (t, Payload::DomainEvent(DomainEvent { body: bytes }))
            }
        };
        let mut envelope = Envelope {
            event_id: format!("{}/{}", parent.event_id, d.suffix),
            event_type: event_type.to_owned(),
            schema_version: 1,
            tenant: parent.tenant.clone(),
            subject_id: parent.subject_id.clone(),
            occurred_at: parent.occurred_at,
            source: self.spec.name.to_owned(),
            correlation_id: parent.correlation_id.clone(),
            causation_id: parent.event_id.clone(),
            payload: Some(payload),
            ..Default::default()
        };
        let mut content = parent_content.to_vec();
        content.extend_from_slice(envelope.event_id.as_bytes());
        let content = content_digest(&content);
        // A user payload's personal maps; a domain body was sealed above.
        seal_envelope(&self.vault, &mut envelope)?;
        Ok(self.new_event(&envelope, stream.to_owned(), content))
    }

    fn check_publisher(&self, body: &dyn PendingBody) -> Result<(), Rejection> {
        let any = body.publisher() == privacy_proto::catalogue::ANY_SERVICE;
        if !any && body.publisher() != self.spec.name {
            return Err(Rejection::new(
                RejectionCode::UnknownEventType,
                "event_type",
                format!(
                    "{} is published by {}, not {}",
                    body.event_type(),
                    body.publisher(),
                    self.spec.name
                ),
            ));
        }
        Ok(())
    }

    /// Appends admitted events and waits until every view folded them.
    async fn append(
        &self,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
    ) -> Result<Position, DoorError> {
        self.vault.sync()?;
        let span = tracing::info_span!("store", service = self.spec.name, events = events.len());
        for event in events.iter().filter(|e| e.publish) {
            self.links.remember(&event.scope, &event.event_id, &span);
        }
        let positions = tracing::Instrument::instrument(self.store.append(events, expected), span)
            .await
            .map_err(DoorError::from_store)?;
        self.folded(positions[0]).await
    }

    /// `position` once every view folded it (read your writes), or [`DoorError::ViewsBehind`].
    async fn folded(&self, position: Position) -> Result<Position, DoorError> {
        if !self
            .projector
            .wait_for(position.seq, READ_YOUR_WRITES)
            .await
        {
            return Err(DoorError::ViewsBehind {
                checkpoint: self.projector.checkpoint(),
                head: position.seq,
            });
        }
        Ok(position)
    }

    /// Records a user event given as a gRPC command, with exactly the checks NATS ingest
    /// applies; answers once it is durable and the views have folded it.
    pub async fn command<E: UserEvent>(&self, cmd: Command<E>) -> Result<Recorded, Status> {
        if cmd.event_id.is_empty() {
            return Err(rejection_status(Rejection::new(
                RejectionCode::MissingField,
                "event_id",
                "event_id is required: the command's idempotency key (a UUID), reused when \
                 the call is retried",
            )));
        }
        let mut envelope = Envelope {
            event_id: cmd.event_id,
            event_type: E::TYPE.as_str().to_owned(),
            schema_version: 1,
            tenant: cmd.tenant,
            subject_id: cmd.subject_id,
            occurred_at: cmd.occurred_at,
            source: cmd.source,
            correlation_id: cmd.correlation_id,
            payload: Some(cmd.event.into_payload()),
            ..Default::default()
        };
        // The digest of what the client sent, before the defaults below.
        let content = digest_of(&envelope);
        envelope.occurred_at = envelope
            .occurred_at
            .or_else(|| Some(SystemTime::now().into()));
        if envelope.source.is_empty() {
            envelope.source = "grpc".into();
        }
        let event_id = envelope.event_id.clone();
        let run = async {
            match self
                .admit(envelope, None, SystemTime::now(), Some(content))
                .await?
            {
                // Answered once the views show the first call's record, as that call was.
                Admitted::Duplicate(position) => self.folded(position).await,
                Admitted::New(events) => self.append(events, ExpectedVersion::Any).await,
            }
        };
        let position = run.await.map_err(DoorError::status)?;
        Ok(Recorded { event_id, position })
    }

    /// Records a domain event of the catalogue that an operator's command produces (e.g. a
    /// policy version): the domain checks it, the events it implies ([`DomainService::derive`])
    /// are appended with it atomically, personal fields are sealed, and it is published if the
    /// spec says so.
    pub async fn emit<B: DomainBody + Send + 'static>(
        &self,
        emit: Emit<B>,
    ) -> Result<Recorded, Status> {
        let run = async {
            let domain = self.domain()?.clone();
            let tenant = self.known_tenant(&emit.tenant)?;
            self.check_publisher(&emit.body)?;
            if !emit.subject_id.is_empty() {
                privacy_proto::validate::check_subject_id(&emit.subject_id, &self.limits)?;
            }
            let keyed = emit.event_id.as_ref().map(|id| {
                let mut bytes = Vec::new();
                for part in [B::EVENT_TYPE, &emit.tenant, &emit.subject_id] {
                    bytes.extend_from_slice(part.as_bytes());
                    bytes.push(0);
                }
                bytes.extend_from_slice(&emit.body.encode_to_vec());
                (id.clone(), content_digest(&bytes))
            });
            if let Some((id, content)) = &keyed
                && let Some(known) = self.store.lookup(&tenant.id, id)?
            {
                if !known.same_content(content) {
                    return Err(conflicting(id, Some(known.position.seq)).into());
                }
                let mut position = self.folded(known.position).await?;
                position.duplicate = true;
                return Ok(Recorded {
                    event_id: id.clone(),
                    position,
                });
            }
            let stream = stream_of(&emit.tenant, &emit.subject_id, emit.stream);
            let expected = match emit.stream {
                StreamKey::Tenant(_) => ExpectedVersion::Exact(self.store.stream_version(&stream)?),
                StreamKey::Subject => ExpectedVersion::Any,
            };
            let mut envelope = Envelope {
                event_id: keyed
                    .as_ref()
                    .map_or_else(|| uuid::Uuid::now_v7().to_string(), |(id, _)| id.clone()),
                event_type: B::EVENT_TYPE.to_owned(),
                schema_version: 1,
                tenant: emit.tenant.clone(),
                subject_id: emit.subject_id.clone(),
                occurred_at: Some(SystemTime::now().into()),
                source: self.spec.name.to_owned(),
                payload: Some(Payload::DomainEvent(DomainEvent {
                    body: emit.body.encode_to_vec(),
                })),
                ..Default::default()
            };
            self.check(domain.as_ref(), tenant, &envelope).await?;
            let content = keyed.map_or_else(|| digest_of(&envelope), |(_, c)| c);
            // What this step implies (e.g. the orders a started request sends), appended with
            // it in one commit.
            let mut derived = Vec::new();
            for d in domain.derive(tenant, &envelope) {
                derived.push(self.derived(&envelope, &content, &stream, d)?);
            }
            let mut seal = self.seal(&emit.tenant, &emit.subject_id);
            let body = Box::new(emit.body).seal_and_encode(&mut seal)?;
            envelope.payload = Some(Payload::DomainEvent(DomainEvent { body }));
            let event_id = envelope.event_id.clone();
            derived.insert(0, self.new_event(&envelope, stream, content));
            let position = self.append(derived, expected).await?;
            Ok::<_, DoorError>(Recorded { event_id, position })
        };
        run.await.map_err(DoorError::status)
    }
}

/// NATS ingest through the door.
pub(crate) struct EnvelopeIngest {
    pub ctx: ServiceContext,
}

impl IngestHandler for EnvelopeIngest {
    fn prepare<'a>(
        &'a self,
        envelope: Envelope,
        subject_type: Option<&'a str>,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Prepared, Transient>> {
        Box::pin(async move {
            match self.ctx.admit(envelope, subject_type, now, None).await {
                Ok(Admitted::New(events)) => Ok(Prepared::Store(events)),
                Ok(Admitted::Duplicate(_)) => Ok(Prepared::Duplicate),
                Err(DoorError::Rejected(r)) => Ok(Prepared::Reject(r)),
                Err(e) => Err(Transient(Box::new(e))),
            }
        })
    }

    fn before_append(&self) -> Result<(), Transient> {
        self.ctx.vault.sync().map_err(|e| Transient(Box::new(e)))
    }
}
