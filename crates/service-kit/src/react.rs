//! How a service takes other services' domain events (the bus's [`Reaction`]): on
//! `subject.erased` the kit, in every service, shreds the subject's data key in this service's
//! vault, makes it durable, and records `subject.shredded` (keyed by the erasure, so once);
//! then every event the catalogue routes to the service (that one too) goes to its domain
//! ([`DomainService::react`]).

use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use privacy_bus::Reaction;
use privacy_proto::DomainBody;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::{Envelope, SubjectErased, SubjectShredded};
use prost::Message;

use crate::door::{Emit, ServiceContext, StreamKey};
use crate::spec::DomainService;

/// The reaction of one service.
pub(crate) struct KitReaction {
    pub ctx: ServiceContext,
    pub domain: Arc<dyn DomainService>,
}

impl Reaction for KitReaction {
    fn react(&self, envelope: Envelope, seq: Option<u64>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if envelope.event_type == SubjectErased::EVENT_TYPE {
                shred(&self.ctx, &envelope).await?;
            }
            self.domain.react(&self.ctx, envelope, seq).await
        })
    }
}

/// Destroys the subject's key here and records it.
async fn shred(ctx: &ServiceContext, envelope: &Envelope) -> Result<(), String> {
    let Some(Payload::DomainEvent(d)) = &envelope.payload else {
        return Err("subject.erased without a domain body".into());
    };
    let erased = SubjectErased::decode(d.body.as_slice()).map_err(|e| e.to_string())?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    ctx.vault
        .shred(&envelope.tenant, &envelope.subject_id, now)
        .and_then(|()| ctx.vault.sync())
        .map_err(|e| e.to_string())?;
    let key = format!("{}/shredded", erased.erasure_id);
    ctx.emit(Emit {
        tenant: envelope.tenant.clone(),
        subject_id: envelope.subject_id.clone(),
        body: SubjectShredded {
            erasure_id: erased.erasure_id,
            service: ctx.spec.name.into(),
        },
        stream: StreamKey::Subject,
        event_id: Some(key),
    })
    .await
    .map_err(|s| s.message().to_owned())?;
    tracing::info!(tenant = %envelope.tenant, "subject erased: its key is shredded here");
    Ok(())
}
