//! Orders to backends and the access report, against a real NATS and real gRPC: a started
//! rectification sends one order per system of the tenant on `privacy.out`; systems answer with
//! `order.confirmed` on NATS (a wrong system's answer goes to the DLQ naming the field); the last
//! answer completes the request at once, a refusal makes it partial with the system's reason,
//! and silence past the reply-by (on an explicit clock) makes it partial with `no_confirmation`.
//! A started erasure is handed to retention and waits. The access report names each section's
//! service and log position, and names the services that did not answer.

use async_nats::jetstream;
use privacy_e2e::*;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_subject_requests::{RequestsDomain, watch};
use privacy_testkit::NatsServer;
use prost::Message;

const SHOP: &str = "eu-shop";

/// The example tenants plus `eu-shop`, whose two systems answer orders within a day.
fn tenants_with_shop() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tenants_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.path().join("eu-shop.toml"),
        r#"id = "eu-shop"
display_name = "EU Shop"
jurisdiction = "EU"
time_zone = "Europe/Berlin"
systems = ["crm", "mailer"]

[requests]
order_reply_hours = 24
"#,
    )
    .unwrap();
    dir
}

/// Opens a request of `t` for a new subject, verifies identity and starts it.
async fn started(c: &mut Requests, tenant: &str, t: RequestType) -> SubjectRequest {
    let opened = c
        .open_request(OpenRequestRequest {
            tenant: tenant.into(),
            subject_id: format!("u-{}", uuid::Uuid::now_v7().simple()),
            request_type: t as i32,
            channel: "web".into(),
            event_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let (tenant, request_id) = (tenant.to_owned(), opened.request_id);
    c.verify_identity(VerifyIdentityRequest {
        tenant: tenant.clone(),
        request_id: request_id.clone(),
        method: "account_login".into(),
    })
    .await
    .unwrap();
    c.start_request(StartRequestRequest { tenant, request_id })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap()
}

async fn get(c: &mut Requests, tenant: &str, id: &str) -> SubjectRequest {
    c.get_request(GetRequestRequest {
        tenant: tenant.into(),
        request_id: id.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .request
    .unwrap()
}

/// The request once `done` holds (polled, at most 20 s).
async fn until(
    c: &mut Requests,
    tenant: &str,
    id: &str,
    what: &str,
    done: impl Fn(&SubjectRequest) -> bool,
) -> SubjectRequest {
    eventually(what, || {
        let mut c = c.clone();
        let done = &done;
        async move {
            let r = get(&mut c, tenant, id).await;
            if done(&r) {
                Ok(r)
            } else {
                Err(format!("{r:?}"))
            }
        }
    })
    .await
}

fn confirmation(order: &Order, system: &str, outcome: OrderOutcome, reason: &str) -> Envelope {
    let mut env = envelope(
        &order.subject_id,
        Payload::OrderConfirmed(OrderConfirmed {
            order_id: order.order_id.clone(),
            system: system.into(),
            outcome: outcome as i32,
            reason: reason.into(),
        }),
    );
    env.tenant = order.tenant.clone();
    env.source = system.into();
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_fan_out_and_settle_and_the_access_report_names_what_is_missing() {
    let nats = NatsServer::start();
    let tenants = tenants_with_shop();
    let tenants_dir = tenants.path().display().to_string();
    let data = tempfile::tempdir().unwrap();
    let consent = InProcess::start_with(
        privacy_consent::SPEC,
        &nats.url(),
        data.path(),
        &[("PRIVACY_TENANTS_DIR", &tenants_dir)],
    )
    .await;
    let disclosures = InProcess::start_with(
        privacy_disclosure_log::SPEC,
        &nats.url(),
        data.path(),
        &[("PRIVACY_TENANTS_DIR", &tenants_dir)],
    )
    .await;
    // Nothing listens on port 9 of the loopback: retention is down.
    let svc = InProcess::start_with(
        privacy_subject_requests::SPEC,
        &nats.url(),
        data.path(),
        &[
            ("PRIVACY_TENANTS_DIR", &tenants_dir),
            ("PRIVACY_CONSENT_URL", &consent.url()),
            ("PRIVACY_DISCLOSURE_LOG_URL", &disclosures.url()),
            ("PRIVACY_RETENTION_URL", "http://127.0.0.1:9"),
        ],
    )
    .await;
    let mut c = requests_client(&svc.url(), OPERATOR_TOKEN).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());

    // A rectification sends one order to each of the shop's two systems, on privacy.out.
    let r = started(&mut c, SHOP, RequestType::Rectification).await;
    assert_eq!(r.state(), RequestState::InProgress);
    let mut systems: Vec<&str> = r.orders.iter().map(|o| o.system.as_str()).collect();
    systems.sort();
    assert_eq!(systems, ["crm", "mailer"]);
    let sent = fetch_messages(&js, "PRIVACY_OUT", "privacy.out.eu-shop.>", 2).await;
    let mut orders = Vec::new();
    for m in &sent {
        let order = Order::decode(m.payload.as_ref()).unwrap();
        assert_eq!(
            m.subject.as_str(),
            format!("privacy.out.eu-shop.{}.rectify", order.system)
        );
        assert_eq!(order.request_id, r.request_id);
        assert_eq!(order.subject_id, r.subject_id);
        assert_eq!(order.confirm_with, "order.confirmed");
        orders.push(order);
    }
    orders.sort_by(|a, b| a.system.cmp(&b.system));
    let (crm, mailer) = (&orders[0], &orders[1]);
    let reply_by = crm.reply_by.unwrap();
    let issued = crm.issued_at.unwrap();
    assert_eq!(
        reply_by.seconds - issued.seconds,
        24 * 3600,
        "order_reply_hours"
    );

    // The mailer's order answered by the crm is refused and goes to the DLQ, naming the field.
    publish_acked(&js, &confirmation(mailer, "crm", OrderOutcome::Done, "")).await;
    let dead = fetch_messages(
        &js,
        "PRIVACY_DLQ",
        "privacy.dlq.subject-requests.eu-shop",
        1,
    )
    .await;
    let field = dead[0].headers.as_ref().unwrap().get("Privacy-Error-Field");
    assert_eq!(field.map(|v| v.as_str()), Some("order_confirmed.system"));

    // The crm confirms; the mailer stays silent. The request waits for it...
    publish_acked(&js, &confirmation(crm, "crm", OrderOutcome::Done, "")).await;
    let r = until(&mut c, SHOP, &r.request_id, "the crm's answer", |r| {
        r.orders.iter().any(|o| o.outcome() == OrderOutcome::Done)
    })
    .await;
    assert_eq!(r.state(), RequestState::InProgress);
    let ctx = &svc.service.context;
    let domain = RequestsDomain::new(ctx);
    let at = |t: prost_types::Timestamp| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000;
    let mine = |flagged: watch::Flagged| -> Vec<&'static str> {
        flagged
            .into_iter()
            .filter(|(_, id)| *id == r.request_id)
            .map(|(t, _)| t)
            .collect()
    };
    let scan = watch::scan(ctx, &domain, at(reply_by) - 1).await.unwrap();
    assert!(mine(scan).is_empty(), "not before the reply-by");
    // ...until its reply-by passes: partially completed, the silent system named.
    let scan = watch::scan(ctx, &domain, at(reply_by)).await.unwrap();
    assert_eq!(mine(scan), ["request.completed"]);
    let r = get(&mut c, SHOP, &r.request_id).await;
    assert_eq!(r.state(), RequestState::PartiallyCompleted);
    assert_eq!(
        r.parts_not_done,
        [PartNotDone {
            part: "rectify:mailer".into(),
            reason: "no_confirmation".into()
        }]
    );
    let scan = watch::scan(ctx, &domain, at(reply_by) + 1).await.unwrap();
    assert!(mine(scan).is_empty(), "completed once");

    // A restriction both systems answer completes as soon as the last answer is stored; a
    // refusal is a part not done, with the system's reason.
    let r = started(&mut c, SHOP, RequestType::Restriction).await;
    let sent = fetch_messages(&js, "PRIVACY_OUT", "privacy.out.eu-shop.*.restrict", 2).await;
    for m in &sent {
        let order = Order::decode(m.payload.as_ref()).unwrap();
        let (outcome, reason) = if order.system == "crm" {
            (OrderOutcome::NotHeld, "")
        } else {
            (OrderOutcome::Refused, "legal_retention_duty")
        };
        publish_acked(&js, &confirmation(&order, &order.system, outcome, reason)).await;
    }
    let r = until(&mut c, SHOP, &r.request_id, "completion", |r| {
        r.state() != RequestState::InProgress
    })
    .await;
    assert_eq!(r.state(), RequestState::PartiallyCompleted);
    assert_eq!(
        r.parts_not_done,
        [PartNotDone {
            part: "restrict:mailer".into(),
            reason: "legal_retention_duty".into()
        }]
    );

    // An erasure is handed to retention and waits for it.
    let e = started(&mut c, SHOP, RequestType::Erasure).await;
    assert_eq!(e.waiting_on, ["retention"]);
    assert!(
        e.orders.is_empty(),
        "retention orders erasures, not this service"
    );
    fetch_messages(
        &js,
        "PRIVACY_EVT",
        "privacy.evt.subject-requests.eu-shop.request.erasure_requested",
        1,
    )
    .await;

    // The access report: consent's history with its log position, the subject's disclosures
    // and their recipients, the subject's requests, and retention (down) named as missing.
    publish_policy_v1(&consent.url()).await;
    let mut consents = consent_client(&consent.url(), OPERATOR_TOKEN).await;
    consents
        .grant_consent(GrantConsentRequest {
            tenant: TENANT.into(),
            subject_id: "u-report".into(),
            consent: Some(ConsentGranted {
                purposes: vec!["analytics".into()],
                policy_version: "v1".into(),
                method: ConsentMethod::UntickedCheckbox as i32,
                expressed_by: ExpressedBy::Subject as i32,
                ..Default::default()
            }),
            event_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    disclosures_client(&disclosures.url(), BACKEND_TOKEN)
        .await
        .record_disclosure(RecordDisclosureRequest {
            tenant: TENANT.into(),
            subject_id: "u-report".into(),
            disclosure: Some(DataDisclosed {
                recipient: "Courier JSC".into(),
                recipient_role: RecipientRole::Processor as i32,
                country: "VN".into(),
                categories: vec!["contact".into()],
                purpose: "provide_service".into(),
                legal_basis: LegalBasis::Contract as i32,
                system: "shop".into(),
                ..Default::default()
            }),
            event_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.open_request(OpenRequestRequest {
        tenant: TENANT.into(),
        subject_id: "u-report".into(),
        request_type: RequestType::Access as i32,
        channel: "email".into(),
        event_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let report = c
        .get_access_report(GetAccessReportRequest {
            tenant: TENANT.into(),
            subject_id: "u-report".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.missing, ["retention"]);
    let json: serde_json::Value = serde_json::from_str(&report.json).unwrap();
    let sections = &json["sections"];
    let history = &sections["consent_history"];
    assert_eq!(history["status"], "ok", "{history}");
    assert_eq!(history["url"], consent.url());
    assert!(history["log_position"].as_u64().unwrap() >= 1);
    assert_eq!(history["entries"][0]["purpose"], "analytics");
    assert_eq!(sections["holdings"]["status"], "unavailable");
    let disclosed = &sections["disclosures"];
    assert_eq!(disclosed["status"], "ok", "{disclosed}");
    assert_eq!(disclosed["disclosures"].as_array().unwrap().len(), 1);
    assert_eq!(disclosed["recipients"][0]["recipient"], "Courier JSC");
    let requests = &sections["requests"];
    assert_eq!(requests["status"], "ok");
    assert_eq!(requests["requests"].as_array().unwrap().len(), 1);
    assert_eq!(
        requests["requests"][0]["requestType"],
        "REQUEST_TYPE_ACCESS"
    );
    // A backend may not read it.
    let mut backend = requests_client(&svc.url(), BACKEND_TOKEN).await;
    let denied = backend
        .get_access_report(GetAccessReportRequest {
            tenant: TENANT.into(),
            subject_id: "u-report".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    svc.stop().await;
    disclosures.stop().await;
    consent.stop().await;
}
