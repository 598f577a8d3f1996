//! CheckConsent benchmark: in one run, a store with 100,000 subjects × 5 consent purposes, the
//! consent service serving it over real gRPC, and the floor — a raw tonic echo server (no auth,
//! no work) answering a payload the size of a CheckConsent request — each measured at
//! concurrency 1 and 64 over one channel. Prints calls/s, p50 and p99 of both
//! and the ratios (targets: throughput at 64 ≥ 0.8× the floor and p99 at 64 ≤ 2× the floor's;
//! p50 at 1 ≤ 1.2× the floor).
//!
//! Run: `cargo bench -p privacy-e2e --bench check_consent` (BENCH_SUBJECTS, BENCH_CALLS;
//! PRIVACY_CACHE_MB sizes the service's page cache).

/// The services' allocator, for the floor and the service alike.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::{Duration, Instant};

use privacy_e2e::bench_kit::{compare, echo_call, echo_floor, env_count, measure, runtime};
use privacy_e2e::*;
use privacy_event_store::{EventStore, ExpectedVersion, NewEvent, StoreConfig};
use privacy_proto::v1::consent_service_client::ConsentServiceClient;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;
use prost::Message;
use tonic::transport::Channel;

const PURPOSES: [&str; 5] = [
    "communication",
    "marketing",
    "analytics",
    "push_notifications",
    "personalisation",
];

/// Writes the policy version and one five-purpose grant per subject straight into the store.
async fn seed(dir: &std::path::Path, subjects: usize) {
    let store = EventStore::open(dir, StoreConfig::default()).unwrap();
    let long_ago = prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };
    let policy = Envelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: "policy.published".into(),
        schema_version: 1,
        tenant: TENANT.into(),
        occurred_at: Some(long_ago),
        payload: Some(Payload::DomainEvent(DomainEvent {
            body: PolicyPublished {
                version: "v1".into(),
                notice_hash: "sha256:bench".into(),
                effective_at: Some(long_ago),
                ..Default::default()
            }
            .encode_to_vec(),
        })),
        ..Default::default()
    };
    let mut batch = vec![NewEvent::new(
        TENANT,
        policy.event_id.clone(),
        format!("{TENANT}/-policies"),
        policy.event_type.clone(),
        policy.encode_to_vec(),
    )];
    for i in 0..subjects {
        let mut env = envelope(&format!("u-{i}"), granted("marketing"));
        env.occurred_at = Some(prost_types::Timestamp {
            seconds: 1_750_000_000,
            nanos: 0,
        });
        if let Some(Payload::ConsentGranted(g)) = &mut env.payload {
            g.purposes = PURPOSES.iter().map(|p| (*p).to_owned()).collect();
            g.evidence.clear();
        }
        batch.push(NewEvent::new(
            TENANT,
            env.event_id.clone(),
            format!("{TENANT}/u-{i}"),
            env.event_type.clone(),
            env.encode_to_vec(),
        ));
        if batch.len() >= 2000 {
            store
                .append(std::mem::take(&mut batch), ExpectedVersion::Any)
                .await
                .unwrap();
        }
    }
    store.append(batch, ExpectedVersion::Any).await.unwrap();
}

fn main() {
    let subjects = env_count("BENCH_SUBJECTS", 100_000);
    let calls = env_count("BENCH_CALLS", 20_000);
    runtime().block_on(async {
        let nats = NatsServer::start();
        let data = tempfile::tempdir().unwrap();
        let t = Instant::now();
        seed(&data.path().join("consent/events"), subjects).await;
        println!(
            "seeded {subjects} subjects × {} purposes in {:.1} s",
            PURPOSES.len(),
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        // PRIVACY_CACHE_MB from the environment sizes the service's page cache, as in production.
        let cache = std::env::var("PRIVACY_CACHE_MB").ok();
        let extra: Vec<(&str, &str)> = cache
            .as_deref()
            .map(|mb| ("PRIVACY_CACHE_MB", mb))
            .into_iter()
            .collect();
        let svc =
            InProcess::start_with(privacy_consent::SPEC, &nats.url(), data.path(), &extra).await;
        let head = svc.service.store.head().seq;
        assert!(
            svc.service
                .projector
                .wait_for(head, Duration::from_secs(300))
                .await
        );
        println!(
            "projections caught up with {head} events in {:.1} s",
            t.elapsed().as_secs_f64()
        );

        // The view reads behind one check, without gRPC.
        let reader = privacy_consent::view::ConsentReader::new(
            svc.service
                .projector
                .view(privacy_consent::view::CONSENT_VIEW)
                .unwrap(),
        );
        // Twice over the same subjects: the first pass may read them from disk into the page
        // cache, the second finds them there (the gRPC rounds below ask for these subjects
        // again). The tenant's policies are decoded once and then kept until the view changes.
        let reads = 20_000;
        for pass in ["first", "second"] {
            let t = Instant::now();
            for i in 0..reads {
                let subject = format!("u-{}", (i * 7919) % subjects);
                std::hint::black_box(reader.history(TENANT, &subject, PURPOSES[i % 5]).unwrap());
                std::hint::black_box(reader.policies(TENANT).unwrap());
                std::hint::black_box(reader.child(TENANT, &subject).unwrap());
            }
            println!(
                "view reads of one check, {pass} pass over {reads} subjects: {:.1} µs",
                t.elapsed().as_secs_f64() * 1e6 / reads as f64
            );
        }

        let echo_channel = echo_floor().await;
        let channel = tonic::transport::Endpoint::from_shared(svc.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let echo = |channel: Channel, _i: usize| echo_call(channel, 64);
        let check = move |channel: Channel, i: usize| async move {
            let mut c =
                ConsentServiceClient::with_interceptor(channel, Bearer(Some(BACKEND_TOKEN)));
            let r = c
                .check_consent(CheckConsentRequest {
                    tenant: TENANT.into(),
                    subject_id: format!("u-{}", (i * 7919) % subjects),
                    purpose: PURPOSES[i % PURPOSES.len()].into(),
                    as_of: None,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(r.allowed, "{r:?}");
        };
        // Warm up both paths.
        measure(echo_channel.clone(), 2000, 8, echo).await;
        measure(channel.clone(), 2000, 8, check).await;
        for concurrency in [1, 64] {
            let n = if concurrency == 1 { calls / 4 } else { calls };
            let (floor, real) = compare(
                (echo_channel.clone(), echo),
                (channel.clone(), check),
                n,
                concurrency,
            )
            .await;
            println!(
                "concurrency {concurrency:>2}: tonic floor {} | CheckConsent {}",
                floor.line(),
                real.line()
            );
            if concurrency == 1 {
                println!(
                    "  ratio p50 CheckConsent/floor: {:.2} (target ≤ 1.20)",
                    real.p50.as_secs_f64() / floor.p50.as_secs_f64()
                );
            } else {
                println!(
                    "  ratio throughput CheckConsent/floor: {:.2} (target ≥ 0.80)",
                    real.calls_per_s / floor.calls_per_s
                );
                println!(
                    "  ratio p99 CheckConsent/floor: {:.2} (target ≤ 2.00)",
                    real.p99.as_secs_f64() / floor.p99.as_secs_f64()
                );
            }
        }
        svc.stop().await;
    });
}
