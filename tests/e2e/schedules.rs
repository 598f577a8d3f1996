//! Retention schedules acting by themselves, against a real NATS and real gRPC: operators'
//! schedules (`PutSchedule`, versioned), a due schedule on an injected clock ordering exactly
//! once per system — also across a restart — except where a legal hold keeps the data until
//! released, anonymisation reduced to cohort counts,
//! archive-then-erase in its two steps, a consent withdrawal in consent's log starting a
//! schedule, and a child consent flags routed to erasure.

use async_nats::jetstream;
use privacy_e2e::*;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_retention::{RetentionDomain, erasure};
use privacy_testkit::NatsServer;
use tonic::Code;

use crate::retention::{answer, at, collected, erasure_when, event, out_orders};

fn micros(date: &str) -> i64 {
    let t = at(date);
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

fn schedule(category: &str, purpose: &str, trigger: &str, days: u32, action: &str) -> Schedule {
    Schedule {
        category: category.into(),
        purpose: purpose.into(),
        trigger: trigger.into(),
        duration_days: days,
        action: action.into(),
        basis: "consent".into(),
        citation: "the tenant's policy".into(),
        ..Default::default()
    }
}

async fn put(c: &mut Retention, s: Schedule) -> Result<Schedule, tonic::Status> {
    c.put_schedule(PutScheduleRequest {
        tenant: TENANT.into(),
        schedule: Some(s),
        put_by: "ops-7".into(),
    })
    .await
    .map(|r| r.into_inner().schedule.unwrap())
}

async fn holdings(c: &mut Retention, subject: &str) -> Vec<Holding> {
    c.get_subject_holdings(GetSubjectHoldingsRequest {
        tenant: TENANT.into(),
        subject_id: subject.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .holdings
}

/// The erasures one pass planned, as ids.
fn planned(settled: erasure::Settled) -> Vec<String> {
    settled
        .into_iter()
        .filter(|(t, _)| *t == "erasure.planned")
        .map(|(_, id)| id)
        .collect()
}

/// How many orders PRIVACY_OUT holds (this test's NATS serves no other).
async fn out_count(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream("PRIVACY_OUT").await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// An operator's schedule replaces the tenant file's; when it falls due on an injected clock,
/// one anonymise order goes to each system holding the data — once, also after a restart —,
/// and the answered holdings leave the inventory for cohort counts. The tenant file's
/// `archive_then_erase` first archives, then erases the archive copy when it falls due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_schedules_order_once_anonymise_to_counts_and_archive_then_erase() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_retention::SPEC, &nats.url(), data.path()).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut c = retention_client(&svc.url(), OPERATOR_TOKEN).await;

    // Operators' schedules are versioned per (category, purpose); a bad one names its field.
    let first = put(&mut c, schedule("usage", "*", "collected", 30, "anonymise"))
        .await
        .unwrap();
    assert_eq!((first.version, first.put_by.as_str()), (1, "ops-7"));
    let second = put(&mut c, schedule("usage", "*", "collected", 40, "anonymise"))
        .await
        .unwrap();
    assert_eq!((second.version, second.duration_days), (2, 40));
    assert!(second.seq > first.seq);
    let bad = put(&mut c, schedule("usage", "*", "collected", 40, "shred"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("action"), "{}", bad.message());
    let bad = put(
        &mut c,
        schedule("usage", "astrology", "collected", 1, "erase"),
    )
    .await
    .unwrap_err();
    assert!(bad.message().starts_with("purpose"), "{}", bad.message());
    let mut auditor = retention_client(&svc.url(), AUDITOR_TOKEN).await;
    assert_eq!(
        put(
            &mut auditor,
            schedule("usage", "*", "collected", 1, "erase")
        )
        .await
        .unwrap_err()
        .code(),
        Code::PermissionDenied
    );
    let listed = auditor
        .list_schedules(ListSchedulesRequest {
            tenant: TENANT.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .schedules;
    let usage: Vec<&Schedule> = listed.iter().filter(|s| s.category == "usage").collect();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].version, 2);
    assert!(
        listed
            .iter()
            .any(|s| s.category == "account" && s.version == 0)
    );

    // Usage data of two subjects in two systems, and one subject's account, deactivated.
    let (a, b, held) = ("u-due-a", "u-due-b", "u-due-held");
    for env in [
        event(a, "2026-11-20", collected("usage", "gateway", "analytics")),
        event(a, "2026-11-20", collected("usage", "mailer", "analytics")),
        event(b, "2026-11-20", collected("usage", "gateway", "analytics")),
        event(
            held,
            "2026-11-20",
            collected("usage", "gateway", "analytics"),
        ),
        event(
            a,
            "2026-11-20",
            collected("account", "accounts", "provide_service"),
        ),
        event(
            a,
            "2026-11-21",
            Payload::SubjectDeactivated(SubjectDeactivated::default()),
        ),
    ] {
        publish_acked(&js, &env).await;
    }
    eventually("the holdings", || {
        let mut c = c.clone();
        async move {
            let h = holdings(&mut c, b).await;
            let all = h.len() == 1
                && holdings(&mut c, a).await.len() == 3
                && holdings(&mut c, held).await.len() == 1;
            if all { Ok(()) } else { Err(format!("{h:?}")) }
        }
    })
    .await;
    let due = holdings(&mut c, b).await[0].due_at.unwrap();
    assert_eq!(due, at("2026-12-30"), "40 days, the put schedule's");

    // A legal hold keeps one subject's usage data.
    let hold = c
        .place_legal_hold(PlaceLegalHoldRequest {
            tenant: TENANT.into(),
            subject_id: held.into(),
            reason: "litigation".into(),
            placed_by: "ops-7".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap();

    // Not due the day before; due after: one anonymisation per subject not held, one order per
    // system; released, the held one follows. (The domain holds the store open: it goes
    // before the restart.)
    let (ids, orders) = {
        let ctx = &svc.service.context;
        let domain = RetentionDomain::new(ctx);
        let sweep = |now: i64| {
            let domain = domain.clone();
            async move { planned(erasure::sweep(ctx, &domain, now).await.unwrap()) }
        };
        assert!(sweep(micros("2026-12-29")).await.is_empty());
        let ids = sweep(micros("2026-12-31")).await;
        assert_eq!(ids.len(), 2, "one per subject");
        assert!(sweep(micros("2026-12-31")).await.is_empty(), "once");
        c.release_legal_hold(ReleaseLegalHoldRequest {
            tenant: TENANT.into(),
            hold_id: hold.hold_id.clone(),
            reason: "settled".into(),
        })
        .await
        .unwrap();
        let mut ids = ids;
        ids.extend(sweep(micros("2026-12-31")).await);
        assert_eq!(ids.len(), 3, "the released one too");
        let orders = out_orders(&js, "privacy.out.vn-apihub.*.anonymise", 4).await;
        (ids, orders)
    };
    let mut sent: Vec<(String, String)> = orders
        .iter()
        .map(|o| (o.subject_id.clone(), o.system.clone()))
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            (a.into(), "gateway".into()),
            (a.into(), "mailer".into()),
            (b.into(), "gateway".into()),
            (held.into(), "gateway".into())
        ]
    );

    // Across a restart: nothing planned again, nothing sent again.
    svc.stop().await;
    let svc = InProcess::start(privacy_retention::SPEC, &nats.url(), data.path()).await;
    let ctx = &svc.service.context;
    let domain = RetentionDomain::new(ctx);
    let mut c = retention_client(&svc.url(), OPERATOR_TOKEN).await;
    assert!(
        planned(
            erasure::sweep(ctx, &domain, micros("2027-01-05"))
                .await
                .unwrap()
        )
        .is_empty()
    );
    assert_eq!(out_count(&js).await, 4);

    // The systems answer: the anonymised holdings leave the inventory for counts.
    for o in &orders {
        publish_acked(&js, &answer(o, &o.system, "")).await;
    }
    for id in &ids {
        let e = erasure_when(&c, id, "the anonymisation completed", |e| {
            e.erased_at.is_some()
        })
        .await;
        assert_eq!(
            (e.scope.as_str(), e.action.as_str()),
            ("holdings", "anonymise")
        );
        assert!(
            e.shredded_at.is_none(),
            "no shred: the subject's other data stays"
        );
    }
    let counts = auditor_counts(&svc.url()).await;
    assert_eq!(
        counts,
        [CohortCount {
            cohort: "category=usage".into(),
            count: 4
        }]
    );
    let left = holdings(&mut c, a).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].category, "account");
    assert!(holdings(&mut c, b).await.is_empty());
    let cert = c
        .get_erasure_certificate(GetErasureRequest {
            tenant: TENANT.into(),
            erasure_id: ids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        cert.missing.is_empty() && cert.shreds.is_empty(),
        "{cert:?}"
    );
    assert!(cert.confirmations.iter().all(|o| o.answered));

    // The account: archived 1095 days after deactivation, the archive erased 365 days later.
    let ctx = &svc.service.context;
    let archive = planned(
        erasure::sweep(ctx, &domain, micros("2029-11-22"))
            .await
            .unwrap(),
    );
    assert_eq!(archive.len(), 1);
    let order = out_orders(&js, "privacy.out.vn-apihub.accounts.archive", 1).await;
    publish_acked(&js, &answer(&order[0], "accounts", "")).await;
    erasure_when(&c, &archive[0], "archived", |e| e.erased_at.is_some()).await;
    let h = holdings(&mut c, a).await;
    assert!(
        h[0].archived_at.is_some() && h[0].erased_at.is_none(),
        "{h:?}"
    );
    // The archive's period counts from the system's answer (now: the clock is only injected
    // into the sweep).
    let archived = h[0].archived_at.unwrap();
    let due = h[0].due_at.unwrap();
    assert_eq!(due.seconds - archived.seconds, 365 * 86_400, "archive_days");
    let due = due.seconds * 1_000_000 + i64::from(due.nanos) / 1000;
    assert!(
        planned(erasure::sweep(ctx, &domain, due - 1).await.unwrap()).is_empty(),
        "the archive is not due yet"
    );
    let last = planned(erasure::sweep(ctx, &domain, due).await.unwrap());
    assert_eq!(last.len(), 1);
    let order = out_orders(&js, "privacy.out.vn-apihub.accounts.erase", 1).await;
    publish_acked(&js, &answer(&order[0], "accounts", "")).await;
    erasure_when(&c, &last[0], "the archive erased", |e| {
        e.erased_at.is_some()
    })
    .await;
    assert!(holdings(&mut c, a).await[0].erased_at.is_some());
    assert!(
        planned(
            erasure::sweep(ctx, &domain, micros("2040-01-01"))
                .await
                .unwrap()
        )
        .is_empty()
    );
    let head = all_events(&mut audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await)
        .await
        .len() as u64;
    assert_rebuild_equals_live(&svc.url(), head).await;
    svc.stop().await;
}

async fn auditor_counts(url: &str) -> Vec<CohortCount> {
    retention_client(url, AUDITOR_TOKEN)
        .await
        .get_cohort_counts(GetCohortCountsRequest {
            tenant: TENANT.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .cohorts
}

/// Consent's events reach retention: a withdrawal stored by consent starts the schedule that
/// counts from it (and a trigger an operator records starts another), and a child registered
/// without a guardian's consent is routed to erasure — ordered, answered, the subject erased
/// and consent's copy shredded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_withdrawals_start_schedules_and_flagged_children_are_erased() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_retention::SPEC, &nats.url(), data.path()).await;
    let consent = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut c = retention_client(&svc.url(), OPERATOR_TOKEN).await;
    put(
        &mut c,
        schedule("profile", "marketing", "consent_withdrawn", 10, "erase"),
    )
    .await
    .unwrap();
    put(
        &mut c,
        schedule("contract", "*", "contract_ended", 5, "erase"),
    )
    .await
    .unwrap();

    let s = "u-withdraws";
    for env in [
        event(s, "2026-11-20", collected("profile", "mailer", "marketing")),
        event(
            s,
            "2026-11-20",
            collected("contract", "billing", "provide_service"),
        ),
    ] {
        publish_acked(&js, &env).await;
    }
    let withdrawal = event(
        s,
        "2026-11-22",
        Payload::ConsentWithdrawn(ConsentWithdrawn {
            purposes: vec!["marketing".into()],
            method: "settings".into(),
            ..Default::default()
        }),
    );
    publish_acked(&js, &withdrawal).await;
    // A redelivered withdrawal changes nothing (consent stores it once, retention observes once).
    publish_acked(&js, &withdrawal).await;
    let h = eventually("the withdrawal observed", || {
        let mut c = c.clone();
        async move {
            let h = holdings(&mut c, s).await;
            match h.iter().find(|h| h.category == "profile") {
                Some(p) if p.due_at.is_some() => Ok(h),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let profile = h.iter().find(|h| h.category == "profile").unwrap();
    assert_eq!(
        profile.due_at,
        Some(at("2026-12-02")),
        "withdrawal + 10 days"
    );
    let contract = h.iter().find(|h| h.category == "contract").unwrap();
    assert_eq!(contract.due_note, "trigger contract_ended not observed");

    // contract_ended comes from an operator or a system; consent_withdrawn only from consent.
    let mut backend = retention_client(&svc.url(), BACKEND_TOKEN).await;
    let trigger = |t: &str| RecordTriggerRequest {
        tenant: TENANT.into(),
        subject_id: s.into(),
        trigger: t.into(),
        at: Some(at("2026-11-23")),
        source: "billing".into(),
        ..Default::default()
    };
    let refused = backend
        .record_trigger(trigger("consent_withdrawn"))
        .await
        .unwrap_err();
    assert!(refused.message().starts_with("trigger"), "{refused}");
    let refused = backend
        .record_trigger(trigger("moon_phase"))
        .await
        .unwrap_err();
    assert!(refused.message().starts_with("trigger"), "{refused}");
    backend
        .record_trigger(trigger("contract_ended"))
        .await
        .unwrap();
    let h = holdings(&mut c, s).await;
    let contract = h.iter().find(|h| h.category == "contract").unwrap();
    assert_eq!(contract.due_at, Some(at("2026-11-28")));
    let observed = all_events(&mut audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await)
        .await
        .into_iter()
        .filter(|e| e.envelope.as_ref().unwrap().event_type == "trigger.observed")
        .count();
    assert_eq!(observed, 2, "the withdrawal once, the contract's end once");

    // A 14-year-old registers without a guardian: consent flags, retention erases.
    let kid = "u-kid";
    publish_acked(
        &js,
        &event(
            kid,
            "2026-11-20",
            collected("profile", "gateway", "provide_service"),
        ),
    )
    .await;
    eventually("the kid's holding", || {
        let mut c = c.clone();
        async move {
            let n = holdings(&mut c, kid).await.len();
            if n == 1 { Ok(()) } else { Err(n.to_string()) }
        }
    })
    .await;
    publish_acked(
        &js,
        &envelope(
            kid,
            Payload::SubjectRegistered(SubjectRegistered {
                birth_date: "2012-06-01".into(),
                ..Default::default()
            }),
        ),
    )
    .await;
    let order = out_orders(&js, "privacy.out.vn-apihub.gateway.erase", 1).await;
    assert_eq!(order[0].subject_id, kid);
    let id = order[0].order_id.split(':').next().unwrap().to_owned();
    let e = erasure_when(&c, &id, "the child's erasure", |_| true).await;
    assert_eq!(
        (e.reason.as_str(), e.scope.as_str()),
        ("child_flagged", "subject")
    );
    publish_acked(&js, &answer(&order[0], "gateway", "")).await;
    // Consent shreds on `subject.erased`, so its confirmation may be folded before retention's
    // own shred (a later commit of retention's): wait for all three.
    erasure_when(&c, &id, "erased, shredded here and by consent", |e| {
        e.erased_at.is_some()
            && e.shredded_at.is_some()
            && e.shreds.iter().any(|s| s.service == "consent")
    })
    .await;
    svc.stop().await;
    consent.stop().await;
}
