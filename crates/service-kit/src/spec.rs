//! What a service is to the kit: a [`ServiceSpec`] (name, port, what it publishes, its
//! projections, its domain) and a [`DomainService`] (its rules, the domain events a user event
//! implies, its gRPC service). What a service consumes comes from the event catalogue.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use privacy_event_store::Projection;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::{Envelope, PersonalValue};
use privacy_proto::{DomainBody, EventType, Rejection, UserEvent};

use tokio_util::sync::CancellationToken;

use crate::door::ServiceContext;
use crate::tenants::Tenant;

/// What makes one service different from another.
#[derive(Clone, Copy)]
pub struct ServiceSpec {
    /// Short name: `consent`, `subject-requests`, `retention`, `disclosure-log`.
    pub name: &'static str,
    /// Default gRPC port (DESIGN §7).
    pub default_port: u16,
    /// Event types its outbox publishes on `privacy.evt.<service>.<event_type>`: user events it
    /// stores and domain events it emits, each in the event catalogue.
    pub publishes: &'static [&'static str],
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

    /// The subject filters (after `<prefix>.in.`) it consumes, from the event catalogue.
    pub fn consumes(&self) -> Vec<String> {
        EventType::filters_for(self.name)
    }

    /// Whether its outbox publishes events of this type: its own, and those every service
    /// emits through the kit (publisher `*`, e.g. `subject.shredded`).
    pub fn publishes(&self, event_type: &str) -> bool {
        self.publishes.contains(&event_type)
            || privacy_proto::catalogue::domain_event(event_type)
                .is_some_and(|d| d.publisher == privacy_proto::catalogue::ANY_SERVICE)
    }
}

/// What a service's domain adds to the shared runtime. The kit calls it from its one door, for
/// events from NATS, gRPC commands and emitted domain events alike.
pub trait DomainService: Send + Sync + 'static {
    /// The domain's rules for a contract-valid event of a known tenant. A refusal goes to the
    /// DLQ (or back to the caller). A refusal that may come from a view being behind is checked
    /// again once the views have caught up with the log, so it is never final by accident.
    fn check(&self, _tenant: &Tenant, _envelope: &Envelope) -> Result<(), Rejection> {
        Ok(())
    }

    /// Acts on another service's domain event the catalogue routes here
    /// (`privacy_proto::catalogue::CROSS_SERVICE`); on `subject.erased` the kit has shredded the
    /// subject's key here first. `seq` is its position in the publisher's log. The event is
    /// acked once this succeeds and redelivered otherwise: record effects as keyed events.
    fn react(
        &self,
        _ctx: &ServiceContext,
        _envelope: Envelope,
        _seq: Option<u64>,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Domain events a stored event implies, stored in the same atomic append. Each gets the id
    /// `<event_id>/<suffix>`, so a redelivery derives the same ids.
    fn derive(&self, _tenant: &Tenant, _envelope: &Envelope) -> Vec<Derived> {
        Vec::new()
    }

    /// Adds the service's own gRPC services (behind the role interceptor in `ctx.auth`).
    fn routes(&self, _ctx: &ServiceContext, _routes: &mut tonic::service::RoutesBuilder) {}

    /// The domain's long-running work (e.g. a deadline watcher), started once the views caught
    /// up with the log and supervised like the kit's own parts: an error stops the service
    /// loudly. Each task returns when `shutdown` is cancelled.
    fn tasks(&self, _ctx: &ServiceContext, _shutdown: CancellationToken) -> Vec<DomainTask> {
        Vec::new()
    }
}

/// A named, supervised task of a domain.
pub struct DomainTask {
    pub name: &'static str,
    pub run: futures::future::BoxFuture<'static, Result<(), String>>,
}

/// The domain of a skeleton service.
pub struct NoDomain;

impl DomainService for NoDomain {}

/// A sealing callback: seals every clear value of one personal-data map.
pub type SealMap<'a> = dyn FnMut(&'static str, &mut BTreeMap<String, PersonalValue>) -> Result<(), crate::door::DoorError>
    + 'a;

/// A typed domain-event body waiting to be sealed and encoded by the door.
pub(crate) trait PendingBody: Send {
    fn event_type(&self) -> &'static str;
    fn publisher(&self) -> &'static str;
    fn seal_and_encode(
        self: Box<Self>,
        seal: &mut SealMap<'_>,
    ) -> Result<Vec<u8>, crate::door::DoorError>;
}

impl<B: DomainBody + Send> PendingBody for B {
    fn event_type(&self) -> &'static str {
        B::EVENT_TYPE
    }

    fn publisher(&self) -> &'static str {
        B::PUBLISHER
    }

    fn seal_and_encode(
        mut self: Box<Self>,
        seal: &mut SealMap<'_>,
    ) -> Result<Vec<u8>, crate::door::DoorError> {
        for (name, map) in self.personal_maps() {
            seal(name, map)?;
        }
        Ok(self.encode_to_vec())
    }
}

/// What a derived event carries.
pub(crate) enum Body {
    /// A user-event payload (e.g. the withdrawal a privacy signal implies).
    User(Box<Payload>),
    /// A catalogue domain event.
    Domain(Box<dyn PendingBody>),
}

/// A domain event implied by a stored event; the door builds its envelope.
pub struct Derived {
    pub(crate) suffix: Cow<'static, str>,
    pub(crate) body: Body,
}

impl Derived {
    /// A derived user event (stored as if the backend had published it).
    pub fn user<E: UserEvent>(suffix: &'static str, event: E) -> Derived {
        Derived {
            suffix: Cow::Borrowed(suffix),
            body: Body::User(Box::new(event.into_payload())),
        }
    }

    /// A derived domain event of the catalogue; `suffix` tells it apart from the other events
    /// the same parent implies (e.g. `order-crm`).
    pub fn domain<B: DomainBody + Send + 'static>(
        suffix: impl Into<Cow<'static, str>>,
        body: B,
    ) -> Derived {
        Derived {
            suffix: suffix.into(),
            body: Body::Domain(Box::new(body)),
        }
    }
}
