//! `RetentionService` over gRPC: holdings with their schedule, due instant and holds, read from
//! the inventory view and the tenant file; legal holds placed and released as domain events on
//! the tenant's `-holds` stream (two operators at once: the second gets ABORTED); erasures
//! planned (`erasure.planned`, with its erase orders in the same commit) and their certificates;
//! triggers recorded (`trigger.observed`), schedules put (`schedule.put`, on the tenant's
//! `-schedules` stream, versioned per (category, purpose)) and the cohort counts anonymisation
//! left.

use std::time::SystemTime;

use privacy_proto::v1::retention_service_server::{RetentionService, RetentionServiceServer};
use privacy_proto::v1::*;
use privacy_service_kit::audit::status_of;
use privacy_service_kit::auth::{Role, require};
use privacy_service_kit::{Emit, ServiceContext, StreamKey, check_code, rejection_status};
use privacy_vocab::time::{micros, timestamp};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::RetentionDomain;
use crate::schedules::{due_at, governing};
use crate::view::covers;

/// Registers `RetentionService` behind the role interceptor.
pub fn add_routes(
    ctx: &ServiceContext,
    domain: RetentionDomain,
    routes: &mut tonic::service::RoutesBuilder,
) {
    let api = RetentionApi {
        ctx: ctx.clone(),
        domain,
    };
    routes.add_service(InterceptedService::new(
        RetentionServiceServer::new(api).max_decoding_message_size(ctx.limits.max_message_bytes),
        ctx.auth.clone(),
    ));
}

/// The RetentionService handlers.
#[derive(Clone)]
pub struct RetentionApi {
    ctx: ServiceContext,
    domain: RetentionDomain,
}

/// Most holdings one list returns.
const MAX_LIST: usize = 1000;

impl RetentionApi {
    /// Fills a holding's schedule, due instant and live holds.
    fn judge(
        &self,
        tenant: &str,
        schedules: &[Schedule],
        mut h: Holding,
        holds: &[LegalHold],
    ) -> Result<Holding, Status> {
        let facts = self
            .domain
            .reader
            .facts(tenant, &h.subject_id)
            .map_err(status_of)?;
        if let Some(s) = governing(schedules, &h) {
            match due_at(s, &h, &facts) {
                Ok(at) => h.due_at = Some(timestamp(at)),
                Err(note) => h.due_note = note,
            }
            h.schedule = Some(s.clone());
        } else {
            h.due_note = "no schedule covers this category and purpose".into();
        }
        h.hold_ids = holds
            .iter()
            .filter(|hold| covers(hold, &h))
            .map(|hold| hold.hold_id.clone())
            .collect();
        Ok(h)
    }

    fn erasure(&self, req: &GetErasureRequest) -> Result<Erasure, Status> {
        self.ctx.tenant(&req.tenant)?;
        if req.erasure_id.is_empty() {
            return Err(Status::invalid_argument(
                "erasure_id: erasure_id is required",
            ));
        }
        self.domain
            .reader
            .erasure(&req.tenant, &req.erasure_id)
            .map_err(status_of)?
            .ok_or_else(|| Status::not_found("erasure_id: no such erasure"))
    }

    /// The subject's earlier recipients, asked of disclosure-log with the caller's credentials.
    async fn recipients(
        &self,
        tenant: &str,
        subject: &str,
        credentials: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ) -> Result<Vec<Recipient>, Status> {
        use privacy_proto::v1::disclosure_log_service_client::DisclosureLogServiceClient;
        let channel = self.ctx.peer_channel("disclosure-log").await?;
        let mut request = Request::new(RecipientsToNotifyRequest {
            tenant: tenant.into(),
            subject_id: subject.into(),
        });
        if let Some(c) = credentials {
            request.metadata_mut().insert("authorization", c);
        }
        Ok(DisclosureLogServiceClient::new(channel)
            .recipients_to_notify(request)
            .await?
            .into_inner()
            .recipients)
    }

    fn holds(&self, tenant: &str) -> Result<Vec<LegalHold>, Status> {
        self.domain.reader.holds(tenant).map_err(status_of)
    }

    async fn hold_step<B: privacy_proto::DomainBody + Send + 'static>(
        &self,
        tenant: &str,
        hold_id: &str,
        body: B,
    ) -> Result<Response<LegalHoldResponse>, Status> {
        let recorded = self
            .ctx
            .emit(Emit {
                tenant: tenant.to_owned(),
                subject_id: String::new(),
                body,
                stream: StreamKey::Tenant("holds"),
                event_id: None,
            })
            .await?;
        Ok(Response::new(LegalHoldResponse {
            hold: self
                .domain
                .reader
                .hold(tenant, hold_id)
                .map_err(status_of)?,
            seq: recorded.position.seq,
        }))
    }
}

