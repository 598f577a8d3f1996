//! `AuditService` over a service's own store: stream stored events, verify the hash chain,
//! report and rebuild projections, read a subject's timeline. Reads are for auditors and
//! operators; rebuilding is for operators only.

use std::pin::Pin;

use futures::Stream;
use privacy_event_store::{EventStore, Projector, RecordedEvent, StoreError};
use privacy_proto::v1::audit_service_server::AuditService;
use privacy_proto::v1::*;
use privacy_vocab::time::timestamp;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Caller, Role, require};
use crate::timeline::{SUBJECT_TIMELINE, read_timeline};

const READERS: &[Role] = &[Role::Auditor, Role::Operator];

/// The AuditService of one service.
#[derive(Clone)]
pub struct Audit {
    pub store: EventStore,
    pub projector: Projector,
    /// Stops server streams at shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Maps a store error to the gRPC status an operator can act on.
pub fn status_of(e: StoreError) -> Status {
    match e {
        StoreError::Conflict { .. } => Status::aborted(e.to_string()),
        StoreError::Invalid(m) => Status::invalid_argument(m),
        StoreError::TooLarge { .. } => Status::invalid_argument(format!("message: {e}")),
        StoreError::ConflictingDuplicate { .. } => Status::already_exists(format!("event_id: {e}")),
        StoreError::Storage(_) | StoreError::Closed => Status::unavailable(e.to_string()),
        StoreError::Corrupt { .. } | StoreError::Crypto(_) => Status::data_loss(e.to_string()),
    }
}

/// A stored event as the wire shows it.
pub fn stored_event(e: &RecordedEvent) -> Result<StoredEvent, Status> {
    let mut envelope = Envelope::decode(e.data.as_slice())
        .map_err(|err| Status::data_loss(format!("event {} does not decode: {err}", e.seq)))?;
    envelope.recorded_at = Some(timestamp(e.recorded_at_micros));
    Ok(StoredEvent {
        seq: e.seq,
        stream: e.stream.clone(),
        stream_version: e.stream_version,
        recorded_at: Some(timestamp(e.recorded_at_micros)),
        prev_hash: e.prev_hash.to_vec(),
        hash: e.hash.to_vec(),
        envelope: Some(envelope),
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn matches(req: &StreamEventsRequest, caller: &Caller, e: &StoredEvent) -> bool {
    let Some(env) = &e.envelope else { return false };
    (req.event_types.is_empty() || req.event_types.contains(&env.event_type))
        && caller.may_act_for(&env.tenant)
        && (req.tenant.is_empty() || req.tenant == env.tenant)
        && (req.subject_id.is_empty() || req.subject_id == env.subject_id)
}

#[tonic::async_trait]
impl AuditService for Audit {
    type StreamEventsStream = BoxStream<StoredEvent>;
    type RebuildProjectionsStream = BoxStream<RebuildProgress>;

    async fn stream_events(
        &self,
        request: Request<StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let caller = require(&request, READERS)?;
        let req = request.into_inner();
        if !req.subject_id.is_empty() && req.tenant.is_empty() {
            return Err(Status::invalid_argument("subject_id needs tenant"));
        }
        privacy_proto::validate::check_list_len(
            "event_types",
            req.event_types.len(),
            &privacy_proto::Limits::default(),
        )
        .map_err(crate::door::rejection_status)?;
        let (tx, rx) = mpsc::channel(256);
        let mut sub = self.store.subscribe(req.from_seq.max(1));
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let batch = if req.follow {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                        b = sub.next_batch(512) => b,
                    }
                } else {
                    match sub.try_next_batch(512) {
                        Ok(None) => return,
                        Ok(Some(b)) => Ok(b),
                        Err(e) => Err(e),
                    }
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(status_of(e))).await;
                        return;
                    }
                };
                for e in &batch {
                    let item = stored_event(e);
                    if let Ok(ev) = &item
                        && !matches(&req, &caller, ev)
                    {
                        continue;
                    }
                    if tx.send(item).await.is_err() {
                        return;
                    }
                    sent += 1;
                    if req.limit != 0 && sent >= req.limit {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn verify_chain(
        &self,
        request: Request<VerifyChainRequest>,
    ) -> Result<Response<VerifyChainResponse>, Status> {
        require(&request, READERS)?;
        let req = request.into_inner();
        let store = self.store.clone();
        let report = tokio::task::spawn_blocking(move || store.verify(req.from_seq, req.to_seq))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status_of)?;
        let (first_bad_seq, reason) = report.first_bad.unwrap_or_default();
        Ok(Response::new(VerifyChainResponse {
            ok: first_bad_seq == 0,
            events_checked: report.events_checked,
            first_bad_seq,
            reason,
            head_hash: report.head.hash.to_vec(),
            head_seq: report.head.seq,
        }))
    }

    async fn projection_status(
        &self,
        request: Request<ProjectionStatusRequest>,
    ) -> Result<Response<ProjectionStatusResponse>, Status> {
        require(&request, READERS)?;
        let projections = if request.get_ref().checkpoints_only {
            self.projector
                .checkpoints()
                .into_iter()
                .map(|(name, version, checkpoint)| ProjectionInfo {
                    name: name.to_owned(),
                    version,
                    checkpoint,
                    // No view walked: no digest, no count.
                    ..Default::default()
                })
                .collect()
        } else {
            let projector = self.projector.clone();
            tokio::task::spawn_blocking(move || projector.status())
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(status_of)?
                .into_iter()
                .map(|s| ProjectionInfo {
                    name: s.name,
                    version: s.version,
                    checkpoint: s.checkpoint,
                    digest: s.digest.to_vec(),
                    entries: s.entries,
                })
                .collect()
        };
        // The head after the checkpoints: no checkpoint passes it.
        Ok(Response::new(ProjectionStatusResponse {
            projections,
            head_seq: self.store.head().seq,
        }))
    }

    async fn rebuild_projections(
        &self,
        request: Request<RebuildProjectionsRequest>,
    ) -> Result<Response<Self::RebuildProjectionsStream>, Status> {
        require(&request, &[Role::Operator])?;
        let names: Vec<String> = {
            let req = request.into_inner();
            let known = self.projector.names();
            if req.names.is_empty() {
                known.iter().map(|n| (*n).to_owned()).collect()
            } else {
                for n in &req.names {
                    if !known.contains(&n.as_str()) {
                        return Err(Status::invalid_argument(format!(
                            "names: no projection {n:?} (known: {})",
                            known.join(", ")
                        )));
                    }
                }
                // Each named view once, however often it was named.
                let mut names = req.names;
                names.sort();
                names.dedup();
                names
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let projector = self.projector.clone();
        tokio::spawn(async move {
            for name in names {
                let progress_tx = tx.clone();
                let progress_name = name.clone();
                let result = projector
                    .rebuild(&name, move |applied, target| {
                        let _ = progress_tx.try_send(Ok(RebuildProgress {
                            name: progress_name.clone(),
                            applied,
                            target,
                            done: false,
                            digest: Vec::new(),
                        }));
                    })
                    .await;
                let item = result.map_err(status_of).map(|s| RebuildProgress {
                    name: s.name,
                    applied: s.checkpoint,
                    target: s.checkpoint,
                    done: true,
                    digest: s.digest.to_vec(),
                });
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_subject_timeline(
        &self,
        request: Request<GetSubjectTimelineRequest>,
    ) -> Result<Response<GetSubjectTimelineResponse>, Status> {
        require(&request, READERS)?;
        let req = request.into_inner();
        if req.tenant.is_empty() {
            return Err(Status::invalid_argument("tenant is required"));
        }
        if req.subject_id.is_empty() {
            return Err(Status::invalid_argument("subject_id is required"));
        }
        let view = self
            .projector
            .view(SUBJECT_TIMELINE)
            .ok_or_else(|| Status::internal("the timeline projection is not registered"))?;
        let entries = read_timeline(&view, &req.tenant, &req.subject_id).map_err(status_of)?;
        Ok(Response::new(GetSubjectTimelineResponse { entries }))
    }
}
