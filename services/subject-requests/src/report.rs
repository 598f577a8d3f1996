//! The access report (`GetAccessReport`): one JSON document of everything the tenant's services
//! know of a subject, assembled over gRPC with the caller's own credentials. Each section names
//! the service it came from, the URL asked and the log position it reflects; a service that did
//! not answer is named in the section and in `missing`, never silently left out.

use std::time::SystemTime;

use privacy_proto::v1::audit_service_client::AuditServiceClient;
use privacy_proto::v1::consent_service_client::ConsentServiceClient;
use privacy_proto::v1::disclosure_log_service_client::DisclosureLogServiceClient;
use privacy_proto::v1::retention_service_client::RetentionServiceClient;
use privacy_proto::v1::*;
use privacy_proto::{DecodeError, message_to_json};
use privacy_service_kit::ServiceContext;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::view::RequestsReader;

/// Who asks, for the calls to the other services: the caller's `authorization` header.
pub type Credentials = Option<MetadataValue<tonic::metadata::Ascii>>;

/// A section that could not be filled, and why.
struct Missing {
    status: &'static str,
    reason: String,
}

impl Missing {
    fn unavailable(service: &str, s: &Status) -> Missing {
        Missing {
            status: "unavailable",
            reason: format!("{service} did not answer: {:?}: {}", s.code(), s.message()),
        }
    }
}

fn json_of<M: prost::Message>(name: &str, m: &M) -> Result<Value, Status> {
    message_to_json(name, m)
        .map_err(|e: DecodeError| Status::internal(format!("{name} as JSON: {e}")))
}

/// The report builder for one call.
pub struct Report<'a> {
    pub ctx: &'a ServiceContext,
    pub reader: &'a RequestsReader,
    pub credentials: Credentials,
}