#[tonic::async_trait]
impl RetentionService for RetentionApi {
    async fn get_subject_holdings(
        &self,
        request: Request<GetSubjectHoldingsRequest>,
    ) -> Result<Response<GetSubjectHoldingsResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        if req.subject_id.is_empty() {
            return Err(Status::invalid_argument(
                "subject_id: subject_id is required",
            ));
        }
        let log_position = self.ctx.projector.checkpoint();
        let holds = self.holds(&req.tenant)?;
        let schedules = self.domain.tenant_schedules(&req.tenant)?;
        let reader = &self.domain.reader;
        let mut holdings = Vec::new();
        for h in reader
            .holdings(&req.tenant, &req.subject_id)
            .map_err(status_of)?
        {
            holdings.push(self.judge(&req.tenant, &schedules, h, &holds)?);
        }
        let deactivated_at = reader
            .deactivated_at(&req.tenant, &req.subject_id)
            .map_err(status_of)?
            .map(timestamp);
        Ok(Response::new(GetSubjectHoldingsResponse {
            holdings,
            deactivated_at,
            log_position,
        }))
    }

    async fn list_due(
        &self,
        request: Request<ListDueRequest>,
    ) -> Result<Response<ListDueResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        let as_of = req
            .as_of
            .unwrap_or_else(|| prost_types::Timestamp::from(SystemTime::now()));
        let now = micros(&as_of);
        let limit = match req.limit {
            0 => MAX_LIST,
            n => (n as usize).min(MAX_LIST),
        };
        let holds = self.holds(&req.tenant)?;
        let schedules = self.domain.tenant_schedules(&req.tenant)?;
        let mut out = ListDueResponse {
            as_of: Some(as_of),
            ..Default::default()
        };
        for h in self
            .domain
            .reader
            .all_holdings(&req.tenant)
            .map_err(status_of)?
        {
            if h.erased_at.is_some() {
                continue;
            }
            let h = self.judge(&req.tenant, &schedules, h, &holds)?;
            let list = if h.schedule.is_none() {
                &mut out.unscheduled
            } else if h.due_at.as_ref().is_none_or(|d| micros(d) > now) {
                continue;
            } else if h.hold_ids.is_empty() {
                &mut out.due
            } else {
                &mut out.held
            };
            if list.len() < limit {
                list.push(h);
            }
        }
        Ok(Response::new(out))
    }

    async fn place_legal_hold(
        &self,
        request: Request<PlaceLegalHoldRequest>,
    ) -> Result<Response<LegalHoldResponse>, Status> {
        require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        for (field, value, required) in [
            ("reason", &req.reason, true),
            ("placed_by", &req.placed_by, true),
            ("category", &req.category, false),
            ("system", &req.system, false),
        ] {
            check_code(field, value, required).map_err(rejection_status)?;
        }
        if !req.subject_id.is_empty() {
            privacy_proto::validate::check_subject_id(&req.subject_id, &self.ctx.limits)
                .map_err(rejection_status)?;
        }
        let hold = LegalHold {
            hold_id: uuid::Uuid::now_v7().to_string(),
            subject_id: req.subject_id,
            category: req.category,
            system: req.system,
            reason: req.reason,
            placed_by: req.placed_by,
            placed_at: Some(SystemTime::now().into()),
            ..Default::default()
        };
        let id = hold.hold_id.clone();
        self.hold_step(&req.tenant, &id, HoldPlaced { hold: Some(hold) })
            .await
    }

    async fn release_legal_hold(
        &self,
        request: Request<ReleaseLegalHoldRequest>,
    ) -> Result<Response<LegalHoldResponse>, Status> {
        require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        check_code("reason", &req.reason, true).map_err(rejection_status)?;
        if req.hold_id.is_empty() {
            return Err(Status::invalid_argument("hold_id: hold_id is required"));
        }
        let body = HoldReleased {
            hold_id: req.hold_id.clone(),
            reason: req.reason,
        };
        self.hold_step(&req.tenant, &req.hold_id, body).await
    }

    async fn list_legal_holds(
        &self,
        request: Request<ListLegalHoldsRequest>,
    ) -> Result<Response<ListLegalHoldsResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        let holds = self
            .holds(&req.tenant)?
            .into_iter()
            .filter(|h| req.include_released || h.released_at.is_none())
            .collect();
        Ok(Response::new(ListLegalHoldsResponse { holds }))
    }

    async fn plan_erasure(
        &self,
        request: Request<PlanErasureRequest>,
    ) -> Result<Response<ErasureResponse>, Status> {
        require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        let (erasure, seq) = crate::erasure::record_plan(
            &self.ctx,
            &self.domain,
            crate::erasure::PlanRequest {
                tenant: &req.tenant,
                subject_id: &req.subject_id,
                reason: &req.reason,
                request_id: &req.request_id,
                dry_run: req.dry_run,
                key: None,
            },
        )
        .await?;
        Ok(Response::new(ErasureResponse {
            erasure: Some(erasure),
            seq,
        }))
    }

    async fn get_erasure(
        &self,
        request: Request<GetErasureRequest>,
    ) -> Result<Response<ErasureResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        let erasure = self.erasure(&req)?;
        Ok(Response::new(ErasureResponse {
            erasure: Some(erasure),
            seq: 0,
        }))
    }

    async fn get_erasure_certificate(
        &self,
        request: Request<GetErasureRequest>,
    ) -> Result<Response<ErasureCertificate>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let credentials = request.metadata().get("authorization").cloned();
        let req = request.into_inner();
        let position = self.ctx.projector.checkpoint();
        let erasure = self.erasure(&req)?;
        if erasure.erased_at.is_none() {
            let waiting: Vec<&str> = erasure
                .orders
                .iter()
                .filter(|o| !o.answered)
                .map(|o| o.system.as_str())
                .collect();
            return Err(Status::failed_precondition(format!(
                "erasure_id: the erasure is not finished: waiting for {}",
                waiting.join(", ")
            )));
        }
        let mut cert = crate::erasure::certificate(&req.tenant, &erasure, position);
        if erasure.scope != "holdings" {
            match self
                .recipients(&req.tenant, &erasure.subject_id, credentials)
                .await
            {
                Ok(r) => cert.recipients_to_notify = r,
                Err(s) => cert.missing.push(format!(
                    "recipients of earlier disclosures to notify: disclosure-log did not \
                     answer: {:?}: {}",
                    s.code(),
                    s.message()
                )),
            }
        }
        Ok(Response::new(cert))
    }

    async fn record_trigger(
        &self,
        request: Request<RecordTriggerRequest>,
    ) -> Result<Response<RecordTriggerResponse>, Status> {
        require(&request, &[Role::Operator, Role::Backend])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        privacy_proto::validate::check_subject_id(&req.subject_id, &self.ctx.limits)
            .map_err(rejection_status)?;
        check_code("source", &req.source, true).map_err(rejection_status)?;
        if req.trigger == "consent_withdrawn" {
            return Err(Status::invalid_argument(
                "trigger: consent withdrawals come from consent (WithdrawConsent or consent.withdrawn)",
            ));
        }
        let body = TriggerObserved {
            trigger: req.trigger,
            purposes: req.purposes,
            at: Some(req.at.unwrap_or_else(|| SystemTime::now().into())),
            source: req.source,
            source_event_id: String::new(),
        };
        let recorded = self
            .ctx
            .emit(Emit {
                tenant: req.tenant,
                subject_id: req.subject_id,
                body,
                stream: StreamKey::Subject,
                event_id: None,
            })
            .await?;
        Ok(Response::new(RecordTriggerResponse {
            seq: recorded.position.seq,
        }))
    }

    async fn put_schedule(
        &self,
        request: Request<PutScheduleRequest>,
    ) -> Result<Response<ScheduleResponse>, Status> {
        require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        check_code("put_by", &req.put_by, true).map_err(rejection_status)?;
        let mut schedule = req
            .schedule
            .ok_or_else(|| Status::invalid_argument("schedule: schedule is required"))?;
        if schedule.purpose.is_empty() {
            schedule.purpose = "*".into();
        }
        check_code("schedule.category", &schedule.category, true).map_err(rejection_status)?;
        let _step = self.domain.steps.lock().await;
        let version = self
            .domain
            .tenant_schedules(&req.tenant)?
            .iter()
            .find(|s| s.category == schedule.category && s.purpose == schedule.purpose)
            .map_or(0, |s| s.version);
        schedule.version = version + 1;
        schedule.put_by = req.put_by;
        schedule.seq = 0;
        let (category, purpose) = (schedule.category.clone(), schedule.purpose.clone());
        self.ctx
            .emit(Emit {
                tenant: req.tenant.clone(),
                subject_id: String::new(),
                body: SchedulePut {
                    schedule: Some(schedule),
                },
                stream: StreamKey::Tenant("schedules"),
                event_id: None,
            })
            .await?;
        let schedule = self
            .domain
            .tenant_schedules(&req.tenant)?
            .into_iter()
            .find(|s| s.category == category && s.purpose == purpose);
        Ok(Response::new(ScheduleResponse { schedule }))
    }

    async fn list_schedules(
        &self,
        request: Request<ListSchedulesRequest>,
    ) -> Result<Response<ListSchedulesResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        Ok(Response::new(ListSchedulesResponse {
            schedules: self.domain.tenant_schedules(&req.tenant)?,
        }))
    }

    async fn get_cohort_counts(
        &self,
        request: Request<GetCohortCountsRequest>,
    ) -> Result<Response<GetCohortCountsResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        let log_position = self.ctx.projector.checkpoint();
        Ok(Response::new(GetCohortCountsResponse {
            cohorts: self.domain.reader.cohorts(&req.tenant).map_err(status_of)?,
            log_position,
        }))
    }
}
