//! CheckConsent benchmark: in one run, a store with 100,000 subjects × 5 consent purposes, the
//! consent service serving it over real gRPC, and the floor — a raw tonic echo server (no auth,
//! no work) answering a payload the size of a CheckConsent request — each measured at
//! concurrency 1 and 64 over one channel. Prints calls/s, p50 and p99 of both
//! and the ratios (targets: throughput at 64 ≥ 0.8× the floor; p50 at 1 ≤ 1.2× the floor).
//!
//! Run: `cargo bench -p privacy-e2e --bench check_consent` (BENCH_SUBJECTS, BENCH_CALLS).

use std::time::{Duration, Instant};

use privacy_e2e::*;
use privacy_event_store::{EventStore, ExpectedVersion, NewEvent, StoreConfig};
use privacy_proto::bench::EchoMessage;
use privacy_proto::bench::echo_client::EchoClient;
use privacy_proto::bench::echo_server::{Echo, EchoServer};
use privacy_proto::v1::consent_service_client::ConsentServiceClient;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;
use prost::Message;
use tonic::transport::Channel;

/// The echo floor: answers what it is sent.
struct EchoImpl;

#[tonic::async_trait]
impl Echo for EchoImpl {
    async fn echo(
        &self,
        request: tonic::Request<EchoMessage>,
    ) -> Result<tonic::Response<EchoMessage>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }
}

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

struct Stats {
    calls_per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn stats(mut latencies: Vec<Duration>, elapsed: Duration) -> Stats {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    Stats {
        calls_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Runs `calls` calls of `call` spread over `concurrency` tasks sharing one channel; returns
/// every call's latency.
async fn measure<F, Fut>(
    channel: Channel,
    calls: usize,
    concurrency: usize,
    call: F,
) -> Vec<Duration>
where
    F: Fn(Channel, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let channel = channel.clone();
        let call = call.clone();
        let share = calls / concurrency;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for i in 0..share {
                let begin = Instant::now();
                call(channel.clone(), t * share + i).await;
                latencies.push(begin.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(calls);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn main() {
    let subjects: usize = std::env::var("BENCH_SUBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let calls: usize = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nats = NatsServer::start();
        let data = tempfile::tempdir().unwrap();
        let t = Instant::now();
        seed(&data.path().join("consent/events"), subjects).await;
        println!("seeded {subjects} subjects × {} purposes in {:.1} s", PURPOSES.len(), t.elapsed().as_secs_f64());
        let t = Instant::now();
        let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
        let head = svc.service.store.head().seq;
        assert!(svc.service.projector.wait_for(head, Duration::from_secs(300)).await);
        println!("projections caught up with {head} events in {:.1} s", t.elapsed().as_secs_f64());

        // The view reads behind one check, without gRPC.
        let reader = privacy_consent::view::ConsentReader {
            view: svc.service.projector.view(privacy_consent::view::CONSENT_VIEW).unwrap(),
        };
        let t = Instant::now();
        let reads = 20_000;
        for i in 0..reads {
            let subject = format!("u-{}", (i * 7919) % subjects);
            std::hint::black_box(reader.history(TENANT, &subject, PURPOSES[i % 5]).unwrap());
            std::hint::black_box(reader.policies(TENANT).unwrap());
            std::hint::black_box(reader.child(TENANT, &subject).unwrap());
        }
        println!("view reads of one check: {:.1} µs", t.elapsed().as_secs_f64() * 1e6 / reads as f64);

        // The floor: a raw tonic echo server on its own port.
        let echo_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo_listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(EchoServer::new(EchoImpl))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(echo_listener)),
        );
        let echo_channel = tonic::transport::Endpoint::from_shared(format!("http://{echo_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();

        let channel = tonic::transport::Endpoint::from_shared(svc.url()).unwrap().connect().await.unwrap();
        let echo = |channel: Channel, _i: usize| async move {
            let mut c = EchoClient::new(channel);
            c.echo(EchoMessage { payload: vec![7; 64] }).await.unwrap();
        };
        let check = move |channel: Channel, i: usize| async move {
            let mut c = ConsentServiceClient::with_interceptor(channel, Bearer(Some(BACKEND_TOKEN)));
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
            // Alternate short rounds of both, so drift on a shared machine hits both alike.
            let n = if concurrency == 1 { calls / 4 } else { calls };
            let rounds = 5;
            let (mut floor_lat, mut real_lat) = (Vec::new(), Vec::new());
            let (mut floor_time, mut real_time) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..rounds {
                let t = Instant::now();
                floor_lat.extend(measure(echo_channel.clone(), n / rounds, concurrency, echo).await);
                floor_time += t.elapsed();
                let t = Instant::now();
                real_lat.extend(measure(channel.clone(), n / rounds, concurrency, check).await);
                real_time += t.elapsed();
            }
            let floor = stats(floor_lat, floor_time);
            let real = stats(real_lat, real_time);
            println!(
                "concurrency {concurrency:>2}: tonic floor {:>7.0} calls/s p50 {:>6.0} µs p99 {:>6.0} µs | CheckConsent {:>7.0} calls/s p50 {:>6.0} µs p99 {:>6.0} µs",
                floor.calls_per_s,
                floor.p50.as_secs_f64() * 1e6,
                floor.p99.as_secs_f64() * 1e6,
                real.calls_per_s,
                real.p50.as_secs_f64() * 1e6,
                real.p99.as_secs_f64() * 1e6,
            );
            if concurrency == 1 {
                println!("  ratio p50 CheckConsent/floor: {:.2} (target ≤ 1.20)", real.p50.as_secs_f64() / floor.p50.as_secs_f64());
            } else {
                println!("  ratio throughput CheckConsent/floor: {:.2} (target ≥ 0.80)", real.calls_per_s / floor.calls_per_s);
            }
        }
        svc.stop().await;
    });
}
