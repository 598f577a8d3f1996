//! Kill -9 a service process while it ingests 20k events, restart it: every event is present
//! exactly once, the chain verifies, and the projection equals a rebuild from scratch. Then
//! SIGTERM stops it with exit code 0.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use privacy_e2e::*;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_testkit::{NatsServer, ServiceProcess, free_port};
use prost::Message;

const EVENTS: usize = 20_000;

/// Waits until the head passes `seq` (or the deadline), returning what it saw.
async fn wait_past(url: &str, seq: u64) -> u64 {
    wait_serving(url).await;
    let mut audit = audit_client(url, Some(AUDITOR_TOKEN)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = head_seq(&mut audit).await;
        if h >= seq || Instant::now() > deadline {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_loses_and_duplicates_nothing() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    privacy_bus::ensure_streams(
        &js,
        &privacy_bus::BusConfig {
            url: nats.url(),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut env = service_env(&nats.url(), data.path(), port);
    env.insert("PRIVACY_INGEST_BATCH".into(), "250".into());
    // The consent service must know the policy version the grants name.
    let mut process = ServiceProcess::spawn("privacy-consent", &env);
    wait_serving(&url).await;
    publish_policy_v1(&url).await;

    let mut published = BTreeSet::new();
    let mut acks = Vec::with_capacity(1000);
    for i in 0..EVENTS {
        let subject = format!("u-{}", i % 2000);
        let payload = if i % 3 == 0 {
            Payload::ConsentWithdrawn(ConsentWithdrawn {
                purposes: vec!["marketing".into()],
                ..Default::default()
            })
        } else {
            granted(if i % 2 == 0 { "marketing" } else { "analytics" })
        };
        let env = envelope(&subject, payload);
        published.insert(env.event_id.clone());
        let msg = PublishMessage::build()
            .payload(env.encode_to_vec().into())
            .message_id(&env.event_id);
        acks.push(
            js.send_publish(format!("privacy.in.{}.{}", env.tenant, env.event_type), msg)
                .await
                .unwrap(),
        );
        if acks.len() == 1000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks.drain(..) {
        a.await.unwrap();
    }

    let mut kills = vec![wait_past(&url, 2_000).await];
    process.kill9();
    let mut process = ServiceProcess::spawn("privacy-consent", &env);
    kills.push(wait_past(&url, 9_000).await);
    process.kill9();
    eprintln!("killed with SIGKILL at heads {kills:?} of {}", EVENTS + 1);

    let mut process = ServiceProcess::spawn("privacy-consent", &env);
    wait_serving(&url).await;
    let mut audit = audit_client(&url, Some(AUDITOR_TOKEN)).await;
    let total = EVENTS as u64 + 1;
    wait_for_head(&mut audit, total, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stored = all_events(&mut audit).await;
    let ids: Vec<String> = stored
        .iter()
        .map(|e| e.envelope.as_ref().unwrap().event_id.clone())
        .collect();
    assert_eq!(
        ids.len() as u64,
        total,
        "events stored (the policy version, then the grants)"
    );
    assert_eq!(ids[1..].iter().cloned().collect::<BTreeSet<_>>(), published);
    assert_log_intact(&mut audit, &stored, total).await;

    let live = audit
        .projection_status(ProjectionStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut operator = audit_client(&url, Some(OPERATOR_TOKEN)).await;
    let mut progress = operator
        .rebuild_projections(RebuildProjectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut rebuilt = Vec::new();
    while let Some(p) = progress.message().await.unwrap() {
        if p.done {
            rebuilt.push(p);
        }
    }
    for p in &live.projections {
        let r = rebuilt.iter().find(|r| r.name == p.name).expect("rebuilt");
        assert_eq!(
            r.digest, p.digest,
            "projection {} differs from its rebuild",
            p.name
        );
        assert_eq!(r.applied, total);
    }

    let status = process
        .terminate(Duration::from_secs(20))
        .expect("exit status");
    assert!(status.success(), "SIGTERM exit: {status:?}");
}
