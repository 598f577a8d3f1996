//! Erasure benchmark: retention over real gRPC and a real NATS, three simulated backend systems
//! answering every erase order from PRIVACY_OUT with `data.erased`. One erasure is timed from
//! `PlanErasure` to its `subject.shredded` on PRIVACY_EVT (plan → three orders → three answers
//! → `subject.erased` → shred → certificate ready). Prints median and p99 one at a time, and
//! throughput (subjects/s) with 100 in flight. Target (issue #11): p99 ≤ 1 s per subject.
//!
//! Run: `cargo bench -p privacy-e2e --bench erasure` (BENCH_SUBJECTS, default 1,000).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use privacy_e2e::bench_kit::{Stats, env_count, measure, runtime};
use privacy_e2e::*;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::retention_service_client::RetentionServiceClient;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;
use prost::Message;
use tokio::sync::oneshot;
use tonic::transport::Channel;

const SYSTEMS: [&str; 3] = ["accounts", "mailer", "gateway"];

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

/// The three systems: every erase order is answered with `data.erased` naming it.
async fn backends(js: jetstream::Context) {
    let consumer = js
        .get_stream("PRIVACY_OUT")
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("bench_backends".into()),
            filter_subject: format!("privacy.out.{TENANT}.*.erase"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    while let Some(Ok(m)) = messages.next().await {
        let order = Order::decode(m.payload.as_ref()).unwrap();
        let mut env = envelope(
            &order.subject_id,
            Payload::DataErased(DataErased {
                order_id: order.order_id.clone(),
                category: order.categories[0].clone(),
                system: order.system.clone(),
                ..Default::default()
            }),
        );
        env.source = order.system.clone();
        publish_acked(&js, &env).await;
        m.ack().await.unwrap();
    }
}

/// Wakes the waiter of each subject whose `subject.shredded` reaches PRIVACY_EVT.
async fn shredded(client: async_nats::Client, waiters: Waiters) {
    let mut sub = client
        .subscribe(format!("privacy.evt.retention.{TENANT}.subject.shredded"))
        .await
        .unwrap();
    while let Some(m) = sub.next().await {
        let env = Envelope::decode(m.payload.as_ref()).unwrap();
        if let Some(tx) = waiters.lock().unwrap().remove(&env.subject_id) {
            let _ = tx.send(());
        }
    }
}

fn main() {
    let subjects = env_count("BENCH_SUBJECTS", 1_000);
    let one_by_one = (subjects / 10).max(10);
    runtime().block_on(async {
        let nats = NatsServer::start();
        let data = tempfile::tempdir().unwrap();
        let svc = InProcess::start(privacy_retention::SPEC, &nats.url(), data.path()).await;
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        let name = |phase: &str, i: usize| format!("u-{phase}-{i}");
        let mut seed = Vec::new();
        for (phase, n) in [("one", one_by_one), ("many", subjects)] {
            for i in 0..n {
                for system in SYSTEMS {
                    seed.push(envelope(
                        &name(phase, i),
                        Payload::DataCollected(DataCollected {
                            category: "contact".into(),
                            system: system.into(),
                            purpose: "provide_service".into(),
                            ..Default::default()
                        }),
                    ));
                }
            }
        }
        let total = seed.len() as u64;
        publish_pipelined(&js, seed).await;
        let mut audit = audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await;
        wait_for_head(&mut audit, total, Duration::from_secs(300)).await;

        let waiters: Waiters = Arc::default();
        tokio::spawn(backends(js.clone()));
        tokio::spawn(shredded(client.clone(), waiters.clone()));
        let channel = tonic::transport::Endpoint::from_shared(svc.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let erase = |phase: &'static str| {
            let waiters = waiters.clone();
            move |channel: Channel, i: usize| {
                let waiters = waiters.clone();
                async move {
                    let subject = format!("u-{phase}-{i}");
                    let (tx, rx) = oneshot::channel();
                    waiters.lock().unwrap().insert(subject.clone(), tx);
                    let mut c = RetentionServiceClient::with_interceptor(
                        channel,
                        Bearer(Some(OPERATOR_TOKEN)),
                    );
                    let planned = c
                        .plan_erasure(PlanErasureRequest {
                            tenant: TENANT.into(),
                            subject_id: subject,
                            reason: "subject_request".into(),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(planned.erasure.unwrap().goes.len(), SYSTEMS.len());
                    tokio::time::timeout(Duration::from_secs(60), rx)
                        .await
                        .expect("an erasure finished within 60 s")
                        .unwrap();
                }
            }
        };
        for (phase, n, in_flight) in [("one", one_by_one, 1), ("many", subjects, 100)] {
            let begin = Instant::now();
            let latencies = measure(channel.clone(), n, in_flight, erase(phase)).await;
            let stats = Stats::of(latencies, begin.elapsed());
            println!(
                "{n:>5} erasures, {in_flight:>3} in flight: {:.0} subjects/s, median {:.0} ms, p99 {:.0} ms (target p99 ≤ 1000 ms)",
                stats.calls_per_s,
                stats.p50.as_secs_f64() * 1e3,
                stats.p99.as_secs_f64() * 1e3
            );
        }
        svc.stop().await;
    });
}
