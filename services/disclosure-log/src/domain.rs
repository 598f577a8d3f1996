//! [`DisclosureDomain`]: what a disclosure implies when recorded — `disclosure.recorded` (is it
//! cross-border, does consent need asking) and, when rules are broken, `disclosure.flagged` —
//! and what consent's answer implies (a flag when consent was not valid at that instant). No
//! disclosure is refused for a rule: only contract errors are (by the kit's door, to the DLQ).

use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_service_kit::{Derived, DomainService, DomainTask, ServiceContext, Tenant};
use privacy_vocab::time::micros_or_zero;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::checks::{check, needs_consent};
use crate::events;
use crate::view::{LEDGER_VIEW, LedgerReader};

/// The disclosure-log rules, over the ledger view.
#[derive(Clone)]
pub struct DisclosureDomain {
    pub reader: LedgerReader,
}

impl DisclosureDomain {
    pub fn new(ctx: &ServiceContext) -> DisclosureDomain {
        if ctx.peer_token.is_none() {
            tracing::warn!(
                "PRIVACY_PEER_TOKEN is not set: consent-based disclosures are stored unchecked \
                 until it is"
            );
        }
        DisclosureDomain {
            reader: LedgerReader {
                view: ctx
                    .projector
                    .view(LEDGER_VIEW)
                    .expect("the ledger view is registered by SPEC"),
            },
        }
    }
}

/// The flag of a consent-based disclosure consent did not allow at its instant.
pub fn consent_flag(c: &DisclosureConsentChecked) -> DisclosureFlag {
    DisclosureFlag {
        rule: "no_valid_consent".into(),
        citation: "a consent-based disclosure needs valid consent for its purpose at that \
                   instant (the consent service's CheckConsent as of it)"
            .into(),
        detail: format!(
            "consent: {}; decided by consent's log position {}{}",
            c.reason,
            c.decided_by_seq,
            if c.record_id.is_empty() {
                String::new()
            } else {
                format!(
                    " (record {}, policy version {})",
                    c.record_id, c.policy_version
                )
            }
        ),
    }
}

impl DomainService for DisclosureDomain {
    fn derive(&self, tenant: &Tenant, envelope: &Envelope) -> Vec<Derived> {
        match &envelope.payload {
            Some(Payload::DataDisclosed(d)) => {
                let at = micros_or_zero(envelope.occurred_at.as_ref());
                let checked = check(tenant, d, at);
                let mut out = vec![Derived::domain(
                    "recorded",
                    DisclosureRecorded {
                        disclosure_id: envelope.event_id.clone(),
                        cross_border: checked.cross_border,
                        needs_consent_check: needs_consent(d, &envelope.subject_id),
                    },
                )];
                if !checked.flags.is_empty() {
                    out.push(Derived::domain(
                        "flagged",
                        DisclosureFlagged {
                            disclosure_id: envelope.event_id.clone(),
                            flags: checked.flags,
                        },
                    ));
                }
                out
            }
            Some(Payload::DomainEvent(body)) if envelope.event_type == events::CONSENT_CHECKED => {
                let Ok(c) = DisclosureConsentChecked::decode(body.body.as_slice()) else {
                    return Vec::new();
                };
                if c.allowed {
                    return Vec::new();
                }
                vec![Derived::domain(
                    "flagged",
                    DisclosureFlagged {
                        disclosure_id: c.disclosure_id.clone(),
                        flags: vec![consent_flag(&c)],
                    },
                )]
            }
            _ => Vec::new(),
        }
    }

    fn tasks(&self, ctx: &ServiceContext, shutdown: CancellationToken) -> Vec<DomainTask> {
        vec![DomainTask {
            name: "the consent checker",
            run: Box::pin(crate::consent_check::run(
                ctx.clone(),
                self.clone(),
                shutdown,
            )),
        }]
    }

    fn routes(&self, ctx: &ServiceContext, routes: &mut tonic::service::RoutesBuilder) {
        crate::grpc::add_routes(ctx, self.clone(), routes);
    }
}
