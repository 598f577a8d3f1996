//! Refused input goes to the DLQ with its reason and original bytes; the service keeps going
//! and loses nothing else.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use futures::StreamExt;
use privacy_bus::{HEADER_ERROR, HEADER_ERROR_CODE, HEADER_ERROR_FIELD};
use privacy_e2e::*;
use privacy_proto::v1::envelope::Payload;
use privacy_testkit::NatsServer;
use prost::Message;

/// Subject, bytes, and the expected (code, field) when refused.
type Case = (&'static str, Vec<u8>, Option<(&'static str, &'static str)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_reach_the_dlq_with_reason_and_original_bytes() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let consent = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    publish_policy_v1(&consent.url()).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());

    let good_before = envelope("u-1", granted("marketing"));
    let mut no_purposes = envelope("u-1", granted("marketing"));
    if let Some(Payload::ConsentGranted(p)) = &mut no_purposes.payload {
        p.purposes.clear();
    }
    let mut unknown_type = envelope("u-1", granted("marketing"));
    unknown_type.event_type = "consent.revoked".into();
    let mut unknown_tenant = envelope("u-1", granted("marketing"));
    unknown_tenant.tenant = "nobody".into();
    let mismatched_tenant = envelope("u-3", granted("marketing"));
    let mut email_subject = envelope("u-1", granted("marketing"));
    email_subject.subject_id = "ann@example.com".into();
    let mut oversized = envelope("u-1", granted("marketing"));
    if let Some(Payload::ConsentGranted(p)) = &mut oversized.payload {
        p.attestation_ref = "x".repeat(70 * 1024);
    }
    let good_after = envelope("u-2", granted("analytics"));
    // Poison timestamps: refused naming the field, never a panic or a wrapped instant.
    let mut forever = envelope("u-1", granted("marketing"));
    if let Some(Payload::ConsentGranted(p)) = &mut forever.payload {
        p.valid_until = Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        });
    }
    let mut far_future = envelope("u-1", granted("marketing"));
    far_future.occurred_at = Some(prost_types::Timestamp {
        seconds: i64::MAX,
        nanos: 0,
    });
    let mut many_purposes = envelope("u-1", granted("marketing"));
    if let Some(Payload::ConsentGranted(p)) = &mut many_purposes.payload {
        p.purposes = (0..65).map(|i| format!("p{i}")).collect();
    }
    // The first event's id reused by a different event.
    let mut reused_id = envelope("u-9", granted("analytics"));
    reused_id.event_id = good_before.event_id.clone();

    let cases: Vec<Case> = vec![
        (
            "privacy.in.vn-apihub.consent.granted",
            good_before.encode_to_vec(),
            None,
        ),
        (
            "privacy.in.vn-apihub.consent.granted",
            b"\xff\x00 not protobuf".to_vec(),
            Some(("malformed", "message")),
        ),
        (
            "privacy.in.vn-apihub.consent.granted",
            no_purposes.encode_to_vec(),
            Some(("missing_field", "consent_granted.purposes")),
        ),
        (
            "privacy.in.vn-apihub.consent.revoked",
            unknown_type.encode_to_vec(),
            Some(("unknown_event_type", "event_type")),
        ),
        (
            "privacy.in.nobody.consent.granted",
            unknown_tenant.encode_to_vec(),
            Some(("unknown_tenant", "tenant")),
        ),
        // A tenant's event on another tenant's subject (what NATS permissions confine).
        (
            "privacy.in.ru-crm.consent.granted",
            mismatched_tenant.encode_to_vec(),
            Some(("tenant_mismatch", "tenant")),
        ),
        (
            "privacy.in.vn-apihub.consent.granted",
            email_subject.encode_to_vec(),
            Some(("invalid_field", "subject_id")),
        ),
        (
            "privacy.in.vn-apihub.consent.granted",
            oversized.encode_to_vec(),
            Some(("too_large", "message")),
        ),
        (
            "privacy.in.vn-apihub.consent.granted",
            forever.encode_to_vec(),
            Some(("invalid_field", "consent_granted.valid_until")),
        ),
        (
            "privacy.in.vn-apihub.consent.granted",
            far_future.encode_to_vec(),
            Some(("invalid_field", "occurred_at")),
        ),
        (
            "privacy.in.vn-apihub.consent.granted",
            many_purposes.encode_to_vec(),
            Some(("too_large", "consent_granted.purposes")),
        ),
        (
            "privacy.in.vn-apihub.consent.granted",
            reused_id.encode_to_vec(),
            Some(("conflicting_duplicate", "event_id")),
        ),
        // A redelivery of the first event (no Nats-Msg-Id, so JetStream does not drop it):
        // acknowledged as a duplicate, stored once, never dead-lettered.
        (
            "privacy.in.vn-apihub.consent.granted",
            good_before.encode_to_vec(),
            None,
        ),
        (
            "privacy.in.vn-apihub.consent.granted",
            good_after.encode_to_vec(),
            None,
        ),
    ];
    for (i, (subject, bytes, _)) in cases.iter().enumerate() {
        if i == 1 {
            // The first event is stored before its id is reused: which of two events with one
            // id wins is the order of their commits, and a nak'ed batch may commit after the
            // next one.
            let mut audit = audit_client(&consent.url(), Some(AUDITOR_TOKEN)).await;
            wait_for_head(&mut audit, 2, Duration::from_secs(20)).await;
        }
        js.send_publish(
            subject.to_string(),
            PublishMessage::build().payload(bytes.clone().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // A subject without the tenant is no subject of PRIVACY_IN: the publisher gets no ack.
    let unrouted = js
        .send_publish(
            "privacy.in.consent.granted".to_string(),
            PublishMessage::build().payload(good_after.encode_to_vec().into()),
        )
        .await;
    let acked = match unrouted {
        Err(_) => false,
        Ok(ack) => ack.await.is_ok(),
    };
    assert!(
        !acked,
        "a publish without the tenant in the subject was stored"
    );
    // JSON that is not an envelope.
    js.send_publish(
        "privacy.in.vn-apihub.consent.granted".to_string(),
        PublishMessage::build()
            .payload(br#"{"eventId": 5}"#.to_vec().into())
            .header("Content-Type", "application/json"),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let dlq = js.get_stream("PRIVACY_DLQ").await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = dlq
        .create_consumer(pull::Config {
            filter_subject: "privacy.dlq.consent.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let expected: Vec<_> = cases.iter().filter(|c| c.2.is_some()).collect();
    let mut messages = consumer.messages().await.unwrap();
    let mut got = Vec::new();
    while got.len() < expected.len() + 1 {
        let msg = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .expect("DLQ message within 20 s")
            .unwrap()
            .unwrap();
        msg.ack().await.unwrap();
        got.push(msg);
    }
    // Matched by their bytes: a refusal found only after a retry (a key reused while its
    // first event was still committing) may arrive later than its neighbours.
    for (_, bytes, reason) in &expected {
        let (code, field) = reason.unwrap();
        let msg = got
            .iter()
            .find(|m| m.payload[..] == bytes[..])
            .unwrap_or_else(|| panic!("no DLQ message with the original bytes for {code}"));
        let h = msg.headers.as_ref().unwrap();
        // Dead letters are filed under the tenant the subject named.
        let tenant = match code {
            "unknown_tenant" => "nobody",
            "tenant_mismatch" => "ru-crm",
            _ => TENANT,
        };
        assert_eq!(
            msg.subject.as_str(),
            format!("privacy.dlq.consent.{tenant}")
        );
        assert_eq!(h.get(HEADER_ERROR_CODE).unwrap().as_str(), code);
        assert_eq!(h.get(HEADER_ERROR_FIELD).unwrap().as_str(), field);
        assert!(!h.get(HEADER_ERROR).unwrap().as_str().is_empty());
    }
    let json = got
        .iter()
        .find(|m| &m.payload[..] == br#"{"eventId": 5}"#)
        .expect("the JSON message in the DLQ");
    let h = json.headers.as_ref().unwrap();
    assert_eq!(h.get(HEADER_ERROR_CODE).unwrap().as_str(), "malformed");
    assert_eq!(h.get("Content-Type").unwrap().as_str(), "application/json");

    let mut audit = audit_client(&consent.url(), Some(AUDITOR_TOKEN)).await;
    wait_for_head(&mut audit, 3, Duration::from_secs(20)).await;
    // The first stored event is the policy version published above.
    let ids: Vec<String> = all_events(&mut audit)
        .await
        .into_iter()
        .skip(1)
        .map(|e| e.envelope.unwrap().event_id)
        .collect();
    assert_eq!(ids, vec![good_before.event_id.clone(), good_after.event_id]);
    // The same first event once more, as JSON: the same content, so a duplicate too.
    js.send_publish(
        "privacy.in.vn-apihub.consent.granted".to_string(),
        PublishMessage::build()
            .payload(
                privacy_proto::decode::envelope_to_json(&good_before)
                    .unwrap()
                    .into(),
            )
            .header("Content-Type", "application/json"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while consent.service.stats.snapshot()[1] < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "duplicates not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        all_events(&mut audit).await.len(),
        3,
        "nothing stored twice"
    );
    assert_eq!(
        consent.service.stats.snapshot()[2],
        expected.len() as u64 + 1
    );
    consent.stop().await;

    // Refused messages may hold personal data in the clear: the DLQ keeps them 7 days by
    // default, and a changed setting reaches an existing stream.
    let max_age = |js: jetstream::Context| async move {
        let mut dlq = js.get_stream("PRIVACY_DLQ").await.unwrap();
        dlq.info().await.unwrap().config.max_age
    };
    assert_eq!(max_age(js.clone()).await, Duration::from_secs(7 * 86_400));
    let one_day = privacy_bus::BusConfig {
        url: nats.url(),
        dlq_max_age: Duration::from_secs(86_400),
        ..Default::default()
    };
    privacy_bus::ensure_streams(&js, &one_day).await.unwrap();
    assert_eq!(max_age(js.clone()).await, Duration::from_secs(86_400));
}
