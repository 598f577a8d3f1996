//! Consent-based disclosures asked of the consent service (`CheckConsent` as of the disclosure's
//! instant, with the service's `PRIVACY_PEER_TOKEN`), each answer recorded once as
//! `disclosure.consent_checked` (keyed `<disclosure>/consent`). While consent cannot be reached
//! — or refuses the call — the disclosure stays `unchecked` and is asked again every
//! [`RETRY_EVERY`]: never guessed.

use std::time::Duration;

use futures::StreamExt;

use privacy_proto::v1::consent_service_client::ConsentServiceClient;
use privacy_proto::v1::*;
use privacy_service_kit::{Emit, ServiceContext, StreamKey};
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tonic::metadata::MetadataValue;

use crate::DisclosureDomain;

/// How often unchecked disclosures are asked again without a new one to wake the checker.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);
/// Disclosures asked per pass.
const PASS_LIMIT: usize = 1000;
/// Calls to consent in flight at once.
const IN_FLIGHT: usize = 32;

/// Asks consent about every unchecked disclosure (up to [`PASS_LIMIT`]); answers how many were
/// checked, or why the pass stopped (they stay unchecked).
pub async fn pass(ctx: &ServiceContext, domain: &DisclosureDomain) -> Result<usize, String> {
    let unchecked = domain
        .reader
        .unchecked(PASS_LIMIT)
        .map_err(|e| e.to_string())?;
    if unchecked.is_empty() {
        return Ok(0);
    }
    let Some(token) = &ctx.peer_token else {
        return Err("PRIVACY_PEER_TOKEN is not set".into());
    };
    let bearer: MetadataValue<tonic::metadata::Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| "PRIVACY_PEER_TOKEN is not a valid header value".to_owned())?;
    let channel = ctx
        .peer_channel("consent")
        .await
        .map_err(|s| s.message().to_owned())?;
    let client = ConsentServiceClient::new(channel);
    // Asked and recorded [`IN_FLIGHT`] at a time (the records group-commit together); the first
    // failure ends the pass, the rest stay unchecked.
    let mut results = futures::stream::iter(unchecked)
        .map(|(tenant, id)| {
            let (mut client, bearer) = (client.clone(), bearer.clone());
            async move { check_one(ctx, domain, &mut client, bearer, tenant, id).await }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut checked = 0;
    while let Some(r) = results.next().await {
        r?;
        checked += 1;
    }
    Ok(checked)
}

/// Asks consent about one disclosure and records the answer.
async fn check_one(
    ctx: &ServiceContext,
    domain: &DisclosureDomain,
    client: &mut ConsentServiceClient<tonic::transport::Channel>,
    bearer: MetadataValue<tonic::metadata::Ascii>,
    tenant: String,
    id: String,
) -> Result<(), String> {
    let Some(d) = domain.reader.get(&tenant, &id).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let purpose = d
        .disclosure
        .as_ref()
        .map(|x| x.purpose.clone())
        .unwrap_or_default();
    let mut request = Request::new(CheckConsentRequest {
        tenant: tenant.clone(),
        subject_id: d.subject_id.clone(),
        purpose,
        as_of: d.disclosed_at,
    });
    request.metadata_mut().insert("authorization", bearer);
    let body = match client.check_consent(request).await {
        Ok(answer) => {
            let answer = answer.into_inner();
            DisclosureConsentChecked {
                disclosure_id: id.clone(),
                allowed: answer.allowed,
                reason: answer.reason,
                record_id: answer.record_id,
                policy_version: answer.policy_version,
                decided_by_seq: answer.decided_by_seq,
            }
        }
        // Consent's answer about this question itself (e.g. no purpose named): no consent can
        // be valid for it.
        Err(s) if s.code() == tonic::Code::InvalidArgument => DisclosureConsentChecked {
            disclosure_id: id.clone(),
            allowed: false,
            reason: "not_checkable".into(),
            ..Default::default()
        },
        Err(s) => {
            return Err(format!("consent answered {:?}: {}", s.code(), s.message()));
        }
    };
    ctx.emit(Emit {
        tenant,
        subject_id: d.subject_id.clone(),
        body,
        stream: StreamKey::Subject,
        event_id: Some(format!("{id}/consent")),
    })
    .await
    .map(|_| ())
    .map_err(|s| s.message().to_owned())
}

/// Checks as soon as a disclosure is stored, and every [`RETRY_EVERY`], until `shutdown`.
pub async fn run(
    ctx: ServiceContext,
    domain: DisclosureDomain,
    shutdown: CancellationToken,
) -> Result<(), String> {
    const RECORDED: &[&str] = &[crate::events::RECORDED];
    let mut stored = ctx.store.subscribe(ctx.store.head().seq + 1);
    let mut failing = false;
    loop {
        match pass(&ctx, &domain).await {
            Ok(n) => {
                if failing {
                    tracing::info!(
                        checked = n,
                        "consent reachable again; unchecked disclosures checked"
                    );
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "consent check failed; the disclosures stay unchecked and are asked again");
                }
                failing = true;
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(RETRY_EVERY) => {}
                }
                continue;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(RETRY_EVERY) => {}
            woke = ctx.stored(&mut stored, RECORDED, RETRY_EVERY) => {
                woke.map_err(|e| e.to_string())?;
            }
        }
    }
}
