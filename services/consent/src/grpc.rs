//! `ConsentService` over gRPC. Commands build the same user events a backend would publish on
//! NATS and go through the same checks ([`ServiceContext::record`]); they answer once the event
//! is durable and the consent view has folded it, so a following `CheckConsent` sees it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use privacy_event_store::{ExpectedVersion, NewEvent};
use privacy_proto::v1::consent_service_server::{ConsentService, ConsentServiceServer};
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_service_kit::audit::{status_of, timestamp};
use privacy_service_kit::auth::{Role, require};
use privacy_service_kit::{ServiceContext, Tenant};
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::domain::{decide, policy_in_force};
use crate::view::{POLICY_PUBLISHED, micros, to_change};
use crate::{ConsentDomain, basis_of, zone_of};

/// How long a command waits for the consent view to fold its event.
const READ_YOUR_WRITES: Duration = Duration::from_secs(5);

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
        ConsentServiceServer::new(api),
        ctx.auth.clone(),
    ));
}

/// The ConsentService handlers.
#[derive(Clone)]
pub struct ConsentApi {
    ctx: ServiceContext,
    domain: Arc<ConsentDomain>,
}

fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

impl ConsentApi {
    fn tenant(&self, id: &str) -> Result<&Tenant, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("tenant is required"));
        }
        self.ctx.tenants.get(id).ok_or_else(|| {
            Status::not_found(format!("tenant: {id:?} is not in the tenant registry"))
        })
    }

    async fn caught_up(&self, seq: u64) -> Result<(), Status> {
        if self.ctx.projector.wait_for(seq, READ_YOUR_WRITES).await {
            Ok(())
        } else {
            Err(Status::unavailable(
                "the event is stored but the consent view has not caught up; retry the read",
            ))
        }
    }

    /// Records a command as the user event a backend would publish (same checks as NATS
    /// ingest) and waits until the consent view folded it. Returns the event id and position.
    async fn run_command(
        &self,
        tenant: &str,
        subject_id: &str,
        event_id: String,
        occurred_at: Option<prost_types::Timestamp>,
        source: String,
        payload: Payload,
    ) -> Result<(String, privacy_event_store::Position), Status> {
        let event_type = privacy_proto::EventType::of_payload(&payload)
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default();
        let envelope = Envelope {
            event_id: if event_id.is_empty() {
                uuid::Uuid::now_v7().to_string()
            } else {
                event_id
            },
            event_type,
            schema_version: 1,
            tenant: tenant.to_owned(),
            subject_id: subject_id.to_owned(),
            occurred_at: occurred_at.or_else(|| Some(SystemTime::now().into())),
            source: if source.is_empty() {
                "grpc".into()
            } else {
                source
            },
            payload: Some(payload),
            ..Default::default()
        };
        let event_id = envelope.event_id.clone();
        let position = self.ctx.record(self.domain.as_ref(), envelope).await?;
        self.caught_up(position.seq).await?;
        Ok((event_id, position))
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
        let tenant = self.tenant(&req.tenant)?;
        if req.version.is_empty() || req.version.len() > 64 {
            return Err(Status::invalid_argument("version: 1 to 64 characters"));
        }
        if req.notice_hash.is_empty() {
            return Err(Status::invalid_argument("notice_hash is required"));
        }
        for p in &req.purposes {
            if tenant.purpose(p).is_none() {
                return Err(Status::invalid_argument(format!(
                    "purposes: {p:?} is not in tenant {}'s catalog",
                    tenant.id
                )));
            }
        }
        let existing = self.domain.reader.policies(&tenant.id).map_err(status_of)?;
        if existing.iter().any(|p| p.version == req.version) {
            return Err(Status::already_exists(format!(
                "version: {:?} is already published",
                req.version
            )));
        }
        let effective_at = match req.effective_at {
            Some(t) => t,
            None => {
                let zone = zone_of(tenant);
                let tomorrow = jiff::Timestamp::now()
                    .to_zoned_datetime(zone.clone())
                    .date()
                    .tomorrow()
                    .and_then(|d| d.to_zoned_datetime(zone))
                    .map_err(|e| Status::internal(e.to_string()))?;
                timestamp(tomorrow.timestamp().as_microsecond())
            }
        };
        let body = PolicyPublished {
            version: req.version.clone(),
            notice_hash: req.notice_hash,
            purposes: req.purposes,
            material: req.material,
            effective_at: Some(effective_at),
        };
        let envelope = Envelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_type: POLICY_PUBLISHED.into(),
            schema_version: 1,
            tenant: tenant.id.clone(),
            occurred_at: Some(timestamp(now_micros())),
            source: "consent".into(),
            payload: Some(Payload::DomainEvent(DomainEvent {
                body: body.encode_to_vec(),
            })),
            ..Default::default()
        };
        let stream = format!("{}/-policies", tenant.id);
        // Two operators publishing at once: the second one's expectation fails (ABORTED).
        let expected =
            ExpectedVersion::Exact(self.ctx.store.stream_version(&stream).map_err(status_of)?);
        let positions = self
            .ctx
            .store
            .append(
                vec![NewEvent {
                    event_id: envelope.event_id.clone(),
                    stream,
                    event_type: POLICY_PUBLISHED.into(),
                    data: envelope.encode_to_vec(),
                    publish: true,
                }],
                expected,
            )
            .await
            .map_err(status_of)?;
        self.caught_up(positions[0].seq).await?;
        Ok(Response::new(PublishPolicyResponse {
            version: req.version,
            effective_at: Some(effective_at),
            seq: positions[0].seq,
        }))
    }

    async fn grant_consent(
        &self,
        request: Request<GrantConsentRequest>,
    ) -> Result<Response<GrantConsentResponse>, Status> {
        require(&request, &[Role::Backend, Role::Operator])?;
        let req = request.into_inner();
        self.tenant(&req.tenant)?;
        let consent = req
            .consent
            .ok_or_else(|| Status::invalid_argument("consent is required"))?;
        let purposes = consent.purposes.clone();
        let (event_id, position) = self
            .run_command(
                &req.tenant,
                &req.subject_id,
                req.event_id,
                req.occurred_at,
                req.source,
                Payload::ConsentGranted(consent),
            )
            .await?;
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
        self.tenant(&req.tenant)?;
        let (_, position) = self
            .run_command(
                &req.tenant,
                &req.subject_id,
                req.event_id,
                req.occurred_at,
                req.source,
                Payload::ConsentWithdrawn(ConsentWithdrawn {
                    purposes: req.purposes,
                    method: req.method,
                }),
            )
            .await?;
        Ok(Response::new(WithdrawConsentResponse {
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
        let tenant = self.tenant(&req.tenant)?;
        if req.subject_id.is_empty() {
            return Err(Status::invalid_argument("subject_id is required"));
        }
        if req.purpose.is_empty() {
            return Err(Status::invalid_argument("purpose is required"));
        }
        let as_of = req
            .as_of
            .as_ref()
            .map_or_else(now_micros, |t| micros(Some(t)));
        let reader = &self.domain.reader;
        let history: Vec<_> = reader
            .history(&tenant.id, &req.subject_id, &req.purpose)
            .map_err(status_of)?
            .iter()
            .map(to_change)
            .collect();
        let policies = reader.policies(&tenant.id).map_err(status_of)?;
        let child = self.domain.child_status(tenant, &req.subject_id);
        let d = decide(
            basis_of(tenant, &req.purpose),
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
            as_of: Some(timestamp(as_of)),
        }))
    }

    async fn get_consent_history(
        &self,
        request: Request<GetConsentHistoryRequest>,
    ) -> Result<Response<GetConsentHistoryResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        let tenant = self.tenant(&req.tenant)?;
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
        Ok(Response::new(GetConsentHistoryResponse { entries }))
    }

    async fn export_consent_receipt(
        &self,
        request: Request<ExportConsentReceiptRequest>,
    ) -> Result<Response<ExportConsentReceiptResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        let tenant = self.tenant(&req.tenant)?;
        let (event_id, purpose) = req
            .record_id
            .rsplit_once('/')
            .ok_or_else(|| Status::invalid_argument("record_id: expected <event_id>/<purpose>"))?;
        let not_found =
            || Status::not_found(format!("record_id: no consent record {:?}", req.record_id));
        let seq = self
            .ctx
            .store
            .position_of(event_id)
            .map_err(status_of)?
            .ok_or_else(not_found)?;
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
        let later: Vec<_> = reader
            .history(&tenant.id, &req.subject_id, purpose)
            .map_err(status_of)?
            .into_iter()
            .filter(|e| e.seq > seq)
            .collect();
        let policies = reader.policies(&tenant.id).map_err(status_of)?;
        let receipt =
            crate::receipt::receipt(tenant, &envelope, purpose, &policies, &later, now_micros())
                .ok_or_else(not_found)?;
        Ok(Response::new(ExportConsentReceiptResponse {
            receipt_json: serde_json::to_string_pretty(&receipt)
                .map_err(|e| Status::internal(e.to_string()))?,
        }))
    }
}
