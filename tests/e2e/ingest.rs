//! Each service stores exactly its own user events, once, whether published as protobuf or as
//! JSON, and whether JetStream or the store had to drop the repeat.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use privacy_e2e::*;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_stores_exactly_its_own_events_once() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let specs = [
        privacy_consent::SPEC,
        privacy_subject_requests::SPEC,
        privacy_retention::SPEC,
        privacy_disclosure_log::SPEC,
    ];
    let mut services = Vec::new();
    for spec in specs {
        services.push((
            spec.name,
            InProcess::start(spec, &nats.url(), data.path()).await,
        ));
    }
    publish_policy_v1(&services[0].1.url()).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);

    let mut events: Vec<(Envelope, &[&str])> = vec![
        (
            envelope(
                "u-1",
                Payload::SubjectRegistered(SubjectRegistered {
                    birth_date: "1990-04-01".into(),
                    personal: [(
                        "email".to_string(),
                        PersonalValue {
                            value: Some(personal_value::Value::Clear("ann@example.com".into())),
                        },
                    )]
                    .into(),
                    ..Default::default()
                }),
            ),
            &["consent"],
        ),
        (envelope("u-1", granted("marketing")), &["consent"]),
        (
            envelope(
                "u-1",
                Payload::ConsentWithdrawn(ConsentWithdrawn {
                    purposes: vec!["marketing".into()],
                    method: "settings page".into(),
                    ..Default::default()
                }),
            ),
            &["consent"],
        ),
        (
            envelope(
                "u-1",
                Payload::RequestReceived(RequestReceived {
                    request_type: RequestType::Access as i32,
                    channel: "web".into(),
                    ..Default::default()
                }),
            ),
            &["subject-requests"],
        ),
        (envelope("u-1", collected()), &["retention"]),
        (
            envelope(
                "u-2",
                Payload::DataErased(DataErased {
                    // An erasure the system made on its own: no order to name.
                    category: "contact".into(),
                    system: "accounts".into(),
                    ..Default::default()
                }),
            ),
            &["retention"],
        ),
        (
            envelope(
                "u-2",
                Payload::SubjectDeactivated(SubjectDeactivated {
                    reason: "closed account".into(),
                    ..Default::default()
                }),
            ),
            &["consent", "retention"],
        ),
        (
            envelope(
                "u-3",
                Payload::DataDisclosed(DataDisclosed {
                    recipient: "Tax office".into(),
                    recipient_role: RecipientRole::StateBody as i32,
                    country: "VN".into(),
                    categories: vec!["identity".into()],
                    purpose: "provide_service".into(),
                    legal_basis: LegalBasis::StateBodyRequest as i32,
                    request_ref: "TO-2026-17".into(),
                    system: "billing".into(),
                    ..Default::default()
                }),
            ),
            &["disclosure-log"],
        ),
    ];
    // Aggregate disclosure without a subject.
    let mut cohort = envelope(
        "",
        Payload::DataDisclosed(DataDisclosed {
            recipient: "Statistics bureau".into(),
            recipient_role: RecipientRole::StateBody as i32,
            country: "VN".into(),
            categories: vec!["usage".into()],
            purpose: "analytics".into(),
            legal_basis: LegalBasis::Anonymised as i32,
            system: "warehouse".into(),
            cohort_ref: "2026-Q3-active-users".into(),
            request_ref: "GSO-2026-3".into(),
            ..Default::default()
        }),
    );
    cohort.subject_id.clear();
    events.push((cohort, &["disclosure-log"]));

    let mut expected: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (i, (env, owners)) in events.iter().enumerate() {
        for o in *owners {
            expected.entry(o).or_default().insert(env.event_id.clone());
        }
        // Implied events: a birth date's age thresholds; a request's opening with its deadlines.
        let implied = match env.event_type.as_str() {
            "subject.registered" => Some(("consent", "age_thresholds")),
            "request.received" => Some(("subject-requests", "opened")),
            "data.disclosed" => Some(("disclosure-log", "recorded")),
            _ => None,
        };
        // Consent publishes a withdrawal it stored; retention records it as a trigger (by
        // reacting, not from PRIVACY_IN).
        if env.event_type == "consent.withdrawn" {
            expected
                .entry("retention")
                .or_default()
                .insert(format!("consent-withdrawn/{}", env.event_id));
        }
        if let Some((service, suffix)) = implied {
            expected
                .entry(service)
                .or_default()
                .insert(format!("{}/{suffix}", env.event_id));
        }
        let subject = format!("privacy.in.{}.{}", env.tenant, env.event_type);
        // Every other event as JSON, the rest as protobuf.
        let msg = if i % 2 == 0 {
            PublishMessage::build().payload(env.encode_to_vec().into())
        } else {
            PublishMessage::build()
                .payload(privacy_proto::decode::envelope_to_json(env).unwrap().into())
                .header("Content-Type", "application/json")
        };
        js.send_publish(subject.clone(), msg.message_id(&env.event_id))
            .await
            .unwrap()
            .await
            .unwrap();
        // Each event again without a Nats-Msg-Id: JetStream stores it, the service must not.
        js.send_publish(
            subject,
            PublishMessage::build().payload(env.encode_to_vec().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }

    for (name, service) in &services {
        let mut want = expected[name].clone();
        let mut audit = audit_client(&service.url(), Some(AUDITOR_TOKEN)).await;
        if *name == "consent" {
            // The policy version published above is a domain event in the consent store.
            let first = all_events(&mut audit).await;
            want.insert(first[0].envelope.as_ref().unwrap().event_id.clone());
        }
        let want = &want;
        wait_for_head(&mut audit, want.len() as u64, Duration::from_secs(30)).await;
        // Let redeliveries and repeats arrive before counting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stored = all_events(&mut audit).await;
        let ids: Vec<String> = stored
            .iter()
            .map(|e| e.envelope.as_ref().unwrap().event_id.clone())
            .collect();
        assert_eq!(ids.len(), want.len(), "{name} stored {ids:?}");
        assert_eq!(
            &ids.iter().cloned().collect::<BTreeSet<_>>(),
            want,
            "{name}"
        );
        let [accepted, duplicates, rejected, _] = service.service.stats.snapshot();
        // Stored from NATS, with the events they imply (all but the policy version and
        // retention's trigger).
        let from_nats = want.len() as u64 - u64::from(*name == "consent" || *name == "retention");
        assert_eq!((accepted, rejected), (from_nats, 0), "{name}");
        // Each published event was sent twice.
        let published = events.iter().filter(|(_, o)| o.contains(name)).count() as u64;
        assert!(duplicates >= published, "{name}: {duplicates} duplicates");
    }

    // Personal data is stored sealed, never in the clear.
    let consent = &services[0].1;
    let mut audit = audit_client(&consent.url(), Some(AUDITOR_TOKEN)).await;
    let stored = all_events(&mut audit).await;
    let registered = stored
        .iter()
        .filter_map(|e| e.envelope.as_ref())
        .find(|e| e.event_type == "subject.registered")
        .expect("subject.registered is stored");
    let Some(Payload::SubjectRegistered(p)) = &registered.payload else {
        panic!("subject.registered carries {registered:?}")
    };
    assert!(matches!(
        p.personal["email"].value,
        Some(personal_value::Value::Sealed(_))
    ));
    assert!(!format!("{stored:?}").contains("ann@example.com"));
    assert!(p.birth_date.is_empty() && p.personal.contains_key("birth_date"));
    assert!(!format!("{stored:?}").contains("1990-04-01"));
    let timeline = audit
        .get_subject_timeline(GetSubjectTimelineRequest {
            tenant: TENANT.into(),
            subject_id: "u-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // The timeline lists the subject's events in log order (two consumers feed consent, so the
    // log order of a subject.* and a consent.* event may differ from the publish order).
    let timeline: Vec<_> = timeline
        .entries
        .iter()
        .map(|e| (e.seq, e.event_type.clone()))
        .collect();
    let of_u1: Vec<_> = stored
        .iter()
        .filter(|e| e.envelope.as_ref().unwrap().subject_id == "u-1")
        .map(|e| (e.seq, e.envelope.as_ref().unwrap().event_type.clone()))
        .collect();
    assert_eq!(timeline, of_u1);
    // Registered (and its age thresholds), granted, withdrawn.
    assert_eq!(timeline.len(), 4);

    for (_, s) in services {
        s.stop().await;
    }
}

/// Waits until `PRIVACY_IN` holds `want` messages.
async fn wait_for_in_stream(js: &async_nats::jetstream::Context, want: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let have = in_stream_messages(js).await;
        if have == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "PRIVACY_IN holds {have} messages, not {want}, after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_leave_privacy_in_once_every_consumer_stored_them() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    // Only consent runs: it creates every service's consumer, so retention's event waits.
    let consent = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    publish_policy_v1(&consent.url()).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let granted = envelope("u-1", granted("marketing"));
    let collected = envelope("u-1", collected());
    for env in [&granted, &collected] {
        publish_acked(&js, env).await;
    }
    let mut audit = audit_client(&consent.url(), Some(AUDITOR_TOKEN)).await;
    wait_for_head(&mut audit, 2, Duration::from_secs(20)).await;
    // Consent stored its event: gone from the stream; retention's is kept for retention.
    wait_for_in_stream(&js, 1).await;

    let retention = InProcess::start(privacy_retention::SPEC, &nats.url(), data.path()).await;
    let mut audit = audit_client(&retention.url(), Some(AUDITOR_TOKEN)).await;
    wait_for_head(&mut audit, 1, Duration::from_secs(20)).await;
    let stored = all_events(&mut audit).await;
    assert_eq!(
        stored[0].envelope.as_ref().unwrap().event_id,
        collected.event_id
    );
    wait_for_in_stream(&js, 0).await;
    retention.stop().await;
    consent.stop().await;
}
