//! Erasure: the plan (what goes, what stays and why), the orders it implies, and settling —
//! an order unanswered by its reply-by is sent again (at most [`MAX_ATTEMPTS`] times in all),
//! then escalated (`erasure.escalated`); once every system answered its order,
//! `subject.erased`; then this service shreds the subject's data key in its vault and records
//! `subject.shredded`. Each is emitted under a key derived from the erasure or order, so it
//! exists once, also across restarts and a crash between the shred and its record (the shred is
//! idempotent).
//!
//! Due schedules ([`sweep`]): the holdings whose schedule fell due (and no hold covers, and no
//! order is out for) are planned as a `holdings`-scoped erasure per subject and action —
//! `erase`, `anonymise` or `archive` — keyed by the subject, the action and the holdings' last
//! change, so a restart plans nothing twice. Once answered it ends in `erasure.completed` (no
//! shred: the subject's other data stays); an anonymisation carries the cohort counts the
//! tenant's `[anonymisation] cohort` dimensions give, and its holdings leave the inventory.
//!
//! [`settle`] and [`sweep`] take the instant to judge by; [`run`] drives both with the wall
//! clock every [`SETTLE_EVERY`], and settles as soon as a `data.erased` is stored.

use std::collections::BTreeMap;
use std::time::Duration;

use privacy_proto::v1::*;
use privacy_service_kit::{Emit, ServiceContext, StreamKey, Tenant};
use privacy_vocab::time::{micros, now_micros, timestamp};
use tokio_util::sync::CancellationToken;

use crate::RetentionDomain;
use crate::schedules::{Facts, cohort_dimensions, due_at, governing, next_action};
use crate::view::covers;

/// How often [`run`] settles without being woken.
pub const SETTLE_EVERY: Duration = Duration::from_secs(30);
/// How long a system has to answer an erase order (each attempt).
pub const ORDER_REPLY_HOURS: i64 = 72;
/// How many times an order is sent before it is escalated.
pub const MAX_ATTEMPTS: u32 = 3;
const HOUR: i64 = 3_600_000_000;
/// Erasures looked at per pass.
const SETTLE_LIMIT: usize = 10_000;

/// What an erasure of the subject's `holdings` (not yet erased) erases and keeps, as of `now`:
/// a holding stays under a live legal hold, or while a schedule whose basis is a legal
/// obligation has not run out; everything else goes.
pub fn plan(
    schedules: &[Schedule],
    holdings: &[Holding],
    holds: &[LegalHold],
    facts: &Facts,
    now: i64,
) -> (Vec<PlannedItem>, Vec<PlannedItem>) {
    let (mut goes, mut stays) = (Vec::new(), Vec::new());
    for h in holdings.iter().filter(|h| h.erased_at.is_none()) {
        let item = |reason: &str, citation: String, until: Option<i64>| PlannedItem {
            system: h.system.clone(),
            category: h.category.clone(),
            reason: reason.into(),
            citation,
            until: until.map(timestamp),
        };
        let held: Vec<&str> = holds
            .iter()
            .filter(|hold| covers(hold, h))
            .map(|hold| hold.hold_id.as_str())
            .collect();
        if !held.is_empty() {
            stays.push(item("legal_hold", held.join(" "), None));
            continue;
        }
        let duty = governing(schedules, h).filter(|s| s.basis == "legal_obligation");
        if let Some(s) = duty {
            // A duty whose trigger has not been observed still binds: keep, until unknown.
            match due_at(s, h, facts) {
                Ok(until) if until <= now => {}
                Ok(until) => {
                    stays.push(item(&s.basis, s.citation.clone(), Some(until)));
                    continue;
                }
                Err(_) => {
                    stays.push(item(&s.basis, s.citation.clone(), None));
                    continue;
                }
            }
        }
        goes.push(item("", String::new(), None));
    }
    (goes, stays)
}

/// What to plan an erasure for.
pub struct PlanRequest<'a> {
    pub tenant: &'a str,
    pub subject_id: &'a str,
    /// A code: `subject_request`, `operator`, `schedule`, `child_flagged`.
    pub reason: &'a str,
    pub request_id: &'a str,
    pub dry_run: bool,
    /// The event id of `erasure.planned` when it must exist once (a request's hand-off).
    pub key: Option<String>,
}