impl Report<'_> {
    fn url(&self, service: &str) -> String {
        self.ctx.peers.get(service).cloned().unwrap_or_default()
    }

    async fn channel(&self, service: &str) -> Result<Channel, Status> {
        self.ctx.peer_channel(service).await
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        if let Some(c) = &self.credentials {
            r.metadata_mut().insert("authorization", c.clone());
        }
        r
    }

    /// The log head a peer's audit service reports.
    async fn head_of(&self, channel: Channel) -> Result<u64, Status> {
        let status = AuditServiceClient::new(channel)
            .projection_status(self.request(ProjectionStatusRequest {
                checkpoints_only: true,
            }))
            .await?
            .into_inner();
        Ok(status.head_seq)
    }

    async fn consent_history(&self, tenant: &str, subject: &str) -> Result<Value, Missing> {
        let fail = |s: Status| Missing::unavailable("consent", &s);
        let channel = self.channel("consent").await.map_err(fail)?;
        let history = ConsentServiceClient::new(channel.clone())
            .get_consent_history(self.request(GetConsentHistoryRequest {
                tenant: tenant.into(),
                subject_id: subject.into(),
                purpose: String::new(),
            }))
            .await
            .map_err(fail)?
            .into_inner();
        // The history was read from views at or after this head (a later head may hold more).
        let head = self.head_of(channel).await.map_err(fail)?;
        let mut entries = Vec::new();
        for e in &history.entries {
            entries.push(json_of("privacy.v1.ConsentHistoryEntry", e).map_err(fail)?);
        }
        Ok(json!({ "log_position": head, "entries": entries }))
    }

    async fn holdings(&self, tenant: &str, subject: &str) -> Result<Value, Missing> {
        let fail = |s: Status| Missing::unavailable("retention", &s);
        let channel = self.channel("retention").await.map_err(fail)?;
        let answer = RetentionServiceClient::new(channel)
            .get_subject_holdings(self.request(GetSubjectHoldingsRequest {
                tenant: tenant.into(),
                subject_id: subject.into(),
            }))
            .await
            .map_err(fail)?
            .into_inner();
        let mut holdings = Vec::new();
        for h in &answer.holdings {
            holdings.push(json_of("privacy.v1.Holding", h).map_err(fail)?);
        }
        Ok(json!({ "log_position": answer.log_position, "holdings": holdings }))
    }

    /// Every disclosure of the subject's data (newest first, at most 1,000: `truncated` says
    /// when there are more) and each recipient once.
    async fn disclosures(&self, tenant: &str, subject: &str) -> Result<Value, Missing> {
        let fail = |s: Status| Missing::unavailable("disclosure-log", &s);
        let channel = self.channel("disclosure-log").await.map_err(fail)?;
        let mut client = DisclosureLogServiceClient::new(channel);
        let ledger = client
            .accounting_of_disclosures(self.request(AccountingOfDisclosuresRequest {
                tenant: tenant.into(),
                subject_id: subject.into(),
                since: Some(prost_types::Timestamp::default()),
                limit: 0,
            }))
            .await
            .map_err(fail)?
            .into_inner();
        let recipients = client
            .recipients_to_notify(self.request(RecipientsToNotifyRequest {
                tenant: tenant.into(),
                subject_id: subject.into(),
            }))
            .await
            .map_err(fail)?
            .into_inner();
        let mut disclosures = Vec::new();
        for d in &ledger.disclosures {
            disclosures.push(json_of("privacy.v1.Disclosure", d).map_err(fail)?);
        }
        let mut each = Vec::new();
        for r in &recipients.recipients {
            each.push(json_of("privacy.v1.Recipient", r).map_err(fail)?);
        }
        Ok(json!({
            "log_position": ledger.log_position,
            "truncated": ledger.truncated,
            "disclosures": disclosures,
            "recipients": each,
        }))
    }

    fn requests(&self, tenant: &str, subject: &str) -> Result<Value, Status> {
        let position = self.ctx.projector.checkpoint();
        let mut requests = Vec::new();
        for r in self
            .reader
            .all(tenant)
            .map_err(privacy_service_kit::audit::status_of)?
            .iter()
            .filter(|r| r.subject_id == subject)
        {
            requests.push(json_of("privacy.v1.SubjectRequest", r)?);
        }
        Ok(json!({ "log_position": position, "requests": requests }))
    }

    /// The whole report, and the services that did not fill their section.
    pub async fn build(&self, tenant: &str, subject: &str) -> Result<(Value, Vec<String>), Status> {
        let (consent, holdings, disclosures) = tokio::join!(
            self.consent_history(tenant, subject),
            self.holdings(tenant, subject),
            self.disclosures(tenant, subject),
        );
        let mut sections = serde_json::Map::new();
        let mut missing = Vec::new();
        let mut section = |name: &str, service: &str, result: Result<Value, Missing>| {
            let mut v = json!({ "service": service, "url": self.url(service) });
            match result {
                Ok(data) => {
                    v["status"] = "ok".into();
                    if let (Value::Object(v), Value::Object(data)) = (&mut v, data) {
                        v.extend(data);
                    }
                }
                Err(m) => {
                    v["status"] = m.status.into();
                    v["reason"] = m.reason.into();
                    missing.push(service.to_owned());
                }
            }
            sections.insert(name.to_owned(), v);
        };
        section("consent_history", "consent", consent);
        section("holdings", "retention", holdings);
        section("disclosures", "disclosure-log", disclosures);
        let own = self.requests(tenant, subject)?;
        section("requests", crate::SPEC.name, Ok(own));
        sections["requests"]["url"] = Value::Null;
        let generated_at = jiff::Timestamp::try_from(SystemTime::now())
            .map(|t| t.to_string())
            .unwrap_or_default();
        let report = json!({
            "report": "access",
            "tenant": tenant,
            "subject_id": subject,
            "generated_at": generated_at,
            "generated_by": crate::SPEC.name,
            "sections": sections,
            "missing": missing,
        });
        Ok((report, missing))
    }
}
