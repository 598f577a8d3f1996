//! `DisclosureLogService` over gRPC: `RecordDisclosure` is the `data.disclosed` command (the same
//! checks as on NATS); the reads come from the ledger view with personal fields opened for
//! display (or shown erased after the subject's erasure).

use std::collections::BTreeMap;
use std::time::SystemTime;

use privacy_proto::v1::disclosure_log_service_server::{
    DisclosureLogService, DisclosureLogServiceServer,
};
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_service_kit::audit::status_of;
use privacy_service_kit::auth::{Role, require};
use privacy_service_kit::{Command, ServiceContext};
use privacy_vocab::time::{micros, timestamp};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::DisclosureDomain;
use crate::view::Index;

/// Registers `DisclosureLogService` behind the role interceptor.
pub fn add_routes(
    ctx: &ServiceContext,
    domain: DisclosureDomain,
    routes: &mut tonic::service::RoutesBuilder,
) {
    let api = DisclosureApi {
        ctx: ctx.clone(),
        domain,
    };
    routes.add_service(InterceptedService::new(
        DisclosureLogServiceServer::new(api)
            .max_decoding_message_size(ctx.limits.max_message_bytes),
        ctx.auth.clone(),
    ));
}

/// The DisclosureLogService handlers.
#[derive(Clone)]
pub struct DisclosureApi {
    ctx: ServiceContext,
    domain: DisclosureDomain,
}

/// Most disclosures one list returns.
const MAX_LIST: usize = 1000;
/// Most disclosures of one subject `RecipientsToNotify` reads.
const MAX_SUBJECT: usize = 100_000;
/// The default look-back of `AccountingOfDisclosures`: three years.
const LOOK_BACK_MICROS: i64 = 3 * 365 * 86_400 * 1_000_000;

fn limit(n: u32) -> usize {
    match n {
        0 => MAX_LIST,
        n => (n as usize).min(MAX_LIST),
    }
}

impl DisclosureApi {
    /// A disclosure with its personal fields opened for display.
    fn open(&self, tenant: &str, mut d: Disclosure) -> Result<Disclosure, Status> {
        if let Some(x) = d.disclosure.take() {
            let opened = privacy_service_kit::personal::open_payload(
                &self.ctx.vault,
                tenant,
                &d.subject_id,
                Payload::DataDisclosed(x),
            )
            .map_err(status_of)?;
            if let Payload::DataDisclosed(x) = opened {
                d.disclosure = Some(x);
            }
        }
        Ok(d)
    }

    fn get(&self, tenant: &str, id: &str) -> Result<Disclosure, Status> {
        let d = self
            .domain
            .reader
            .get(tenant, id)
            .map_err(status_of)?
            .ok_or_else(|| Status::not_found("disclosure_id: no such disclosure"))?;
        self.open(tenant, d)
    }

    fn listed(
        &self,
        tenant: &str,
        found: (Vec<Disclosure>, bool),
        log_position: u64,
    ) -> Result<Response<ListDisclosuresResponse>, Status> {
        let (list, truncated) = found;
        let disclosures = list
            .into_iter()
            .map(|d| self.open(tenant, d))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(ListDisclosuresResponse {
            disclosures,
            truncated,
            log_position,
        }))
    }
}

