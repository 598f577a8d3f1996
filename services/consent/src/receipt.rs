//! Consent receipts: one consent record as JSON with the fields of the Kantara Initiative
//! Consent Receipt v1.1 (`version`, `jurisdiction`, `consentTimestamp`, `collectionMethod`,
//! `consentReceiptID`, `language`, `piiPrincipalId`, `piiControllers`, `policyUrl`, `services`
//! with purposes, `sensitive`, `spiCat`) and the state and provenance fields of ISO/IEC TS 27560
//! (`state`, `expressedBy`, `attestationRef`, `validUntil`, `notice`, `withdrawal`,
//! `withdrawalMethod`, `evidence`). Evidence of a shredded subject shows as erased.

use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::{
    ConsentHistoryEntry, ConsentMethod, Envelope, ExpressedBy, personal_value::Value,
};
use privacy_service_kit::Tenant;
use serde_json::{Value as Json, json};

use crate::decision::PolicyVersion;
use privacy_vocab::time::{micros, micros_or_zero};

fn rfc3339(micros: i64) -> String {
    jiff::Timestamp::from_microsecond(micros)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn method_name(method: i32) -> String {
    ConsentMethod::try_from(method)
        .map(|m| {
            m.as_str_name()
                .trim_start_matches("CONSENT_METHOD_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

fn expressed_by_name(e: i32) -> String {
    ExpressedBy::try_from(e)
        .map(|m| {
            m.as_str_name()
                .trim_start_matches("EXPRESSED_BY_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

/// The receipt of a refusal: who was asked, under which notice, and that they said no.
fn refusal_receipt(
    tenant: &Tenant,
    envelope: &Envelope,
    r: &privacy_proto::v1::ConsentRefused,
    purpose: &str,
    policies: &[PolicyVersion],
    record: &ConsentHistoryEntry,
) -> Json {
    let at = micros_or_zero(envelope.occurred_at.as_ref());
    let policy = policies.iter().find(|p| p.version == r.policy_version);
    json!({
        "version": "KI-CR-v1.1.0",
        "jurisdiction": tenant.jurisdiction,
        "consentTimestamp": at / 1_000_000,
        "collectionMethod": method_name(r.method),
        "consentReceiptID": format!("{}/{purpose}", envelope.event_id),
        "piiPrincipalId": envelope.subject_id,
        "piiControllers": [{
            "piiController": tenant.display_name,
            "id": tenant.id,
            "onBehalf": false,
        }],
        "notice": {
            "version": r.policy_version,
            "noticeHash": policy.map(|p| p.notice_hash.clone()).unwrap_or_default(),
            "effectiveAt": policy.map(|p| rfc3339(p.effective_at)),
        },
        "services": [{
            "service": tenant.display_name,
            "purposes": [{"purpose": purpose, "legalBasis": "consent"}],
        }],
        "state": record.state,
        "refused": rfc3339(at),
        "expressedBy": expressed_by_name(r.expressed_by),
        "source": envelope.source,
    })
}

/// Builds the receipt of the grant or refusal `envelope` (already opened with the vault) for
/// `purpose`. `later` holds the purpose's history after it; `record` is its history entry with
/// the ISO/IEC TS 27560 state it is in now.
pub fn receipt(
    tenant: &Tenant,
    envelope: &Envelope,
    purpose: &str,
    policies: &[PolicyVersion],
    later: &[ConsentHistoryEntry],
    record: &ConsentHistoryEntry,
) -> Option<Json> {
    let g = match &envelope.payload {
        Some(Payload::ConsentGranted(g)) => g,
        Some(Payload::ConsentRefused(r)) => {
            return Some(refusal_receipt(
                tenant, envelope, r, purpose, policies, record,
            ));
        }
        _ => return None,
    };
    let granted_at = micros_or_zero(envelope.occurred_at.as_ref());
    let valid_until = g.valid_until.as_ref().map(micros);
    let state = record.state.as_str();
    // The change that ended it, when that was a withdrawal (or a refusal), not a renewal.
    let withdrawal = later
        .iter()
        .find(|e| e.change == "withdrawn" || e.change == "refused")
        .filter(|_| state == "withdrawn");
    let evidence: serde_json::Map<String, Json> = g
        .evidence
        .iter()
        .map(|(k, v)| {
            let value = match &v.value {
                Some(Value::Clear(text)) => json!(text),
                Some(Value::Erased(e)) => json!({
                    "erased": true,
                    "shreddedAt": rfc3339(micros_or_zero(e.shredded_at.as_ref())),
                }),
                Some(Value::Sealed(_)) | None => json!({"sealed": true}),
            };
            (k.clone(), value)
        })
        .collect();
    let language = match g
        .evidence
        .get("notice_language")
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::Clear(l)) => l.clone(),
        _ => String::new(),
    };
    let policy = policies.iter().find(|p| p.version == g.policy_version);
    let description = tenant
        .purpose(purpose)
        .map(|p| p.description.clone())
        .unwrap_or_default();
    Some(json!({
        "version": "KI-CR-v1.1.0",
        "jurisdiction": tenant.jurisdiction,
        "consentTimestamp": granted_at / 1_000_000,
        "collectionMethod": method_name(g.method),
        "consentReceiptID": format!("{}/{purpose}", envelope.event_id),
        "language": language,
        "piiPrincipalId": envelope.subject_id,
        "piiControllers": [{
            "piiController": tenant.display_name,
            "id": tenant.id,
            "onBehalf": false,
        }],
        "policyUrl": "",
        "notice": {
            "version": g.policy_version,
            "noticeHash": policy.map(|p| p.notice_hash.clone()).unwrap_or_default(),
            "effectiveAt": policy.map(|p| rfc3339(p.effective_at)),
        },
        "services": [{
            "service": tenant.display_name,
            "purposes": [{
                "purpose": purpose,
                "purposeCategory": [description],
                "consentType": "EXPLICIT",
                "legalBasis": "consent",
                "piiCategory": [],
                "primaryPurpose": false,
                "termination": valid_until.map_or_else(|| "until withdrawn".to_owned(), rfc3339),
                "thirdPartyDisclosure": false,
            }],
        }],
        "sensitive": false,
        "spiCat": [],
        "state": state,
        "stateReason": (!record.state_reason.is_empty()).then(|| record.state_reason.clone()),
        "given": rfc3339(granted_at),
        "expressedBy": expressed_by_name(g.expressed_by),
        "attestationRef": g.attestation_ref,
        "validUntil": valid_until.map(rfc3339),
        "withdrawal": withdrawal.map(|w| json!({
            "timestamp": rfc3339(micros_or_zero(w.at.as_ref())),
            "method": w.withdrawal_method,
        })),
        "withdrawalMethod": "WithdrawConsent, or the consent.withdrawn event; effective immediately",
        "evidence": evidence,
        "source": envelope.source,
    }))
}