/// Plans the subject's erasure as of now and, unless a dry run, records `erasure.planned` (its
/// orders in the same commit); answers the erasure and the log position (0 for a dry run).
pub async fn record_plan(
    ctx: &ServiceContext,
    domain: &RetentionDomain,
    req: PlanRequest<'_>,
) -> Result<(Erasure, u64), tonic::Status> {
    use privacy_service_kit::{check_code, rejection_status};
    ctx.tenant(req.tenant)?;
    privacy_proto::validate::check_subject_id(req.subject_id, &ctx.limits)
        .map_err(rejection_status)?;
    check_code("reason", req.reason, true).map_err(rejection_status)?;
    check_code("request_id", req.request_id, false).map_err(rejection_status)?;
    let status = privacy_service_kit::audit::status_of;
    let schedules = domain.tenant_schedules(req.tenant)?;
    let reader = &domain.reader;
    let _step = domain.steps.lock().await;
    let holdings = reader
        .holdings(req.tenant, req.subject_id)
        .map_err(status)?;
    let facts = reader.facts(req.tenant, req.subject_id).map_err(status)?;
    let holds = reader.holds(req.tenant).map_err(status)?;
    let now = now_micros();
    let (goes, stays) = plan(&schedules, &holdings, &holds, &facts, now);
    let erasure = Erasure {
        erasure_id: uuid::Uuid::now_v7().to_string(),
        subject_id: req.subject_id.to_owned(),
        reason: req.reason.to_owned(),
        request_id: req.request_id.to_owned(),
        goes,
        stays,
        planned_at: Some(timestamp(now)),
        action: "erase".into(),
        scope: "subject".into(),
        ..Default::default()
    };
    if req.dry_run {
        return Ok((erasure, 0));
    }
    let recorded = record(ctx, domain, req.tenant, erasure, req.key).await?;
    Ok(recorded)
}

/// Records `erasure.planned` (its orders derived in the same commit) and answers the erasure as
/// the view has it, with the log position. The caller holds the step lock.
async fn record(
    ctx: &ServiceContext,
    domain: &RetentionDomain,
    tenant: &str,
    erasure: Erasure,
    key: Option<String>,
) -> Result<(Erasure, u64), tonic::Status> {
    let (id, subject) = (erasure.erasure_id.clone(), erasure.subject_id.clone());
    let recorded = ctx
        .emit(Emit {
            tenant: tenant.to_owned(),
            subject_id: subject,
            body: ErasurePlanned {
                erasure: Some(erasure),
            },
            stream: StreamKey::Subject,
            event_id: key,
        })
        .await?;
    let stored = domain
        .reader
        .erasure(tenant, &id)
        .map_err(privacy_service_kit::audit::status_of)?
        .ok_or_else(|| tonic::Status::internal("the planned erasure is not in the view"))?;
    Ok((stored, recorded.position.seq))
}

