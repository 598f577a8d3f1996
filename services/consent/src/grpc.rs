//! `ConsentService` over gRPC. Commands go through the kit's one door: grants and withdrawals
//! as the same user events a backend would publish on NATS ([`ServiceContext::command`]), policy
//! versions as the `policy.published` domain event ([`ServiceContext::emit`]). Both answer once
//! the event is durable and the views have folded it, so a following `CheckConsent` sees it.

use std::sync::Arc;

use privacy_proto::v1::consent_service_server::{ConsentService, ConsentServiceServer};
use privacy_proto::v1::*;
use privacy_service_kit::audit::status_of;
use privacy_service_kit::auth::{Role, require};
use privacy_service_kit::{Command, Emit, ServiceContext, StreamKey, rejection_status};
use privacy_vocab::time::{micros, now_micros, timestamp};
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::ConsentDomain;
use crate::decision::{ConsentChange, RecordState, decide, policy_in_force, record_state};
use crate::view::to_change;

/// Registers `ConsentService` behind the role interceptor.
pub fn add_routes(
    ctx: &ServiceContext,
    domain: ConsentDomain,
    routes: &mut tonic::service::RoutesBuilder,
) {
    let api = ConsentApi {
        ctx: ctx.clone(),
        domain: Arc::new(domain),
    };
    routes.add_service(InterceptedService::new(
        ConsentServiceServer::new(api).max_decoding_message_size(ctx.limits.max_message_bytes),
        ctx.auth.clone(),
    ));
}

/// The ConsentService handlers.
#[derive(Clone)]
pub struct ConsentApi {
    ctx: ServiceContext,
    domain: Arc<ConsentDomain>,
}

impl ConsentApi {
    /// Fills each withdrawal's method from its stored event, opened with the vault (sealed at
    /// rest; `erased` once the subject's key is shredded).
    fn with_withdrawal_methods(
        &self,
        tenant: &str,
        mut entries: Vec<ConsentHistoryEntry>,
    ) -> Result<Vec<ConsentHistoryEntry>, Status> {
        use std::collections::btree_map::Entry;
        let mut opened: std::collections::BTreeMap<u64, String> = Default::default();
        for e in entries.iter_mut().filter(|e| e.change == "withdrawn") {
            e.withdrawal_method = match opened.entry(e.seq) {
                Entry::Occupied(o) => o.get().clone(),
                Entry::Vacant(v) => v.insert(self.withdrawal_method(tenant, e.seq)?).clone(),
            };
        }
        Ok(entries)
    }

    /// Fills each entry's ISO/IEC TS 27560 state at `now` (`entries`: one subject's history,
    /// one purpose with the every-purpose withdrawals, or all of them).
    fn with_states(
        &self,
        tenant: &privacy_service_kit::Tenant,
        subject: &str,
        entries: &mut [ConsentHistoryEntry],
        now: i64,
    ) -> Result<(), Status> {
        let policies = self.domain.reader.policies(&tenant.id).map_err(status_of)?;
        let child = self.domain.child_status(tenant, subject, now);
        let changes: Vec<(String, ConsentChange)> = entries
            .iter()
            .map(|e| (e.purpose.clone(), to_change(e)))
            .collect();
        for (e, (_, record)) in entries.iter_mut().zip(&changes) {
            let (state, why) = if e.purpose == "*" {
                (RecordState::Withdrawn, None)
            } else {
                let history: Vec<ConsentChange> = changes
                    .iter()
                    .filter(|(p, _)| *p == e.purpose || p == "*")
                    .map(|(_, c)| c.clone())
                    .collect();
                record_state(record, &history, &policies, child, &e.purpose, now)
            };
            e.state = state.as_str().into();
            e.state_reason = why.unwrap_or_default();
        }
        Ok(())
    }

    /// The method of the withdrawal stored at `seq`, opened for display.
    fn withdrawal_method(&self, tenant: &str, seq: u64) -> Result<String, Status> {
        let Some(stored) = self.ctx.store.get(seq).map_err(status_of)? else {
            return Ok(String::new());
        };
        let mut env = Envelope::decode(stored.data.as_slice())
            .map_err(|x| Status::data_loss(x.to_string()))?;
        if env.tenant != tenant {
            return Ok(String::new());
        }
        privacy_service_kit::personal::open_envelope(&self.ctx.vault, &mut env)
            .map_err(status_of)?;
        Ok(match env.payload {
            Some(envelope::Payload::ConsentWithdrawn(w)) if !w.method.is_empty() => w.method,
            Some(envelope::Payload::ConsentWithdrawn(w)) if w.personal.contains_key("method") => {
                "erased".into()
            }
            _ => String::new(),
        })
    }
}

