//! Views are never read half-built (DESIGN §5.5): `CheckConsent` answers the same during a
//! `RebuildProjections` under ingest, grants that arrive during the rebuild are stored (not
//! dead-lettered), and after a version change the service is NOT_SERVING — every RPC
//! UNAVAILABLE — until the rebuilt view has caught up with the log.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, message::PublishMessage};
use privacy_e2e::*;
use privacy_event_store::{Projection, RecordedEvent, StoreError, ViewWriter};
use privacy_proto::v1::*;
use privacy_service_kit::{ServiceConfig, ServiceSpec};
use privacy_testkit::NatsServer;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::Code;

fn check_request(subject: &str, at: SystemTime) -> CheckConsentRequest {
    CheckConsentRequest {
        tenant: TENANT.into(),
        subject_id: subject.into(),
        purpose: "marketing".into(),
        as_of: Some(at.into()),
    }
}

/// Publishes a grant on NATS for each `<prefix>-<i>` of `range`.
async fn publish_grants(js: &jetstream::Context, prefix: &str, range: std::ops::Range<u32>) {
    let mut acks = Vec::new();
    for i in range {
        let env = envelope(&format!("{prefix}-{i}"), granted("marketing"));
        let ack = js
            .send_publish(
                "privacy.in.vn-apihub.consent.granted",
                PublishMessage::build()
                    .payload(env.encode_to_vec().into())
                    .message_id(&env.event_id),
            )
            .await
            .unwrap();
        acks.push(ack);
        // The client bounds acks in flight: collect them before that bound is reached.
        if acks.len() >= 256 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_answers_do_not_change_during_a_rebuild_under_ingest() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    publish_policy_v1(&svc.url()).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());

    // Fixed subjects: granted, and a tenth of them withdrawn again; plus enough other
    // history that a rebuild takes a while.
    let mut backend = consent_client(&svc.url(), BACKEND_TOKEN).await;
    publish_grants(&js, "fixed", 0..60).await;
    publish_grants(&js, "bulk", 0..6000).await;
    let mut audit = audit_client(&svc.url(), Some(OPERATOR_TOKEN)).await;
    wait_for_head(&mut audit, 6061, Duration::from_secs(120)).await;
    for i in 0..6 {
        backend
            .withdraw_consent(WithdrawConsentRequest {
                tenant: TENANT.into(),
                subject_id: format!("fixed-{i}"),
                purposes: vec!["marketing".into()],
                method: "settings page".into(),
                event_id: uuid::Uuid::now_v7().to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let at = SystemTime::now();
    let mut baseline = Vec::new();
    for i in 0..60 {
        let r = backend
            .check_consent(check_request(&format!("fixed-{i}"), at))
            .await
            .unwrap()
            .into_inner();
        baseline.push((r.allowed, r.reason, r.record_id));
    }
    assert_eq!(baseline.iter().filter(|b| b.0).count(), 54);
    let rejected_before = svc.service.stats.snapshot()[2];

    // Ingest keeps arriving while every projection is rebuilt.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (js, stop) = (js.clone(), stop.clone());
        async move {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) && sent < 20_000 {
                publish_grants(&js, "during", sent..sent + 250).await;
                sent += 250;
            }
            sent
        }
    });
    let accepted_before = svc.service.stats.snapshot()[0];
    let mut progress = audit
        .rebuild_projections(RebuildProjectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let rebuild = tokio::spawn(async move {
        let mut done = 0;
        while let Some(p) = progress.message().await.unwrap() {
            done += usize::from(p.done);
        }
        done
    });
    let mut rounds = 0;
    while !rebuild.is_finished() {
        for (i, want) in baseline.iter().enumerate() {
            let r = backend
                .check_consent(check_request(&format!("fixed-{i}"), at))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                &(r.allowed, r.reason, r.record_id),
                want,
                "fixed-{i} changed during the rebuild (round {rounds})"
            );
        }
        rounds += 1;
    }
    assert_eq!(rebuild.await.unwrap(), 2, "both projections rebuilt");
    let accepted_during = svc.service.stats.snapshot()[0] - accepted_before;
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.await.unwrap();
    assert!(rounds > 0);
    assert!(
        accepted_during > 0,
        "no grant was ingested while the views were rebuilt"
    );

    // Every grant that arrived meanwhile was stored and is visible; none was dead-lettered.
    let head = 6061 + 6 + u64::from(sent);
    wait_for_head(&mut audit, head, Duration::from_secs(120)).await;
    assert_eq!(svc.service.stats.snapshot()[2], rejected_before);
    for i in [0, sent / 2, sent - 1] {
        let r = backend
            .check_consent(check_request(&format!("during-{i}"), SystemTime::now()))
            .await
            .unwrap()
            .into_inner();
        assert!(r.allowed, "during-{i}: {r:?}");
    }
    svc.stop().await;
}

