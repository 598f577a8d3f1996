//! The retention service against a real NATS and real gRPC: the inventory built from
//! `data.collected` / `subject.deactivated` / `data.erased` on NATS, each holding under the
//! example tenant's schedule with its due instant, `ListDue` on an explicit instant (due, held,
//! unscheduled), and legal holds that move a due holding aside until released. The access
//! report of subject-requests includes the holdings.

use std::time::Duration;

use async_nats::jetstream;
use privacy_e2e::*;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::retention_service_client::RetentionServiceClient;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Retention = RetentionServiceClient<InterceptedService<Channel, Bearer>>;

async fn client(url: &str, token: &'static str) -> Retention {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    RetentionServiceClient::with_interceptor(channel, Bearer(Some(token)))
}

fn at(date: &str) -> prost_types::Timestamp {
    format!("{date}T12:00:00Z").parse().unwrap()
}

fn event(subject: &str, date: &str, payload: Payload) -> Envelope {
    let mut env = envelope(subject, payload);
    env.occurred_at = Some(at(date));
    env
}

fn collected(category: &str, system: &str, purpose: &str) -> Payload {
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

    let mut c = client(&svc.url(), OPERATOR_TOKEN).await;
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
    let mut backend = client(&svc.url(), BACKEND_TOKEN).await;
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