fn subject_required(subject_id: &str) -> Result<(), Status> {
    if subject_id.is_empty() {
        return Err(Status::invalid_argument(
            "subject_id: subject_id is required",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl DisclosureLogService for DisclosureApi {
    async fn record_disclosure(
        &self,
        request: Request<RecordDisclosureRequest>,
    ) -> Result<Response<DisclosureResponse>, Status> {
        require(&request, &[Role::Backend, Role::Operator])?;
        let req = request.into_inner();
        let tenant = req.tenant.clone();
        let event = req
            .disclosure
            .ok_or_else(|| Status::invalid_argument("disclosure: disclosure is required"))?;
        let recorded = self
            .ctx
            .command(Command {
                tenant: req.tenant,
                subject_id: req.subject_id,
                event_id: req.event_id,
                occurred_at: req.disclosed_at,
                source: req.source,
                correlation_id: String::new(),
                event,
            })
            .await?;
        Ok(Response::new(DisclosureResponse {
            disclosure: Some(self.get(&tenant, &recorded.event_id)?),
            seq: recorded.position.seq,
            duplicate: recorded.position.duplicate,
        }))
    }

    async fn get_disclosure(
        &self,
        request: Request<GetDisclosureRequest>,
    ) -> Result<Response<DisclosureResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        let d = self.get(&req.tenant, &req.disclosure_id)?;
        Ok(Response::new(DisclosureResponse {
            seq: d.seq,
            disclosure: Some(d),
            duplicate: false,
        }))
    }

    async fn list_disclosures(
        &self,
        request: Request<ListDisclosuresRequest>,
    ) -> Result<Response<ListDisclosuresResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        let position = self.ctx.projector.checkpoint();
        let from = req.from.as_ref().map_or(i64::MIN, micros);
        let to = req.to.as_ref().map_or(i64::MAX, micros);
        let n = limit(req.limit);
        let reader = &self.domain.reader;
        let index = match req.filter() {
            DisclosureFilter::Unspecified => {
                return Err(Status::invalid_argument("filter: filter is required"));
            }
            DisclosureFilter::All => Index::All,
            DisclosureFilter::Subject => {
                subject_required(&req.value)
                    .map_err(|_| Status::invalid_argument("value: the subject id is required"))?;
                Index::Subject(&req.value)
            }
            DisclosureFilter::Recipient => {
                if req.value.is_empty() {
                    return Err(Status::invalid_argument("value: the recipient is required"));
                }
                Index::Recipient(&req.value)
            }
            DisclosureFilter::Basis => {
                let name = req.value.to_ascii_uppercase();
                let basis = LegalBasis::from_str_name(&name)
                    .or_else(|| LegalBasis::from_str_name(&format!("LEGAL_BASIS_{name}")))
                    .filter(|b| *b != LegalBasis::Unspecified)
                    .ok_or_else(|| {
                        Status::invalid_argument(
                            "value: a legal basis such as LEGAL_BASIS_CONSENT or consent",
                        )
                    })?;
                Index::Basis(basis)
            }
            DisclosureFilter::CrossBorder => Index::CrossBorder,
            DisclosureFilter::StateBody => Index::StateBody,
            DisclosureFilter::Flagged => Index::Flagged,
            DisclosureFilter::Unchecked => {
                let list = reader.unchecked_of(&req.tenant, n + 1).map_err(status_of)?;
                let truncated = list.len() > n;
                let list = list.into_iter().take(n).collect();
                return self.listed(&req.tenant, (list, truncated), position);
            }
        };
        let found = reader
            .list(&req.tenant, index, from, to, n)
            .map_err(status_of)?;
        self.listed(&req.tenant, found, position)
    }

    async fn accounting_of_disclosures(
        &self,
        request: Request<AccountingOfDisclosuresRequest>,
    ) -> Result<Response<ListDisclosuresResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        subject_required(&req.subject_id)?;
        let position = self.ctx.projector.checkpoint();
        let since = req.since.as_ref().map_or_else(
            || micros(&SystemTime::now().into()) - LOOK_BACK_MICROS,
            micros,
        );
        let found = self
            .domain
            .reader
            .list(
                &req.tenant,
                Index::Subject(&req.subject_id),
                since,
                i64::MAX,
                limit(req.limit),
            )
            .map_err(status_of)?;
        self.listed(&req.tenant, found, position)
    }

    async fn recipients_to_notify(
        &self,
        request: Request<RecipientsToNotifyRequest>,
    ) -> Result<Response<RecipientsToNotifyResponse>, Status> {
        require(&request, &[Role::Operator, Role::Auditor])?;
        let req = request.into_inner();
        self.ctx.tenant(&req.tenant)?;
        subject_required(&req.subject_id)?;
        let log_position = self.ctx.projector.checkpoint();
        let (all, _) = self
            .domain
            .reader
            .list(
                &req.tenant,
                Index::Subject(&req.subject_id),
                i64::MIN,
                i64::MAX,
                MAX_SUBJECT,
            )
            .map_err(status_of)?;
        let mut by: BTreeMap<(String, i32, String), Recipient> = BTreeMap::new();
        // Newest first: the first seen is the last disclosure.
        for d in all {
            let d = self.open(&req.tenant, d)?;
            let at = d.disclosed_at.as_ref().map_or(0, micros);
            let Some(x) = d.disclosure else { continue };
            let name = if x.recipient_natural_person && x.recipient.is_empty() {
                "a natural person (erased)".to_owned()
            } else {
                x.recipient.clone()
            };
            let r = by
                .entry((name.clone(), x.recipient_role, x.country.clone()))
                .or_insert_with(|| Recipient {
                    recipient: name,
                    role: x.recipient_role,
                    country: x.country.clone(),
                    last_at: Some(timestamp(at)),
                    ..Default::default()
                });
            r.disclosures += 1;
            r.first_at = Some(timestamp(at));
        }
        Ok(Response::new(RecipientsToNotifyResponse {
            recipients: by.into_values().collect(),
            log_position,
        }))
    }
}