/// A projection whose version the test sets and whose folds wait at a gate the test opens.
struct Gated;

static GATED_VERSION: AtomicU32 = AtomicU32::new(1);
static GATE: (Mutex<bool>, Condvar) = (Mutex::new(true), Condvar::new());

fn set_gate(open: bool) {
    *GATE.0.lock().unwrap() = open;
    GATE.1.notify_all();
}

impl Projection for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }

    fn version(&self) -> u32 {
        GATED_VERSION.load(Ordering::SeqCst)
    }

    fn apply(&self, event: &RecordedEvent, view: &mut ViewWriter<'_>) -> Result<(), StoreError> {
        let mut open = GATE.0.lock().unwrap();
        while !*open {
            open = GATE.1.wait(open).unwrap();
        }
        view.put(&event.seq.to_be_bytes(), Vec::new());
        Ok(())
    }
}

fn gated_projections() -> Vec<Arc<dyn Projection>> {
    let mut all = (privacy_consent::SPEC.projections)();
    all.push(Arc::new(Gated));
    all
}

const GATED: ServiceSpec = ServiceSpec {
    projections: gated_projections,
    ..privacy_consent::SPEC
};

async fn health(url: &str) -> i32 {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_until_a_version_change_rebuild_caught_up() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    set_gate(true);
    GATED_VERSION.store(1, Ordering::SeqCst);
    let svc = InProcess::start(GATED, &nats.url(), data.path()).await;
    publish_policy_v1(&svc.url()).await;
    svc.stop().await;

    // The projection's code changed: at the next start its view is stale and is rebuilt
    // before anything may read it. The gate holds the rebuild until the test has looked.
    GATED_VERSION.store(2, Ordering::SeqCst);
    set_gate(false);
    let config = ServiceConfig::from_map(&service_env(&nats.url(), data.path(), 0), 0).unwrap();
    let shutdown = CancellationToken::new();
    let service = privacy_service_kit::start(GATED, config, shutdown.clone())
        .await
        .unwrap();
    let url = format!("http://{}", service.grpc_addr);
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    assert_eq!(health(&url).await, not_serving);
    let mut backend = consent_client(&url, BACKEND_TOKEN).await;
    let err = backend
        .check_consent(check_request("u-1", SystemTime::now()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let mut audit = audit_client(&url, Some(AUDITOR_TOKEN)).await;
    let err = audit
        .projection_status(ProjectionStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(health(&url).await, not_serving, "still held at the gate");

    set_gate(true);
    wait_serving(&url).await;
    let status = audit
        .projection_status(ProjectionStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let gated = status
        .projections
        .iter()
        .find(|p| p.name == "gated")
        .unwrap();
    assert_eq!((gated.version, gated.checkpoint), (2, status.head_seq));
    assert_eq!(gated.entries, status.head_seq);
    assert!(status.head_seq >= 1);
    // Checkpoints only: the same projections at the same checkpoints, no view walked.
    let light = audit
        .projection_status(ProjectionStatusRequest {
            checkpoints_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(light.head_seq, status.head_seq, "nothing was stored since");
    let summary = |s: &ProjectionStatusResponse| -> Vec<(String, u32, u64)> {
        s.projections
            .iter()
            .map(|p| (p.name.clone(), p.version, p.checkpoint))
            .collect()
    };
    assert_eq!(summary(&light), summary(&status));
    assert!(
        light
            .projections
            .iter()
            .all(|p| p.digest.is_empty() && p.entries == 0),
        "{light:?}"
    );
    shutdown.cancel();
    service.wait().await.unwrap();
}
