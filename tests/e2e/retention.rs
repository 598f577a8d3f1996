//! The retention service against a real NATS and real gRPC: the inventory built from
//! `data.collected` / `subject.deactivated` / `data.erased` on NATS, each holding under the
//! example tenant's schedule with its due instant, `ListDue` on an explicit instant (due, held,
//! unscheduled), and legal holds that move a due holding aside until released. The access
//! report of subject-requests includes the holdings.

use std::time::Duration;

use async_nats::jetstream;
use privacy_e2e::*;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;
use tonic::Code;

pub(crate) fn at(date: &str) -> prost_types::Timestamp {
    format!("{date}T12:00:00Z").parse().unwrap()
}

pub(crate) fn event(subject: &str, date: &str, payload: Payload) -> Envelope {
    let mut env = envelope(subject, payload);
    env.occurred_at = Some(at(date));
    env
}

pub(crate) fn collected(category: &str, system: &str, purpose: &str) -> Payload {
    Payload::DataCollected(DataCollected {
        category: category.into(),
        system: system.into(),
        purpose: purpose.into(),
        ..Default::default()
    })
}

fn kinds(list: &[Holding]) -> Vec<(String, String)> {
    list.iter()
        .map(|h| (h.subject_id.clone(), h.category.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holdings_fall_due_under_their_schedule_and_holds_keep_them() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_retention::SPEC, &nats.url(), data.path()).await;
    let requests = InProcess::start_with(
        privacy_subject_requests::SPEC,
        &nats.url(),
        data.path(),
        &[("PRIVACY_RETENTION_URL", &svc.url())],
    )
    .await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let (a, b) = ("u-ret-a", "u-ret-b");
    for env in [
        event(
            a,
            "2026-01-05",
            collected("contact", "accounts", "provide_service"),
        ),
        event(
            a,
            "2026-01-06",
            collected("billing", "billing", "provide_service"),
        ),
        event(a, "2026-02-01", collected("contact", "mailer", "marketing")),
        event(
            a,
            "2026-03-01",
            Payload::SubjectDeactivated(SubjectDeactivated::default()),
        ),
        event(
            b,
            "2026-01-07",
            collected("location", "gateway", "analytics"),
        ),
    ] {
        publish_acked(&js, &env).await;
    }
    let mut audit = audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await;
    wait_for_head(&mut audit, 5, Duration::from_secs(20)).await;

    let mut c = retention_client(&svc.url(), OPERATOR_TOKEN).await;
    let holdings = c
        .get_subject_holdings(GetSubjectHoldingsRequest {
            tenant: TENANT.into(),
            subject_id: a.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(holdings.deactivated_at, Some(at("2026-03-01")));
    let find = |system: &str| {
        holdings
            .holdings
            .iter()
            .find(|h| h.system == system)
            .unwrap_or_else(|| panic!("a holding in {system}: {holdings:?}"))
            .clone()
    };
    // Contact data: three years after deactivation (the policy's "legal duties and disputes").
    let contact = find("accounts");
    let schedule = contact.schedule.as_ref().unwrap();
    assert_eq!(
        (schedule.trigger.as_str(), schedule.duration_days),
        ("deactivated", 1095)
    );
    let three_years = 1095 * 86_400;
    assert_eq!(
        contact.due_at.unwrap().seconds,
        at("2026-03-01").seconds + three_years
    );
    // Billing: ten years from collection (accounting law), whatever the account does.
    let billing = find("billing");
    assert_eq!(
        billing.due_at.unwrap().seconds,
        at("2026-01-06").seconds + 3650 * 86_400
    );

    // A day after the contact data's due instant: both contact holdings are due, billing is
    // not, and the location data no schedule covers is reported apart.
    let as_of = prost_types::Timestamp {
        seconds: at("2026-03-01").seconds + three_years + 86_400,
        nanos: 0,
    };
    let list_due = |c: &mut Retention| {
        let mut c = c.clone();
        async move {
            c.list_due(ListDueRequest {
                tenant: TENANT.into(),
                as_of: Some(as_of),
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let due = list_due(&mut c).await;
    let contact_of_a = vec![
        (a.to_owned(), "contact".to_owned()),
        (a.to_owned(), "contact".to_owned()),
    ];
    assert_eq!(kinds(&due.due), contact_of_a);
    assert!(due.held.is_empty());
    assert_eq!(
        kinds(&due.unscheduled),
        [(b.to_owned(), "location".to_owned())]
    );

    // A legal hold on the subject's contact data moves both aside until it is released.
    let hold = c
        .place_legal_hold(PlaceLegalHoldRequest {
            tenant: TENANT.into(),
            subject_id: a.into(),
            category: "contact".into(),
            reason: "litigation".into(),
            placed_by: "ops-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap();
    let due = list_due(&mut c).await;
    assert!(due.due.is_empty());
    assert_eq!(kinds(&due.held), contact_of_a);
    assert!(
        due.held
            .iter()
            .all(|h| h.hold_ids == [hold.hold_id.clone()])
    );
    let release = ReleaseLegalHoldRequest {
        tenant: TENANT.into(),
        hold_id: hold.hold_id.clone(),
        reason: "case_closed".into(),
    };
    let released = c
        .release_legal_hold(release.clone())
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap();
    assert!(released.released_at.is_some());
    assert_eq!(kinds(&list_due(&mut c).await.due), contact_of_a);
    let again = c.release_legal_hold(release).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again}");
    let scopeless = c
        .place_legal_hold(PlaceLegalHoldRequest {
            tenant: TENANT.into(),
            reason: "litigation".into(),
            placed_by: "ops-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(scopeless.code(), Code::InvalidArgument);
    assert!(scopeless.message().starts_with("subject_id"), "{scopeless}");
    let holds = c
        .list_legal_holds(ListLegalHoldsRequest {
            tenant: TENANT.into(),
            include_released: true,
        })
        .await
        .unwrap()
        .into_inner()
        .holds;
    assert_eq!(holds.len(), 1);
    let mut backend = retention_client(&svc.url(), BACKEND_TOKEN).await;
    let denied = backend
        .list_legal_holds(ListLegalHoldsRequest {
            tenant: TENANT.into(),
            include_released: false,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // The mailer confirms it erased its copy: one contact holding is left due.
    let head = head_seq(&mut audit).await;
    publish_acked(
        &js,
        &event(
            a,
            "2026-04-01",
            Payload::DataErased(DataErased {
                category: "contact".into(),
                system: "mailer".into(),
                ..Default::default()
            }),
        ),
    )
    .await;
    wait_for_head(&mut audit, head + 1, Duration::from_secs(20)).await;
    let due = list_due(&mut c).await;
    assert_eq!(due.due.len(), 1);
    assert_eq!(due.due[0].system, "accounts");

    // The access report carries the holdings, with retention's log position.
    let channel = tonic::transport::Endpoint::from_shared(requests.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut r = privacy_proto::v1::subject_request_service_client::SubjectRequestServiceClient::with_interceptor(
        channel,
        Bearer(Some(AUDITOR_TOKEN)),
    );
    let report = r
        .get_access_report(GetAccessReportRequest {
            tenant: TENANT.into(),
            subject_id: a.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !report.missing.contains(&"retention".to_owned()),
        "{report:?}"
    );
    let json: serde_json::Value = serde_json::from_str(&report.json).unwrap();
    let section = &json["sections"]["holdings"];
    assert_eq!(section["status"], "ok");
    assert_eq!(section["holdings"].as_array().unwrap().len(), 3);
    assert!(section["log_position"].as_u64().unwrap() >= 6);

    requests.stop().await;
    svc.stop().await;
}

/// The erasure once `done` holds (polled, at most 20 s); NOT_FOUND counts as not yet (a plan a
/// reaction recorded can reach NATS before the views fold it).
pub(crate) async fn erasure_when(
    c: &Retention,
    id: &str,
    what: &str,
    done: impl Fn(&Erasure) -> bool,
) -> Erasure {
    eventually(what, || {
        let mut c = c.clone();
        let done = &done;
        async move {
            let asked = c
                .get_erasure(GetErasureRequest {
                    tenant: TENANT.into(),
                    erasure_id: id.into(),
                })
                .await;
            match asked {
                Ok(r) => {
                    let e = r.into_inner().erasure.unwrap();
                    if done(&e) {
                        Ok(e)
                    } else {
                        Err(format!("{e:?}"))
                    }
                }
                Err(s) if s.code() == Code::NotFound => Err(s.to_string()),
                Err(s) => panic!("{s}"),
            }
        }
    })
    .await
}

pub(crate) async fn erasure(c: &mut Retention, id: &str) -> Erasure {
    c.get_erasure(GetErasureRequest {
        tenant: TENANT.into(),
        erasure_id: id.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .erasure
    .unwrap()
}

/// The first `want` orders under `filter` on PRIVACY_OUT, each on its system's and action's
/// subject.
pub(crate) async fn out_orders(js: &jetstream::Context, filter: &str, want: usize) -> Vec<Order> {
    use prost::Message;
    let mut orders = Vec::new();
    for m in fetch_messages(js, "PRIVACY_OUT", filter, want).await {
        let order = Order::decode(m.payload.as_ref()).unwrap();
        let subject = format!(
            "privacy.out.{}.{}.{}",
            order.tenant, order.system, order.action
        );
        assert_eq!(m.subject.as_str(), subject);
        orders.push(order);
    }
    orders
}

/// The `Privacy-Error-Field` of the first `want` dead letters of retention, sorted.
async fn dead_fields(js: &jetstream::Context, want: usize) -> Vec<String> {
    let dead = fetch_messages(js, "PRIVACY_DLQ", "privacy.dlq.retention.>", want).await;
    let mut fields: Vec<String> = dead
        .iter()
        .map(|m| {
            let field = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Privacy-Error-Field"));
            field.map(|v| v.as_str().to_owned()).unwrap_or_default()
        })
        .collect();
    fields.sort();
    fields
}

pub(crate) fn answer(order: &Order, system: &str, kept_reason: &str) -> Envelope {
    let mut env = envelope(
        &order.subject_id,
        Payload::DataErased(DataErased {
            order_id: order.order_id.clone(),
            category: order.categories[0].clone(),
            system: system.into(),
            kept_reason: kept_reason.into(),
            ..Default::default()
        }),
    );
    env.source = system.into();
    env
}

/// An erasure end to end inside retention: the plan keeps what a legal hold or a legal duty
/// keeps, erase orders go to the systems on PRIVACY_OUT, a wrong system's answer is refused, the
/// service restarts between the answers, and once both systems answered (one keeping data, with
/// its reason) the subject is erased and shredded here exactly once, and the certificate says
/// what was erased, what was kept and why, and which services have not shredded yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_orders_the_systems_and_ends_in_a_certificate() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_retention::SPEC, &nats.url(), data.path()).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let s = "u-erase";
    let today = "2026-11-20";
    for env in [
        event(
            s,
            today,
            collected("contact", "accounts", "provide_service"),
        ),
        event(s, today, collected("contact", "mailer", "marketing")),
        event(s, today, collected("billing", "billing", "provide_service")),
        event(s, today, collected("account", "gateway", "provide_service")),
    ] {
        publish_acked(&js, &env).await;
    }
    let mut audit = audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await;
    wait_for_head(&mut audit, 4, Duration::from_secs(20)).await;
    let mut c = retention_client(&svc.url(), OPERATOR_TOKEN).await;
    c.place_legal_hold(PlaceLegalHoldRequest {
        tenant: TENANT.into(),
        system: "gateway".into(),
        reason: "regulator_request".into(),
        placed_by: "ops-2".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let request = |dry_run| PlanErasureRequest {
        tenant: TENANT.into(),
        subject_id: s.into(),
        reason: "subject_request".into(),
        dry_run,
        ..Default::default()
    };
    let dry = c.plan_erasure(request(true)).await.unwrap().into_inner();
    assert_eq!(dry.seq, 0, "a dry run records nothing");
    let plan = dry.erasure.unwrap();
    let items = |list: &[PlannedItem]| -> Vec<(String, String)> {
        let mut v: Vec<_> = list
            .iter()
            .map(|i| (i.system.clone(), i.reason.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        items(&plan.goes),
        [
            ("accounts".into(), String::new()),
            ("mailer".into(), String::new())
        ]
    );
    assert_eq!(
        items(&plan.stays),
        [
            ("billing".into(), "legal_obligation".into()),
            ("gateway".into(), "legal_hold".into())
        ]
    );
    let billing = plan.stays.iter().find(|i| i.system == "billing").unwrap();
    assert!(billing.citation.contains("Accounting"), "{billing:?}");
    assert!(billing.until.is_some());

    let planned = c.plan_erasure(request(false)).await.unwrap().into_inner();
    let id = planned.erasure.unwrap().erasure_id;
    let orders = out_orders(&js, "privacy.out.vn-apihub.*.erase", 2).await;
    let order = |system: &str| orders.iter().find(|o| o.system == system).unwrap().clone();
    assert_eq!(order("mailer").categories, ["contact"]);
    let early = c
        .get_erasure_certificate(GetErasureRequest {
            tenant: TENANT.into(),
            erasure_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);
    assert!(early.message().contains("mailer"), "{early}");

    // The accounts system answers; a wrong system's answer to the mailer's order is refused.
    publish_acked(&js, &answer(&order("accounts"), "accounts", "")).await;
    publish_acked(&js, &answer(&order("mailer"), "billing", "")).await;
    erasure_when(&c, &id, "the accounts answer folded", |e| {
        e.orders.iter().any(|o| o.answered)
    })
    .await;

    // Both refusals are dead-lettered naming the field: the wrong system, and an unknown order.
    let mut unknown = order("accounts");
    unknown.order_id = "0190f5a4-8a3c-7cc0-9d3e-4c1d2e3f4a5b:accounts".into();
    publish_acked(&js, &answer(&unknown, "accounts", "")).await;
    assert_eq!(
        dead_fields(&js, 2).await,
        ["data_erased.order_id", "data_erased.system"]
    );

    // A restart between the answers; then the mailer keeps part of it, with a reason.
    svc.stop().await;
    let svc = InProcess::start(privacy_retention::SPEC, &nats.url(), data.path()).await;
    let mut c = retention_client(&svc.url(), OPERATOR_TOKEN).await;
    publish_acked(&js, &answer(&order("mailer"), "mailer", "tax law, 5 years")).await;
    let done = erasure_when(&c, &id, "the erasure finished", |e| e.shredded_at.is_some()).await;
    assert!(done.erased_at.is_some() && done.erased_seq < done.shredded_seq);
    let ctx = &svc.service.context;
    assert!(
        !ctx.vault.has_live_key(TENANT, s).unwrap(),
        "the key is shredded"
    );

    let cert = c
        .get_erasure_certificate(GetErasureRequest {
            tenant: TENANT.into(),
            erasure_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cert.confirmations.len(), 2);
    assert!(
        cert.confirmations
            .iter()
            .all(|o| o.answered && o.confirmation_seq > 0)
    );
    assert_eq!(
        items(&cert.kept),
        [
            ("billing".into(), "legal_obligation".into()),
            ("gateway".into(), "legal_hold".into()),
            ("mailer".into(), "kept_by_system".into())
        ]
    );
    assert_eq!(cert.shreds.len(), 1);
    assert_eq!(cert.shreds[0].service, "retention");
    assert_eq!(cert.shreds[0].seq, done.shredded_seq);
    assert!(
        cert.missing.iter().any(|m| m.starts_with("consent")),
        "{:?}",
        cert.missing
    );

    // Once: one subject.erased and one subject.shredded, and the chain verifies.
    let mut audit = audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await;
    let events = all_events(&mut audit).await;
    let count = |t: &str| {
        events
            .iter()
            .filter(|e| e.envelope.as_ref().unwrap().event_type == t)
            .count()
    };
    assert_eq!((count("subject.erased"), count("subject.shredded")), (1, 1));
    assert_eq!(count("erasure.ordered"), 2);
    assert_log_intact(&mut audit, &events, events.len() as u64).await;
    svc.stop().await;
}

/// An erase order nobody answers is sent again at its reply-by (same order id, next attempt,
/// on an explicit clock), escalated once after the last attempt, and still completes the
/// erasure when the answer finally comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_erase_order_is_sent_again_then_escalated() {
    use privacy_retention::{RetentionDomain, erasure};

    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_retention::SPEC, &nats.url(), data.path()).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let s = "u-silent";
    publish_acked(
        &js,
        &event(
            s,
            "2026-11-20",
            collected("contact", "accounts", "provide_service"),
        ),
    )
    .await;
    let mut audit = audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await;
    wait_for_head(&mut audit, 1, Duration::from_secs(20)).await;
    let mut c = retention_client(&svc.url(), OPERATOR_TOKEN).await;
    let id = c
        .plan_erasure(PlanErasureRequest {
            tenant: TENANT.into(),
            subject_id: s.into(),
            reason: "operator".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .erasure
        .unwrap()
        .erasure_id;
    let first = out_orders(&js, "privacy.out.vn-apihub.accounts.erase", 1).await;
    assert_eq!(first[0].attempt, 1);

    let ctx = &svc.service.context;
    let domain = RetentionDomain::new(ctx);
    let reply_by = |e: &Erasure| {
        let t = e.orders[0].reply_by.unwrap();
        t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
    };
    let mine = |settled: erasure::Settled| -> Vec<&'static str> {
        settled
            .into_iter()
            .filter(|(_, e)| *e == id)
            .map(|(t, _)| t)
            .collect()
    };
    let e = erasure(&mut c, &id).await;
    assert!(
        mine(
            erasure::settle(ctx, &domain, reply_by(&e) - 1)
                .await
                .unwrap()
        )
        .is_empty()
    );
    for attempt in 2..=erasure::MAX_ATTEMPTS {
        let e = erasure(&mut c, &id).await;
        assert_eq!(
            mine(erasure::settle(ctx, &domain, reply_by(&e)).await.unwrap()),
            ["erasure.ordered"]
        );
        let e = erasure(&mut c, &id).await;
        assert_eq!(e.orders[0].attempts, attempt);
    }
    let sent = out_orders(&js, "privacy.out.vn-apihub.accounts.erase", 3).await;
    let attempts: Vec<u32> = sent.iter().map(|o| o.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(sent.iter().all(|o| o.order_id == first[0].order_id));
    let e = erasure(&mut c, &id).await;
    let last = reply_by(&e);
    assert_eq!(
        mine(erasure::settle(ctx, &domain, last).await.unwrap()),
        ["erasure.escalated"]
    );
    assert!(mine(erasure::settle(ctx, &domain, last + 1).await.unwrap()).is_empty());
    assert!(erasure(&mut c, &id).await.orders[0].escalated);

    // The answer comes after all: the erasure finishes.
    publish_acked(&js, &answer(&first[0], "accounts", "")).await;
    erasure_when(&c, &id, "the erasure finished", |e| e.shredded_at.is_some()).await;
    svc.stop().await;
}

/// Erasure across the four services, from the subject's request: subject-requests hands it to
/// retention, which plans it (billing data stays under its legal duty) and orders the system;
/// once it answered, retention's `subject.erased` makes consent, subject-requests and
/// disclosure-log each shred the subject's key and say so, retention collects their
/// `subject.shredded` into the certificate (four shreds, the earlier recipient to notify,
/// nothing missing), and the request is
/// partially completed naming what was kept and why. Consent's receipt then shows the evidence
/// as erased, and every chain still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_shreds_on_subject_erased_and_the_certificate_says_so() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let consent = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    let requests = InProcess::start(privacy_subject_requests::SPEC, &nats.url(), data.path()).await;
    let disclosures =
        InProcess::start(privacy_disclosure_log::SPEC, &nats.url(), data.path()).await;
    let retention = InProcess::start_with(
        privacy_retention::SPEC,
        &nats.url(),
        data.path(),
        &[("PRIVACY_DISCLOSURE_LOG_URL", &disclosures.url())],
    )
    .await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let s = "u-everywhere";

    // The subject in every service: a consent with sealed evidence, a request, a disclosure,
    // data held in one system.
    publish_policy_v1(&consent.url()).await;
    let mut grant = envelope(s, granted("marketing"));
    grant.occurred_at = Some(std::time::SystemTime::now().into());
    publish_acked(&js, &grant).await;
    publish_acked(&js, &envelope(s, disclosed_to("Acme Logistics"))).await;
    for env in [
        event(
            s,
            "2026-11-20",
            collected("contact", "accounts", "provide_service"),
        ),
        event(
            s,
            "2026-11-20",
            collected("billing", "billing", "provide_service"),
        ),
    ] {
        publish_acked(&js, &env).await;
    }
    let mut r = requests_client(&requests.url(), OPERATOR_TOKEN).await;
    let request = open_request(&mut r, s, RequestType::Erasure).await;
    for (svc, head) in [(&consent, 2), (&disclosures, 1), (&retention, 2)] {
        let mut audit = audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await;
        wait_for_head(&mut audit, head, Duration::from_secs(20)).await;
    }
    // Consent holds the sealed evidence under the subject's key.
    assert!(
        consent
            .service
            .context
            .vault
            .has_live_key(TENANT, s)
            .unwrap()
    );

    // The request is verified and started: retention takes the hand-off and orders the erasure.
    let (tenant, request_id) = (TENANT.to_owned(), request.request_id.clone());
    r.verify_identity(VerifyIdentityRequest {
        tenant: tenant.clone(),
        request_id: request_id.clone(),
        method: "account_login".into(),
    })
    .await
    .unwrap();
    r.start_request(StartRequestRequest {
        tenant: tenant.clone(),
        request_id: request_id.clone(),
    })
    .await
    .unwrap();
    let mut c = retention_client(&retention.url(), OPERATOR_TOKEN).await;
    let order = out_orders(&js, "privacy.out.vn-apihub.*.erase", 1).await;
    assert_eq!(
        order.len(),
        1,
        "billing stays: only the accounts system is ordered"
    );
    assert_eq!(order[0].request_id, request_id);
    let id = order[0].order_id.split(':').next().unwrap().to_owned();
    publish_acked(&js, &answer(&order[0], "accounts", "")).await;
    let done = erasure_when(&c, &id, "every service reported its shred", |e| {
        e.shredded_at.is_some() && e.shreds.len() == 3
    })
    .await;
    let mut services: Vec<&str> = done.shreds.iter().map(|s| s.service.as_str()).collect();
    services.sort();
    assert_eq!(services, ["consent", "disclosure-log", "subject-requests"]);
    assert!(done.shreds.iter().all(|s| s.seq > 0), "{:?}", done.shreds);
    let cert = c
        .get_erasure_certificate(GetErasureRequest {
            tenant: TENANT.into(),
            erasure_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cert.shreds.len(), 4);
    assert!(cert.missing.is_empty(), "{:?}", cert.missing);
    // The earlier recipient, to tell of the erasure.
    let recipients: Vec<&str> = cert
        .recipients_to_notify
        .iter()
        .map(|r| r.recipient.as_str())
        .collect();
    assert_eq!(recipients, ["Acme Logistics"]);

    // The request completed, naming what was kept and why.
    let done = eventually("the request completed", || {
        let mut r = r.clone();
        let request_id = request_id.clone();
        let tenant = tenant.clone();
        async move {
            let got = r
                .get_request(GetRequestRequest { tenant, request_id })
                .await
                .unwrap()
                .into_inner()
                .request
                .unwrap();
            match got.state() {
                RequestState::InProgress => Err(format!("{got:?}")),
                _ => Ok(got),
            }
        }
    })
    .await;
    assert_eq!(done.state(), RequestState::PartiallyCompleted);
    assert_eq!(
        done.parts_not_done,
        [PartNotDone {
            part: "erase:billing:billing".into(),
            reason: "legal_obligation".into()
        }]
    );
    assert!(done.waiting_on.is_empty());
    for svc in [&consent, &requests, &disclosures, &retention] {
        assert!(!svc.service.context.vault.has_live_key(TENANT, s).unwrap());
        let mut audit = audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await;
        let events = all_events(&mut audit).await;
        assert_log_intact(&mut audit, &events, events.len() as u64).await;
    }

    // Consent's receipt shows the evidence as erased.
    let mut consents = consent_client(&consent.url(), AUDITOR_TOKEN).await;
    let history = consents
        .get_consent_history(GetConsentHistoryRequest {
            tenant: TENANT.into(),
            subject_id: s.into(),
            purpose: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let record = history.entries[0].record_id.clone();
    let receipt = consents
        .export_consent_receipt(ExportConsentReceiptRequest {
            tenant: TENANT.into(),
            subject_id: s.into(),
            record_id: record,
        })
        .await
        .unwrap()
        .into_inner()
        .receipt_json;
    let receipt: serde_json::Value = serde_json::from_str(&receipt).unwrap();
    assert_eq!(receipt["evidence"]["ip"]["erased"], true, "{receipt}");

    for svc in [retention, disclosures, requests, consent] {
        svc.stop().await;
    }
}