/// Plans, as of `now`, the holdings whose schedule fell due: one `holdings`-scoped erasure per
/// subject and action, for holdings no live hold covers, not erased, not kept by their system,
/// with no order out. Each is keyed by subject, action and the holdings' last change, so it is
/// planned once, also across restarts.
pub async fn sweep(
    ctx: &ServiceContext,
    domain: &RetentionDomain,
    now: i64,
) -> Result<Settled, String> {
    let mut planned = Vec::new();
    let reader = &domain.reader;
    let fail = |e: privacy_event_store::StoreError| e.to_string();
    for tenant in ctx.tenants.ids() {
        let Ok(schedules) = domain.tenant_schedules(tenant) else {
            // Logged at start, and named by every query about the tenant.
            continue;
        };
        if schedules.is_empty() {
            continue;
        }
        let _step = domain.steps.lock().await;
        let holds = reader.holds(tenant).map_err(fail)?;
        let mut facts: BTreeMap<String, Facts> = BTreeMap::new();
        let mut due: BTreeMap<(String, &'static str), Vec<Holding>> = BTreeMap::new();
        for h in reader.all_holdings(tenant).map_err(fail)? {
            if h.erased_at.is_some() || h.kept || !h.pending_order_id.is_empty() {
                continue;
            }
            let Some(s) = governing(&schedules, &h) else {
                continue;
            };
            let known = match facts.entry(h.subject_id.clone()) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(reader.facts(tenant, &h.subject_id).map_err(fail)?)
                }
            };
            let Ok(next) = next_action(s, &h, known) else {
                continue;
            };
            if next.at > now || holds.iter().any(|hold| covers(hold, &h)) {
                continue;
            }
            due.entry((h.subject_id.clone(), next.action))
                .or_default()
                .push(h);
        }
        for ((subject, action), list) in due {
            let last = list.iter().map(|h| h.seq).max().unwrap_or_default();
            let key = format!("schedule/{subject}/{action}/{last}");
            if ctx.store.lookup(tenant, &key).map_err(fail)?.is_some() {
                continue;
            }
            let goes = list
                .iter()
                .map(|h| PlannedItem {
                    system: h.system.clone(),
                    category: h.category.clone(),
                    ..Default::default()
                })
                .collect();
            let erasure = Erasure {
                erasure_id: uuid::Uuid::now_v7().to_string(),
                subject_id: subject.clone(),
                reason: "schedule".into(),
                goes,
                planned_at: Some(timestamp(now)),
                action: action.into(),
                scope: "holdings".into(),
                ..Default::default()
            };
            let (e, _) = record(ctx, domain, tenant, erasure, Some(key))
                .await
                .map_err(|s| s.message().to_owned())?;
            tracing::info!(tenant = %tenant, erasure = %e.erasure_id, action, holdings = list.len(), "a schedule fell due; ordered");
            planned.push((crate::events::ERASURE_PLANNED, e.erasure_id));
        }
    }
    Ok(planned)
}

/// One erase order per system the plan erases from, its categories grouped.
pub fn orders(tenant: &Tenant, erasure: &Erasure, issued_at: i64) -> Vec<ErasureOrdered> {
    let mut systems: Vec<&str> = erasure.goes.iter().map(|i| i.system.as_str()).collect();
    systems.sort_unstable();
    systems.dedup();
    systems
        .into_iter()
        .map(|system| ErasureOrdered {
            erasure_id: erasure.erasure_id.clone(),
            order: Some(Order {
                order_id: format!("{}:{system}", erasure.erasure_id),
                tenant: tenant.id.clone(),
                subject_id: erasure.subject_id.clone(),
                system: system.to_owned(),
                action: if erasure.action.is_empty() {
                    "erase".into()
                } else {
                    erasure.action.clone()
                },
                categories: erasure
                    .goes
                    .iter()
                    .filter(|i| i.system == system)
                    .map(|i| i.category.clone())
                    .collect(),
                request_id: erasure.request_id.clone(),
                issued_at: Some(timestamp(issued_at)),
                reply_by: Some(timestamp(
                    issued_at.saturating_add(ORDER_REPLY_HOURS * HOUR),
                )),
                issuer: crate::SPEC.name.into(),
                confirm_with: privacy_proto::EventType::DataErased.as_str().into(),
                attempt: 1,
            }),
        })
        .collect()
}