#[tonic::async_trait]
impl ConsentService for ConsentApi {
    async fn publish_policy(
        &self,
        request: Request<PublishPolicyRequest>,
    ) -> Result<Response<PublishPolicyResponse>, Status> {
        require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        let tenant = self.ctx.tenant(&req.tenant)?;
        let effective_at = match req.effective_at {
            Some(t) => t,
            None => {
                // By default the policy takes effect at the next local midnight.
                let today = tenant
                    .local_date(now_micros())
                    .ok_or_else(|| Status::internal("the clock is out of range"))?;
                let tomorrow = today
                    .tomorrow()
                    .ok()
                    .and_then(|d| tenant.start_of(d))
                    .ok_or_else(|| Status::internal("the clock is out of range"))?;
                timestamp(tomorrow)
            }
        };
        let recorded = self
            .ctx
            .emit(Emit {
                tenant: tenant.id.clone(),
                subject_id: String::new(),
                body: PolicyPublished {
                    version: req.version.clone(),
                    notice_hash: req.notice_hash,
                    purposes: req.purposes,
                    material: req.material,
                    effective_at: Some(effective_at),
                },
                stream: StreamKey::Tenant("policies"),
                event_id: None,
            })
            .await?;
        Ok(Response::new(PublishPolicyResponse {
            version: req.version,
            effective_at: Some(effective_at),
            seq: recorded.position.seq,
        }))
    }

    async fn grant_consent(
        &self,
        request: Request<GrantConsentRequest>,
    ) -> Result<Response<GrantConsentResponse>, Status> {
        require(&request, &[Role::Backend, Role::Operator])?;
        let req = request.into_inner();
        let consent = req
            .consent
            .ok_or_else(|| Status::invalid_argument("consent: consent is required"))?;
        let purposes = consent.purposes.clone();
        let recorded = self
            .ctx
            .command(Command {
                tenant: req.tenant,
                subject_id: req.subject_id,
                event_id: req.event_id,
                occurred_at: req.occurred_at,
                source: req.source,
                correlation_id: String::new(),
                event: consent,
            })
            .await?;
        let (event_id, position) = (recorded.event_id, recorded.position);
        Ok(Response::new(GrantConsentResponse {
            record_ids: purposes.iter().map(|p| format!("{event_id}/{p}")).collect(),
            seq: position.seq,
            duplicate: position.duplicate,
        }))
    }

    async fn withdraw_consent(
        &self,
        request: Request<WithdrawConsentRequest>,
    ) -> Result<Response<WithdrawConsentResponse>, Status> {
        require(&request, &[Role::Backend, Role::Operator])?;
        let req = request.into_inner();
        let position = self
            .ctx
            .command(Command {
                tenant: req.tenant,
                subject_id: req.subject_id,
                event_id: req.event_id,
                occurred_at: req.occurred_at,
                source: req.source,
                correlation_id: String::new(),
                event: ConsentWithdrawn {
                    purposes: req.purposes,
                    method: req.method,
                    ..Default::default()
                },
            })
            .await?
            .position;
        Ok(Response::new(WithdrawConsentResponse {
            seq: position.seq,
            duplicate: position.duplicate,
        }))
    }

    async fn refuse_consent(
        &self,
        request: Request<RefuseConsentRequest>,
    ) -> Result<Response<RefuseConsentResponse>, Status> {
        require(&request, &[Role::Backend, Role::Operator])?;
        let req = request.into_inner();
        let refusal = req
            .refusal
            .ok_or_else(|| Status::invalid_argument("refusal: refusal is required"))?;
        let purposes = refusal.purposes.clone();
        let recorded = self
            .ctx
            .command(Command {
                tenant: req.tenant,
                subject_id: req.subject_id,
                event_id: req.event_id,
                occurred_at: req.occurred_at,
                source: req.source,
                correlation_id: String::new(),
                event: refusal,
            })
            .await?;
        let (event_id, position) = (recorded.event_id, recorded.position);
        Ok(Response::new(RefuseConsentResponse {
            record_ids: purposes.iter().map(|p| format!("{event_id}/{p}")).collect(),
            seq: position.seq,
            duplicate: position.duplicate,
        }))
    }

