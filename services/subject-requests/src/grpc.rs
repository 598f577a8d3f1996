//! `SubjectRequestService` over gRPC. `OpenRequest` is the `request.received` user event as a
//! command (the same checks as on NATS); every other step is a domain event emitted through the
//! kit's door while [`RequestsDomain::steps`] is held, and answers with the request as the view
//! shows it once the step is folded. An illegal step is FAILED_PRECONDITION naming the state.

use std::time::SystemTime;

use privacy_proto::v1::subject_request_service_server::{
    SubjectRequestService, SubjectRequestServiceServer,
};
use privacy_proto::v1::*;
use privacy_proto::{DomainBody, Rejection};
use privacy_service_kit::audit::status_of;
use privacy_service_kit::auth::{Role, require};
use privacy_service_kit::{Command, Emit, ServiceContext, StreamKey, check_code, rejection_status};
use privacy_vocab::time::{micros, now_micros};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::RequestsDomain;
use crate::deadlines::{ClockStart, binding_due_at};
use crate::domain::{check_transition, deadlines_at};
use crate::view::is_open;

/// Registers `SubjectRequestService` behind the role interceptor.
pub fn add_routes(
    ctx: &ServiceContext,
    domain: RequestsDomain,
    routes: &mut tonic::service::RoutesBuilder,
) {
    let api = RequestsApi {
        ctx: ctx.clone(),
        domain,
    };
    routes.add_service(InterceptedService::new(
        SubjectRequestServiceServer::new(api)
            .max_decoding_message_size(ctx.limits.max_message_bytes),
        ctx.auth.clone(),
    ));
}

/// The SubjectRequestService handlers.
#[derive(Clone)]
pub struct RequestsApi {
    ctx: ServiceContext,
    domain: RequestsDomain,
}

fn refused(r: Rejection) -> Status {
    rejection_status(r)
}

/// Most requests `ListRequests` returns.
const MAX_LIST: usize = 1000;

impl RequestsApi {
    fn load(&self, tenant: &str, id: &str) -> Result<SubjectRequest, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "request_id: request_id is required",
            ));
        }
        self.domain
            .reader
            .get(tenant, id)
            .map_err(status_of)?
            .ok_or_else(|| {
                Status::not_found(format!("request_id: tenant {tenant} has no such request"))
            })
    }

    /// Emits one step of request `id` (checked by the domain under the step lock) and answers
    /// with the request after it.
    async fn step<B: DomainBody + Send + 'static>(
        &self,
        tenant: &str,
        id: &str,
        body: impl FnOnce(&SubjectRequest) -> Result<B, Status>,
    ) -> Result<Response<RequestResponse>, Status> {
        let _step = self.domain.steps.lock().await;
        let request = self.load(tenant, id)?;
        check_transition(request.state(), B::EVENT_TYPE).map_err(refused)?;
        let body = body(&request)?;
        let recorded = self
            .ctx
            .emit(Emit {
                tenant: tenant.to_owned(),
                subject_id: request.subject_id.clone(),
                body,
                stream: StreamKey::Subject,
                event_id: None,
            })
            .await?;
        Ok(Response::new(RequestResponse {
            request: Some(self.load(tenant, id)?),
            seq: recorded.position.seq,
            duplicate: false,
        }))
    }
}

#[tonic::async_trait]
impl SubjectRequestService for RequestsApi {
    async fn open_request(
        &self,
        request: Request<OpenRequestRequest>,
    ) -> Result<Response<RequestResponse>, Status> {
        require(&request, &[Role::Backend, Role::Operator])?;
        let req = request.into_inner();
        let tenant = req.tenant.clone();
        let recorded = self
            .ctx
            .command(Command {
                tenant: req.tenant,
                subject_id: req.subject_id,
                event_id: req.event_id,
                occurred_at: req.received_at,
                source: req.source,
                correlation_id: String::new(),
                event: RequestReceived {
                    request_type: req.request_type,
                    channel: req.channel,
                    personal: req.personal,
                },
            })
            .await?;
        Ok(Response::new(RequestResponse {
            request: Some(self.load(&tenant, &recorded.event_id)?),
            seq: recorded.position.seq,
            duplicate: recorded.position.duplicate,
        }))
    }

    async fn verify_identity(
        &self,
        request: Request<VerifyIdentityRequest>,
    ) -> Result<Response<RequestResponse>, Status> {
        require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        check_code("method", &req.method, false).map_err(refused)?;
        let tenant = self.ctx.tenant(&req.tenant)?.clone();
        self.step(&req.tenant, &req.request_id, |r| {
            // Where the law counts from proof of identity, the clock starts now.
            let deadlines = r.deadlines.is_none().then(|| {
                deadlines_at(
                    &tenant,
                    r.request_type(),
                    now_micros(),
                    ClockStart::IdentityVerified,
                    false,
                )
            });
            Ok(RequestIdentityVerified {
                request_id: r.request_id.clone(),
                method: req.method.clone(),
                deadlines,
            })
        })
        .await
    }

    async fn start_request(
        &self,
        request: Request<StartRequestRequest>,
    ) -> Result<Response<RequestResponse>, Status> {
        require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        self.step(&req.tenant, &req.request_id, |r| {
            Ok(RequestStarted {
                request_id: r.request_id.clone(),
            })
        })
        .await
    }

