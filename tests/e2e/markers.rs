//! Nothing personal rests in the clear: every user event is published with a unique marker in
//! each of its free-text fields and personal values (and a birth date), plus refused events
//! whose ids and codes carry the marker; once the four service processes (logging at `debug`)
//! stored or refused them all and stopped, no file under their data directory or their logs
//! holds the marker or the birth date. The marker is still readable where it should be: opened
//! through the vault in a consent receipt, and intact in the NATS dead-letter queue.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use privacy_e2e::*;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_testkit::{NatsServer, ServiceProcess, free_port};

const SERVICES: [&str; 4] = [
    "privacy-consent",
    "privacy-subject-requests",
    "privacy-retention",
    "privacy-disclosure-log",
];
/// A birth date nothing else in the test uses.
const BIRTH_DATE: &str = "2011-07-23";

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

fn clear(text: String) -> PersonalValue {
    PersonalValue {
        value: Some(personal_value::Value::Clear(text)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_personal_value_rests_in_the_clear_in_data_or_logs() {
    let marker = format!("mk{}", uuid::Uuid::now_v7().simple());
    let m = |field: &str| format!("{marker} {field} of Ann Example");
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();

    let mut processes = Vec::new();
    let mut consent_url = String::new();
    for binary in SERVICES {
        let port = free_port();
        let mut env = service_env(&nats.url(), data.path(), port);
        env.insert("RUST_LOG".into(), "debug".into());
        let log = logs.path().join(format!("{binary}.log"));
        processes.push(ServiceProcess::spawn_logged(binary, &env, &log));
        let url = format!("http://127.0.0.1:{port}");
        wait_serving(&url).await;
        if binary == "privacy-consent" {
            consent_url = url;
        }
    }
    publish_policy_v1(&consent_url).await;

    let personal = |names: &[&str]| {
        names
            .iter()
            .map(|n| ((*n).to_owned(), clear(m(n))))
            .collect()
    };
    // A child of the Vietnamese tenant (its registration implies thresholds and a flag), and an
    // adult who gives consent.
    let events = [
        envelope(
            "u-m1",
            Payload::SubjectRegistered(SubjectRegistered {
                birth_date: BIRTH_DATE.into(),
                age_band: m("age_band"),
                personal: personal(&["email", "name"]),
            }),
        ),
        envelope(
            "u-m1",
            Payload::SubjectUpdated(SubjectUpdated {
                personal: personal(&["phone"]),
            }),
        ),
        envelope(
            "u-m1",
            Payload::SubjectDeactivated(SubjectDeactivated {
                reason: m("reason"),
                personal: personal(&["note"]),
            }),
        ),
        envelope(
            "u-m2",
            Payload::ConsentGranted(ConsentGranted {
                purposes: vec!["marketing".into()],
                policy_version: "v1".into(),
                method: ConsentMethod::UntickedCheckbox as i32,
                expressed_by: ExpressedBy::Subject as i32,
                attestation_ref: m("attestation_ref"),
                evidence: personal(&["ip_address", "user_agent"]),
                ..Default::default()
            }),
        ),
        envelope(
            "u-m2",
            Payload::ConsentWithdrawn(ConsentWithdrawn {
                purposes: vec!["marketing".into()],
                method: m("method"),
                personal: personal(&["channel_note"]),
            }),
        ),
        envelope(
            "u-m2",
            Payload::ConsentSignal(ConsentSignal {
                signal: "gpc".into(),
                value: true,
            }),
        ),
        envelope(
            "u-m2",
            Payload::DataCollected(DataCollected {
                category: "contact".into(),
                purpose: "provide_service".into(),
                system: "accounts".into(),
                location: m("location"),
                personal: personal(&["extra"]),
            }),
        ),
        envelope(
            "u-m2",
            Payload::DataDisclosed(DataDisclosed {
                recipient: m("recipient"),
                recipient_natural_person: true,
                recipient_role: RecipientRole::OtherThirdParty as i32,
                country: "VN".into(),
                categories: vec!["contact".into()],
                legal_basis: LegalBasis::StateBodyRequest as i32,
                request_ref: m("request_ref"),
                system: "accounts".into(),
                personal: personal(&["extra"]),
                ..Default::default()
            }),
        ),
        envelope(
            "u-m2",
            Payload::DataErased(DataErased {
                // An erasure the system made on its own: no order to name.
                order_id: String::new(),
                category: "contact".into(),
                system: "accounts".into(),
                kept_reason: m("kept_reason"),
                personal: personal(&["extra"]),
            }),
        ),
        envelope(
            "u-m2",
            Payload::RequestReceived(RequestReceived {
                request_type: RequestType::Access as i32,
                channel: "email".into(),
                personal: personal(&["email", "request_text"]),
            }),
        ),
    ];
    // Refused: a subject id that is a name, a source that is free text, a purpose (a code) the
    // catalog lacks. Their refusals must not repeat the value.
    let mut refused = vec![
        envelope(&m("subject_id"), granted("marketing")),
        envelope("u-m3", granted("marketing")),
        envelope(
            "u-m3",
            Payload::ConsentWithdrawn(ConsentWithdrawn {
                purposes: vec![marker.clone()],
                ..Default::default()
            }),
        ),
    ];
    refused[1].source = m("source");

    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    for env in events.iter().chain(&refused) {
        publish_acked(&js, env).await;
    }
    // The same through gRPC commands.
    let mut consent = consent_client(&consent_url, OPERATOR_TOKEN).await;
    let granted = consent
        .grant_consent(GrantConsentRequest {
            tenant: TENANT.into(),
            subject_id: "u-m4".into(),
            consent: Some(ConsentGranted {
                purposes: vec!["analytics".into()],
                policy_version: "v1".into(),
                method: ConsentMethod::UntickedCheckbox as i32,
                expressed_by: ExpressedBy::Subject as i32,
                attestation_ref: m("grpc attestation_ref"),
                evidence: personal(&["ip_address"]),
                ..Default::default()
            }),
            event_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    consent
        .withdraw_consent(WithdrawConsentRequest {
            tenant: TENANT.into(),
            subject_id: "u-m4".into(),
            method: m("grpc method"),
            event_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Every consumer acked (stored, or refused to the DLQ) every event: PRIVACY_IN is empty.
    let deadline = Instant::now() + Duration::from_secs(60);
    while in_stream_messages(&js).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the services did not take every event"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dlq = stream_messages(&js, "PRIVACY_DLQ").await;
    assert_eq!(
        dlq,
        refused.len() as u64,
        "each refused event is in the DLQ"
    );

    // Sealed, not dropped: the receipt opens the attestation reference through the vault.
    let receipt = consent
        .export_consent_receipt(ExportConsentReceiptRequest {
            tenant: TENANT.into(),
            subject_id: "u-m4".into(),
            record_id: granted.record_ids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .receipt_json;
    assert!(receipt.contains(&m("grpc attestation_ref")), "{receipt}");
    drop(consent);

    for mut p in processes {
        let status = p
            .terminate(Duration::from_secs(30))
            .expect("the service ran");
        assert!(status.success(), "{status}");
    }

    // The search finds the marker where it is meant to rest: intact in the DLQ's store.
    assert!(
        !files_containing(nats.store_dir(), marker.as_bytes()).is_empty(),
        "the search must find the refused events' bytes in the NATS store"
    );
    let log_bytes: u64 = std::fs::read_dir(logs.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(log_bytes > 1000, "the services logged ({log_bytes} bytes)");
    for dir in [data.path(), logs.path()] {
        for needle in [marker.as_str(), BIRTH_DATE] {
            let hits = files_containing(dir, needle.as_bytes());
            assert!(hits.is_empty(), "{needle} rests in the clear in {hits:?}");
        }
    }
}