    async fn check_consent(
        &self,
        request: Request<CheckConsentRequest>,
    ) -> Result<Response<CheckConsentResponse>, Status> {
        require(&request, &[Role::Backend, Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        let tenant = self.ctx.tenant(&req.tenant)?;
        if req.subject_id.is_empty() {
            return Err(Status::invalid_argument("subject_id is required"));
        }
        if req.purpose.is_empty() {
            return Err(Status::invalid_argument("purpose is required"));
        }
        if let Some(as_of) = &req.as_of {
            privacy_proto::validate::check_timestamp("as_of", as_of).map_err(rejection_status)?;
        }
        let as_of = req.as_of.as_ref().map_or_else(now_micros, micros);
        let reader = &self.domain.reader;
        let history: Vec<_> = reader
            .history(&tenant.id, &req.subject_id, &req.purpose)
            .map_err(status_of)?
            .iter()
            .map(to_change)
            .collect();
        let policies = reader.policies(&tenant.id).map_err(status_of)?;
        let child = self.domain.child_status(tenant, &req.subject_id, as_of);
        let d = decide(
            tenant.basis_of(&req.purpose),
            &history,
            &policies,
            child,
            &req.purpose,
            as_of,
        );
        // Without a decisive record, name the policy in force at that instant.
        let policy_version = d
            .policy_version
            .clone()
            .or_else(|| policy_in_force(&policies, as_of).map(|p| p.version.clone()));
        Ok(Response::new(CheckConsentResponse {
            allowed: d.allowed,
            basis: d.basis.map(|b| b.as_str().to_owned()).unwrap_or_default(),
            reason: d.reason.map(|r| r.as_str().to_owned()).unwrap_or_default(),
            record_id: d.record_id.unwrap_or_default(),
            policy_version: policy_version.unwrap_or_default(),
            superseded_by: d.superseded_by.unwrap_or_default(),
            decided_by_seq: d.decided_by_seq.unwrap_or_default(),
            as_of: Some(timestamp(as_of)),
        }))
    }

    async fn get_consent_history(
        &self,
        request: Request<GetConsentHistoryRequest>,
    ) -> Result<Response<GetConsentHistoryResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        let tenant = self.ctx.tenant(&req.tenant)?;
        if req.subject_id.is_empty() {
            return Err(Status::invalid_argument("subject_id is required"));
        }
        let reader = &self.domain.reader;
        let entries = if req.purpose.is_empty() {
            reader.all_history(&tenant.id, &req.subject_id)
        } else {
            reader.history(&tenant.id, &req.subject_id, &req.purpose)
        }
        .map_err(status_of)?;
        let mut entries = self.with_withdrawal_methods(&tenant.id, entries)?;
        self.with_states(tenant, &req.subject_id, &mut entries, now_micros())?;
        Ok(Response::new(GetConsentHistoryResponse { entries }))
    }

    async fn export_consent_receipt(
        &self,
        request: Request<ExportConsentReceiptRequest>,
    ) -> Result<Response<ExportConsentReceiptResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        let tenant = self.ctx.tenant(&req.tenant)?;
        let (event_id, purpose) = req
            .record_id
            .rsplit_once('/')
            .ok_or_else(|| Status::invalid_argument("record_id: expected <event_id>/<purpose>"))?;
        let not_found =
            || Status::not_found(format!("record_id: no consent record {:?}", req.record_id));
        let seq = self
            .ctx
            .store
            .lookup(&tenant.id, event_id)
            .map_err(status_of)?
            .ok_or_else(not_found)?
            .position
            .seq;
        let stored = self
            .ctx
            .store
            .get(seq)
            .map_err(status_of)?
            .ok_or_else(not_found)?;
        let mut envelope = Envelope::decode(stored.data.as_slice())
            .map_err(|e| Status::data_loss(e.to_string()))?;
        if envelope.tenant != tenant.id || envelope.subject_id != req.subject_id {
            return Err(not_found());
        }
        privacy_service_kit::personal::open_envelope(&self.ctx.vault, &mut envelope)
            .map_err(status_of)?;
        let reader = &self.domain.reader;
        let mut history = reader
            .history(&tenant.id, &req.subject_id, purpose)
            .map_err(status_of)?;
        self.with_states(tenant, &req.subject_id, &mut history, now_micros())?;
        let record = history
            .iter()
            .find(|e| e.seq == seq && e.purpose == purpose)
            .cloned()
            .ok_or_else(not_found)?;
        let later: Vec<_> = history.into_iter().filter(|e| e.seq > seq).collect();
        let later = self.with_withdrawal_methods(&tenant.id, later)?;
        let policies = reader.policies(&tenant.id).map_err(status_of)?;
        let receipt =
            crate::receipt::receipt(tenant, &envelope, purpose, &policies, &later, &record)
                .ok_or_else(not_found)?;
        Ok(Response::new(ExportConsentReceiptResponse {
            receipt_json: serde_json::to_string_pretty(&receipt)
                .map_err(|e| Status::internal(e.to_string()))?,
        }))
    }
}