    async fn extend_deadline(
        &self,
        request: Request<ExtendDeadlineRequest>,
    ) -> Result<Response<RequestResponse>, Status> {
        require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        check_code("reason", &req.reason, true).map_err(refused)?;
        let tenant = self.ctx.tenant(&req.tenant)?.clone();
        self.step(&req.tenant, &req.request_id, |r| {
            let Some(current) = r.deadlines.as_ref() else {
                return Err(Status::failed_precondition(
                    "request_id: the request's clock has not started (identity not verified)",
                ));
            };
            let start = current.clock_started_at.as_ref().map_or(0, micros);
            let how = if current.clock_start == ClockStart::IdentityVerified.as_str() {
                ClockStart::IdentityVerified
            } else {
                ClockStart::Received
            };
            let mut deadlines = deadlines_at(&tenant, r.request_type(), start, how, true);
            // The promise is not extended by the law's extension.
            deadlines.promise = current.promise.clone();
            Ok(RequestExtended {
                request_id: r.request_id.clone(),
                reason: req.reason.clone(),
                deadlines: Some(deadlines),
            })
        })
        .await
    }

    async fn pause_request(
        &self,
        request: Request<PauseRequestRequest>,
    ) -> Result<Response<RequestResponse>, Status> {
        require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        check_code("reason", &req.reason, true).map_err(refused)?;
        self.step(&req.tenant, &req.request_id, |r| {
            Ok(RequestPaused {
                request_id: r.request_id.clone(),
                reason: req.reason.clone(),
            })
        })
        .await
    }

    async fn resume_request(
        &self,
        request: Request<ResumeRequestRequest>,
    ) -> Result<Response<RequestResponse>, Status> {
        require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        self.step(&req.tenant, &req.request_id, |r| {
            Ok(RequestResumed {
                request_id: r.request_id.clone(),
            })
        })
        .await
    }

    async fn complete_request(
        &self,
        request: Request<CompleteRequestRequest>,
    ) -> Result<Response<RequestResponse>, Status> {
        require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        for (i, part) in req.parts_not_done.iter().enumerate() {
            check_code(&format!("parts_not_done[{i}].part"), &part.part, true).map_err(refused)?;
            check_code(&format!("parts_not_done[{i}].reason"), &part.reason, true)
                .map_err(refused)?;
        }
        self.step(&req.tenant, &req.request_id, |r| {
            Ok(RequestCompleted {
                request_id: r.request_id.clone(),
                parts_not_done: req.parts_not_done.clone(),
            })
        })
        .await
    }

    async fn reject_request(
        &self,
        request: Request<RejectRequestRequest>,
    ) -> Result<Response<RequestResponse>, Status> {
        require(&request, &[Role::Operator])?;
        let req = request.into_inner();
        check_code("reason", &req.reason, true).map_err(refused)?;
        check_code("legal_ground", &req.legal_ground, true).map_err(refused)?;
        self.step(&req.tenant, &req.request_id, |r| {
            Ok(RequestRejected {
                request_id: r.request_id.clone(),
                reason: req.reason.clone(),
                legal_ground: req.legal_ground.clone(),
            })
        })
        .await
    }

    async fn withdraw_request(
        &self,
        request: Request<WithdrawRequestRequest>,
    ) -> Result<Response<RequestResponse>, Status> {
        require(&request, &[Role::Operator, Role::Backend])?;
        let req = request.into_inner();
        self.step(&req.tenant, &req.request_id, |r| {
            Ok(RequestWithdrawn {
                request_id: r.request_id.clone(),
            })
        })
        .await
    }

    async fn get_request(
        &self,
        request: Request<GetRequestRequest>,
    ) -> Result<Response<RequestResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        Ok(Response::new(RequestResponse {
            request: Some(self.load(&req.tenant, &req.request_id)?),
            seq: 0,
            duplicate: false,
        }))
    }

    async fn list_requests(
        &self,
        request: Request<ListRequestsRequest>,
    ) -> Result<Response<ListRequestsResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        let as_of = req
            .as_of
            .as_ref()
            .map_or_else(|| micros(&SystemTime::now().into()), micros);
        let due_before = req.due_before.as_ref().map(micros);
        let limit = match req.limit {
            0 => MAX_LIST,
            n => (n as usize).min(MAX_LIST),
        };
        let mut requests: Vec<SubjectRequest> = self
            .domain
            .reader
            .all(&req.tenant)
            .map_err(status_of)?
            .into_iter()
            .filter(|r| req.states.is_empty() || req.states.contains(&r.state))
            .filter(|r| req.request_types.is_empty() || req.request_types.contains(&r.request_type))
            .filter(|r| {
                let due = r.deadlines.as_ref().and_then(binding_due_at);
                let open = is_open(r.state());
                (!req.overdue || (open && due.is_some_and(|d| d <= as_of)))
                    && due_before.is_none_or(|b| open && due.is_some_and(|d| d < b))
            })
            .collect();
        requests.sort_by(|a, b| {
            let at = |r: &SubjectRequest| r.received_at.as_ref().map_or(0, micros);
            at(b)
                .cmp(&at(a))
                .then_with(|| b.request_id.cmp(&a.request_id))
        });
        requests.truncate(limit);
        Ok(Response::new(ListRequestsResponse { requests }))
    }

    async fn get_access_report(
        &self,
        request: Request<GetAccessReportRequest>,
    ) -> Result<Response<GetAccessReportResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let credentials = request.metadata().get("authorization").cloned();
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        if req.subject_id.is_empty() {
            return Err(Status::invalid_argument(
                "subject_id: subject_id is required",
            ));
        }
        let report = crate::report::Report {
            ctx: &self.ctx,
            reader: &self.domain.reader,
            credentials,
        };
        let (json, missing) = report.build(&req.tenant, &req.subject_id).await?;
        Ok(Response::new(GetAccessReportResponse {
            json: json.to_string(),
            missing,
        }))
    }
}
