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

/// Builds the receipt of the grant `envelope` (already opened with the vault) for `purpose`.
/// `later` holds the purpose's history after the grant; `now` decides the state.
pub fn receipt(
    tenant: &Tenant,
    envelope: &Envelope,
    purpose: &str,
    policies: &[PolicyVersion],
    later: &[ConsentHistoryEntry],
    now: i64,
) -> Option<Json> {
    let Some(Payload::ConsentGranted(g)) = &envelope.payload else {
        return None;
    };
    let granted_at = micros_or_zero(envelope.occurred_at.as_ref());
    let valid_until = g.valid_until.as_ref().map(micros);
    let withdrawal = later.iter().find(|e| e.change == "withdrawn");
    let superseded = later.iter().any(|e| e.change == "granted");
    let state = if withdrawal.is_some() {
        "withdrawn"
    } else if valid_until.is_some_and(|u| u <= now) {
        "expired"
    } else if superseded {
        "renewed"
    } else {
        "given"
    };
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
