//! The subject-requests service against a real NATS and real gRPC: dated deadlines of the
//! example tenants (statute beside promise, which binds, the margin), an extension across a
//! holiday, the lifecycle's illegal steps, partial completion, and `request.overdue` flipping
//! exactly once at the right instant on an explicit clock — also after a restart — and reaching
//! NATS once.

use std::time::Duration;

use async_nats::jetstream;
use privacy_e2e::*;
use privacy_proto::v1::*;
use privacy_subject_requests::{RequestsDomain, watch};
use privacy_testkit::NatsServer;
use tonic::Code;

/// Noon UTC of a date.
fn noon(date: &str) -> prost_types::Timestamp {
    format!("{date}T12:00:00Z").parse().unwrap()
}

fn micros(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

async fn open(
    c: &mut Requests,
    tenant: &str,
    t: RequestType,
    at: Option<prost_types::Timestamp>,
) -> SubjectRequest {
    c.open_request(OpenRequestRequest {
        tenant: tenant.into(),
        subject_id: format!("u-{}", uuid::Uuid::now_v7().simple()),
        request_type: t as i32,
        channel: "web".into(),
        received_at: at,
        event_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .request
    .unwrap()
}

fn deadlines(r: &SubjectRequest) -> &Deadlines {
    r.deadlines.as_ref().expect("the clock started")
}

fn due(d: &Option<Deadline>) -> &str {
    &d.as_ref().expect("a deadline").due
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_statute_and_promise_and_flag_overdue_once() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_subject_requests::SPEC, &nats.url(), data.path()).await;
    let mut c = requests_client(&svc.url(), OPERATOR_TOKEN).await;

    // VN (PDP Law 91/2025 from 2026-01-01): access in 10 days vs the promise of 30.
    let vn = open(
        &mut c,
        "vn-apihub",
        RequestType::Access,
        Some(noon("2026-03-02")),
    )
    .await;
    let d = deadlines(&vn);
    assert_eq!(
        (due(&d.statute), due(&d.promise), d.binding.as_str()),
        ("2026-03-12", "2026-04-01", "statute"),
        "{d:?}"
    );
    assert_eq!(d.margin_days, 20);
    assert!(
        d.promise_looser_than_statute,
        "the promise is looser than the law"
    );
    assert_eq!(d.clock_start, "received");

    // AU: a complaint, 30 days (Privacy Act s 40(1A)); the tenant promises nothing for it.
    let au = open(
        &mut c,
        "au-messenger",
        RequestType::Complaint,
        Some(noon("2026-06-01")),
    )
    .await;
    let d = deadlines(&au);
    assert_eq!(
        (due(&d.statute), d.binding.as_str()),
        ("2026-07-01", "statute")
    );
    assert!(d.promise.is_none());

    // RU: access in 10 working days (152-FZ Art. 20(1)), extended once by 5 across the May
    // holidays; a second extension is refused.
    let ru = open(
        &mut c,
        "ru-crm",
        RequestType::Access,
        Some(noon("2026-04-27")),
    )
    .await;
    assert_eq!(due(&deadlines(&ru).statute), "2026-05-13");
    assert!(deadlines(&ru).extension_allowed);
    let extended = c
        .extend_deadline(ExtendDeadlineRequest {
            tenant: "ru-crm".into(),
            request_id: ru.request_id.clone(),
            reason: "complexity".into(),
        })
        .await;
    // The deadline is in the past (2026-05-13 < now): an extension must come before it ends.
    assert_eq!(extended.unwrap_err().code(), Code::FailedPrecondition);
    let ru = open(&mut c, "ru-crm", RequestType::Access, None).await;
    let before = deadlines(&ru).statute.clone().unwrap();
    let after = c
        .extend_deadline(ExtendDeadlineRequest {
            tenant: "ru-crm".into(),
            request_id: ru.request_id.clone(),
            reason: "complexity".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let extended = deadlines(&after).statute.clone().unwrap();
    assert!(after.extended && extended.extended);
    assert!(extended.due > before.due, "{before:?} → {extended:?}");
    let again = c
        .extend_deadline(ExtendDeadlineRequest {
            tenant: "ru-crm".into(),
            request_id: ru.request_id.clone(),
            reason: "complexity".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again}");

    // Illegal steps name the state; partial completion keeps each part's reason.
    let r = open(&mut c, "vn-apihub", RequestType::Erasure, None).await;
    let (tenant, id) = ("vn-apihub".to_owned(), r.request_id.clone());
    let err = c
        .start_request(StartRequestRequest {
            tenant: tenant.clone(),
            request_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("received"), "{err}");
    c.verify_identity(VerifyIdentityRequest {
        tenant: tenant.clone(),
        request_id: id.clone(),
        method: "account_login".into(),
    })
    .await
    .unwrap();
    c.start_request(StartRequestRequest {
        tenant: tenant.clone(),
        request_id: id.clone(),
    })
    .await
    .unwrap();
    c.pause_request(PauseRequestRequest {
        tenant: tenant.clone(),
        request_id: id.clone(),
        reason: "legal_hold".into(),
    })
    .await
    .unwrap();
    let err = c
        .complete_request(CompleteRequestRequest {
            tenant: tenant.clone(),
            request_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("paused"), "{err}");
    c.resume_request(ResumeRequestRequest {
        tenant: tenant.clone(),
        request_id: id.clone(),
    })
    .await
    .unwrap();
    let done = c
        .complete_request(CompleteRequestRequest {
            tenant: tenant.clone(),
            request_id: id.clone(),
            parts_not_done: vec![PartNotDone {
                part: "billing".into(),
                reason: "tax_law_retention".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(done.state(), RequestState::PartiallyCompleted);
    assert_eq!(done.parts_not_done[0].reason, "tax_law_retention");
    let steps: Vec<&str> = done.steps.iter().map(|s| s.event_type.as_str()).collect();
    assert_eq!(
        steps,
        [
            "request.received",
            "request.identity_verified",
            "request.started",
            "request.paused",
            "request.resumed",
            "request.completed"
        ]
    );
    let err = c
        .withdraw_request(WithdrawRequestRequest {
            tenant: tenant.clone(),
            request_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("partially_completed"), "{err}");
    let free_text = c
        .reject_request(RejectRequestRequest {
            tenant: tenant.clone(),
            request_id: id.clone(),
            reason: "Ann Example asked twice".into(),
            legal_ground: "GDPR-12(5)".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(free_text.code(), Code::InvalidArgument);
    assert!(!free_text.message().contains("Ann"), "{free_text}");

    // Overdue, on an explicit clock: a VN access request received now is due in 10 days.
    let r = open(&mut c, "vn-apihub", RequestType::Access, None).await;
    let due_at = micros(
        deadlines(&r)
            .statute
            .as_ref()
            .unwrap()
            .due_at
            .as_ref()
            .unwrap(),
    );
    let domain = RequestsDomain::new(&svc.service.context);
    let mine = |flagged: watch::Flagged| -> Vec<&'static str> {
        flagged
            .into_iter()
            .filter(|(_, id)| *id == r.request_id)
            .map(|(t, _)| t)
            .collect()
    };
    let hour = 3_600_000_000;
    let ctx = &svc.service.context;
    assert!(mine(watch::scan(ctx, &domain, due_at - 49 * hour).await.unwrap()).is_empty());
    assert_eq!(
        mine(watch::scan(ctx, &domain, due_at - 47 * hour).await.unwrap()),
        ["request.due_soon"]
    );
    assert!(mine(watch::scan(ctx, &domain, due_at - 1).await.unwrap()).is_empty());
    assert_eq!(
        mine(watch::scan(ctx, &domain, due_at).await.unwrap()),
        ["request.overdue"]
    );
    assert!(mine(watch::scan(ctx, &domain, due_at + hour).await.unwrap()).is_empty());
    let overdue = c
        .list_requests(ListRequestsRequest {
            tenant: "vn-apihub".into(),
            overdue: true,
            as_of: Some(timestamp(due_at)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert!(
        overdue
            .iter()
            .any(|o| o.request_id == r.request_id && o.overdue)
    );

    // After a restart the watcher knows: nothing is flagged twice.
    drop(domain);
    svc.stop().await;
    let svc = InProcess::start(privacy_subject_requests::SPEC, &nats.url(), data.path()).await;
    let domain = RequestsDomain::new(&svc.service.context);
    assert!(
        mine(
            watch::scan(&svc.service.context, &domain, due_at + 2 * hour)
                .await
                .unwrap()
        )
        .is_empty()
    );

    // On NATS exactly once: withdraw the request, wait for that step's message, then count.
    let mut c = requests_client(&svc.url(), OPERATOR_TOKEN).await;
    c.withdraw_request(WithdrawRequestRequest {
        tenant: "vn-apihub".into(),
        request_id: r.request_id.clone(),
    })
    .await
    .unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let count = |subject: &'static str| {
        let js = js.clone();
        let id = r.request_id.clone();
        async move {
            let stream = js.get_stream("PRIVACY_EVT").await.unwrap();
            let consumer = stream
                .create_consumer(jetstream::consumer::pull::Config {
                    filter_subject: format!("privacy.evt.subject-requests.vn-apihub.{subject}"),
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut n = 0;
            let mut batch = consumer
                .fetch()
                .max_messages(1000)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .unwrap();
            use futures::StreamExt;
            while let Some(Ok(m)) = batch.next().await {
                if String::from_utf8_lossy(&m.payload).contains(&id) {
                    n += 1;
                }
            }
            n
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count("request.withdrawn").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the withdrawal never reached NATS"
        );
    }
    assert_eq!(count("request.overdue").await, 1);
    assert_eq!(count("request.due_soon").await, 1);
    svc.stop().await;
}