/// What one pass settled: (event type, erasure id).
pub type Settled = Vec<(&'static str, String)>;

fn keyed<B>(tenant: &str, subject: &str, key: String, body: B) -> Emit<B> {
    Emit {
        tenant: tenant.to_owned(),
        subject_id: subject.to_owned(),
        body,
        stream: StreamKey::Subject,
        event_id: Some(key),
    }
}

/// Moves every unfinished erasure on as of `now` (microseconds): re-sends or escalates orders
/// past their reply-by, records `subject.erased` once all its orders are answered, then shreds
/// the subject's key here and records `subject.shredded`.
pub async fn settle(
    ctx: &ServiceContext,
    domain: &RetentionDomain,
    now: i64,
) -> Result<Settled, String> {
    let mut settled = Vec::new();
    let unfinished = domain
        .reader
        .unfinished(SETTLE_LIMIT)
        .map_err(|e| e.to_string())?;
    let fail = |s: tonic::Status| s.message().to_owned();
    for (tenant, id) in unfinished {
        let _step = domain.steps.lock().await;
        let Some(e) = domain
            .reader
            .erasure(&tenant, &id)
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let subject = e.subject_id.as_str();
        if e.erased_at.is_none() {
            let late = e
                .orders
                .iter()
                .filter(|o| !o.answered && o.reply_by.as_ref().is_some_and(|r| micros(r) <= now));
            for o in late {
                if o.attempts < MAX_ATTEMPTS {
                    let Some(mut order) =
                        orders(&ctx.tenant(&tenant).map_err(fail)?.clone(), &e, now)
                            .into_iter()
                            .find(|x| x.order.as_ref().is_some_and(|x| x.order_id == o.order_id))
                    else {
                        continue;
                    };
                    let attempt = o.attempts + 1;
                    if let Some(x) = order.order.as_mut() {
                        x.attempt = attempt;
                    }
                    let key = format!("{}/attempt-{attempt}", o.order_id);
                    ctx.emit(keyed(&tenant, subject, key, order))
                        .await
                        .map_err(fail)?;
                    tracing::warn!(tenant = %tenant, order = %o.order_id, attempt, "erase order unanswered; sent again");
                    settled.push((crate::events::ERASURE_ORDERED, id.clone()));
                } else if !o.escalated {
                    let body = ErasureEscalated {
                        erasure_id: id.clone(),
                        order_id: o.order_id.clone(),
                        system: o.system.clone(),
                    };
                    let key = format!("{}/escalated", o.order_id);
                    ctx.emit(keyed(&tenant, subject, key, body))
                        .await
                        .map_err(fail)?;
                    tracing::error!(tenant = %tenant, order = %o.order_id, system = %o.system, "erase order unanswered after every attempt; escalated");
                    settled.push((crate::events::ERASURE_ESCALATED, id.clone()));
                }
            }
            if !e.orders.iter().all(|o| o.answered) {
                continue;
            }
            if e.scope == "holdings" {
                let tenant_file = ctx.tenant(&tenant).map_err(fail)?.clone();
                let body = completed(domain, &tenant_file, &e).map_err(|e| e.to_string())?;
                ctx.emit(keyed(&tenant, subject, format!("{id}/completed"), body))
                    .await
                    .map_err(fail)?;
                tracing::info!(tenant = %tenant, erasure = %id, action = %e.action, "due holdings done");
                settled.push((crate::events::ERASURE_COMPLETED, id));
                continue;
            }
            let body = SubjectErased {
                erasure_id: id.clone(),
                request_id: e.request_id.clone(),
                kept: kept(&e),
            };
            ctx.emit(keyed(&tenant, subject, format!("{id}/erased"), body))
                .await
                .map_err(fail)?;
            settled.push((crate::events::SUBJECT_ERASED, id.clone()));
        }
        if e.scope == "holdings" {
            continue;
        }
        ctx.vault
            .shred(&tenant, subject, now)
            .and_then(|()| ctx.vault.sync())
            .map_err(|e| e.to_string())?;
        let body = SubjectShredded {
            erasure_id: id.clone(),
            service: crate::SPEC.name.into(),
        };
        ctx.emit(keyed(&tenant, subject, format!("{id}/shredded"), body))
            .await
            .map_err(fail)?;
        tracing::info!(tenant = %tenant, erasure = %id, "subject erased and shredded");
        settled.push((crate::events::SUBJECT_SHREDDED, id));
    }
    Ok(settled)
}

/// Sweeps due schedules every [`SETTLE_EVERY`]; settles as often, and as soon as a system's
/// `data.erased` is stored, until `shutdown`. A failed pass is logged and tried again.
pub async fn run(
    ctx: ServiceContext,
    domain: RetentionDomain,
    shutdown: CancellationToken,
) -> Result<(), String> {
    const ERASED: &[&str] = &[privacy_proto::EventType::DataErased.as_str()];
    let mut answers = ctx.store.subscribe(ctx.store.head().seq + 1);
    let mut swept: Option<std::time::Instant> = None;
    loop {
        // The sweep reads the whole inventory: on the timer only, not on every answer.
        if swept.is_none_or(|t| t.elapsed() >= SETTLE_EVERY) {
            if let Err(e) = sweep(&ctx, &domain, now_micros()).await {
                tracing::warn!(error = %e, "schedule pass failed; retrying");
            }
            swept = Some(std::time::Instant::now());
        }
        if let Err(e) = settle(&ctx, &domain, now_micros()).await {
            tracing::warn!(error = %e, "erasure pass failed; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(SETTLE_EVERY) => {}
            woke = ctx.stored(&mut answers, ERASED, SETTLE_EVERY) => {
                woke.map_err(|e| e.to_string())?;
            }
        }
    }
}

/// What an erasure kept and why: the plan's stays and what systems kept.
pub fn kept(e: &Erasure) -> Vec<PlannedItem> {
    let mut kept = e.stays.clone();
    for o in e.orders.iter().filter(|o| o.kept) {
        kept.push(PlannedItem {
            system: o.system.clone(),
            category: o.categories.join(" "),
            reason: "kept_by_system".into(),
            citation: format!(
                "the system's kept_reason, sealed in event {}",
                o.confirmation_seq
            ),
            until: None,
        });
    }
    kept
}

/// `erasure.completed` of a `holdings`-scoped erasure whose orders are all answered: what was
/// kept and, for an anonymisation, the holdings reduced to counts and the counts, by the
/// tenant's cohort dimensions.
fn completed(
    domain: &RetentionDomain,
    tenant: &Tenant,
    e: &Erasure,
) -> Result<ErasureCompleted, privacy_event_store::StoreError> {
    let mut body = ErasureCompleted {
        erasure_id: e.erasure_id.clone(),
        action: e.action.clone(),
        kept: kept(e),
        ..Default::default()
    };
    if e.action != "anonymise" {
        return Ok(body);
    }
    let dimensions = cohort_dimensions(tenant).unwrap_or_else(|_| vec!["category".into()]);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let held = domain.reader.holdings(&tenant.id, &e.subject_id)?;
    for o in e.orders.iter().filter(|o| o.answered && !o.kept) {
        for h in held
            .iter()
            .filter(|h| h.system == o.system && o.categories.contains(&h.category))
        {
            let value = |d: &str| match d {
                "category" => h.category.clone(),
                "system" => h.system.clone(),
                "purpose" => {
                    let mut p = h.purposes.clone();
                    p.sort();
                    p.join("+")
                }
                _ => h
                    .first_collected_at
                    .as_ref()
                    .and_then(|t| tenant.local_date(micros(t)))
                    .map_or_else(|| "unknown".into(), |d| d.year().to_string()),
            };
            let cohort: Vec<String> = dimensions
                .iter()
                .map(|d| format!("{d}={}", value(d)))
                .collect();
            *counts.entry(cohort.join(" ")).or_default() += 1;
            body.anonymised.push(PlannedItem {
                system: h.system.clone(),
                category: h.category.clone(),
                ..Default::default()
            });
        }
    }
    body.cohorts = counts
        .into_iter()
        .map(|(cohort, count)| CohortCount { cohort, count })
        .collect();
    Ok(body)
}

/// The certificate of an erasure, as the view shows it now (the recipients to notify are added
/// by the handler, asked of disclosure-log).
pub fn certificate(tenant: &str, e: &Erasure, log_position: u64) -> ErasureCertificate {
    let mut missing = Vec::new();
    for o in e.orders.iter().filter(|o| !o.answered) {
        missing.push(format!(
            "system {} has not answered order {}",
            o.system, o.order_id
        ));
    }
    let mut shreds = Vec::new();
    if e.scope != "holdings" {
        if let Some(at) = e.shredded_at {
            shreds.push(ServiceShred {
                service: crate::SPEC.name.into(),
                shredded_at: Some(at),
                seq: e.shredded_seq,
            });
        } else {
            missing.push(format!(
                "{} has not shredded the subject's key yet",
                crate::SPEC.name
            ));
        }
        for shred in &e.shreds {
            shreds.push(shred.clone());
        }
        for service in ["consent", "subject-requests", "disclosure-log"] {
            if !e.shreds.iter().any(|s| s.service == service) {
                missing.push(format!(
                    "{service} has not reported shredding the subject's key (subject.shredded)"
                ));
            }
        }
    }
    ErasureCertificate {
        tenant: tenant.into(),
        erasure_id: e.erasure_id.clone(),
        subject_id: e.subject_id.clone(),
        planned_at: e.planned_at,
        erased_at: e.erased_at,
        confirmations: e.orders.clone(),
        kept: kept(e),
        shreds,
        missing,
        log_position,
        recipients_to_notify: Vec::new(),
    }
}
