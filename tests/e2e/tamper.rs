//! A flipped byte in a stored event is reported by VerifyChain at its sequence number, and
//! `privacy verify` exits 6 naming it.

use std::time::Duration;

use privacy_e2e::*;
use privacy_event_store::{EventStore, StoreConfig};
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_chain_names_the_tampered_event() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let client = privacy_client::PrivacyClient::connect(&nats.url(), "e2e")
        .await
        .unwrap();
    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    for i in 0..10 {
        client
            .publish(TENANT, &format!("u-{i}"), ConsentWithdrawn::default())
            .await
            .unwrap();
    }
    let mut audit = audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await;
    wait_for_head(&mut audit, 10, Duration::from_secs(20)).await;
    let clean = audit
        .verify_chain(VerifyChainRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(clean.ok && clean.events_checked == 10, "{clean:?}");
    svc.stop().await;

    // An attacker with disk access edits event 6.
    {
        let store =
            EventStore::open(data.path().join("consent/events"), StoreConfig::default()).unwrap();
        store.tamper_flip_byte(6, 120).unwrap();
    }

    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    let mut audit = audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await;
    let report = audit
        .verify_chain(VerifyChainRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!report.ok);
    assert_eq!(report.first_bad_seq, 6, "{report:?}");
    // The CLI says so and exits 6, for scripts.
    let home = tempfile::tempdir().unwrap();
    let cli = crate::cli::privacy(
        home.path(),
        &[
            ("PRIVACY_CONSENT_URL", svc.url()),
            ("PRIVACY_TOKEN", AUDITOR_TOKEN.to_owned()),
        ],
        &["verify", "--service", "consent"],
    )
    .await;
    assert_eq!(cli.code, 6, "{}{}", cli.stdout, cli.stderr);
    assert!(cli.stdout.contains("consent  BROKEN  5 "), "{}", cli.stdout);
    assert!(cli.stderr.contains("broken at seq 6"), "{}", cli.stderr);
    assert_eq!(report.events_checked, 5);
    // The range before it still verifies.
    let before = audit
        .verify_chain(VerifyChainRequest {
            from_seq: 1,
            to_seq: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(before.ok, "{before:?}");
    svc.stop().await;
}
