//! Kill -9 a service process while it ingests 20k events, restart it: every event is present
//! exactly once, the chain verifies, and the projection equals a rebuild from scratch. Then
//! SIGTERM stops it with exit code 0. The same for subject-requests under a burst of requests
//! on NATS and on gRPC at once, and for retention while erasures are answered and settled.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use privacy_e2e::*;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_testkit::{NatsServer, ServiceProcess, free_port};

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
    // The batch in flight at a kill is redelivered after the ack wait: keep it short.
    env.insert("PRIVACY_ACK_WAIT_SECS".into(), "2".into());
    // The consent service must know the policy version the grants name.
    let mut process = ServiceProcess::spawn("privacy-consent", &env);
    wait_serving(&url).await;
    publish_policy_v1(&url).await;

    let events: Vec<Envelope> = (0..EVENTS)
        .map(|i| {
            let payload = if i % 3 == 0 {
                Payload::ConsentWithdrawn(ConsentWithdrawn {
                    purposes: vec!["marketing".into()],
                    ..Default::default()
                })
            } else {
                granted(if i % 2 == 0 { "marketing" } else { "analytics" })
            };
            envelope(&format!("u-{}", i % 2000), payload)
        })
        .collect();
    let published: BTreeSet<String> = events.iter().map(|e| e.event_id.clone()).collect();
    publish_pipelined(&js, events).await;

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

    assert_rebuild_equals_live(&url, total).await;

    let status = process
        .terminate(Duration::from_secs(20))
        .expect("exit status");
    assert!(status.success(), "SIGTERM exit: {status:?}");
}

/// A request of the test tenant, as `request.received` on NATS or `OpenRequest` on gRPC.
fn request_received(i: usize) -> Envelope {
    envelope(
        &format!("u-{i}"),
        Payload::RequestReceived(RequestReceived {
            request_type: RequestType::Access as i32,
            channel: "web".into(),
            ..Default::default()
        }),
    )
}

/// Kill -9 the subject-requests service during a burst of requests on NATS and on gRPC: after a
/// restart every request published and every call answered OK is stored exactly once with its
/// deadlines, a retried call finds its request, and the view equals its rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_requests_service_loses_no_request() {
    use futures::StreamExt;
    use privacy_proto::v1::subject_request_service_client::SubjectRequestServiceClient;

    const ON_NATS: usize = 3_000;
    const ON_GRPC: usize = 600;
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut env = service_env(&nats.url(), data.path(), port);
    env.insert("PRIVACY_INGEST_BATCH".into(), "100".into());
    env.insert("PRIVACY_ACK_WAIT_SECS".into(), "2".into());
    let mut process = ServiceProcess::spawn("privacy-subject-requests", &env);
    wait_serving(&url).await;

    let burst: Vec<Envelope> = (0..ON_NATS).map(request_received).collect();
    let published: BTreeSet<String> = burst.iter().map(|e| e.event_id.clone()).collect();
    publish_pipelined(&js, burst).await;

    // gRPC callers, 16 at a time, while the process is killed under them.
    let calls: Vec<Envelope> = (ON_NATS..ON_NATS + ON_GRPC).map(request_received).collect();
    let open = |url: String, e: Envelope| async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await;
        let Ok(channel) = channel else {
            return (e, false);
        };
        let mut c =
            SubjectRequestServiceClient::with_interceptor(channel, Bearer(Some(OPERATOR_TOKEN)));
        let Some(Payload::RequestReceived(r)) = e.payload.clone() else {
            unreachable!()
        };
        let ok = c
            .open_request(OpenRequestRequest {
                tenant: e.tenant.clone(),
                subject_id: e.subject_id.clone(),
                request_type: r.request_type,
                channel: r.channel,
                event_id: e.event_id.clone(),
                received_at: e.occurred_at,
                source: e.source.clone(),
                ..Default::default()
            })
            .await
            .is_ok();
        (e, ok)
    };
    let burst = tokio::spawn({
        let (url, calls) = (url.clone(), calls.clone());
        async move {
            futures::stream::iter(calls)
                .map(|e| open(url.clone(), e))
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
        }
    });
    let killed_at = wait_past(&url, 1_000).await;
    process.kill9();
    let answered = burst.await.unwrap();
    let mut process = ServiceProcess::spawn("privacy-subject-requests", &env);
    wait_serving(&url).await;
    let ok: Vec<&Envelope> = answered
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(e, _)| e)
        .collect();
    eprintln!(
        "killed with SIGKILL at head {killed_at}; {} of {ON_GRPC} calls answered OK before",
        ok.len()
    );

    // A caller retries what failed, with the same idempotency key: every call now succeeds.
    let retried = futures::stream::iter(answered.iter().map(|(e, _)| e.clone()))
        .map(|e| open(url.clone(), e))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let failed = retried.iter().filter(|(_, ok)| !ok).count();
    assert_eq!(failed, 0, "retried OpenRequest calls failed");
    let mut audit = audit_client(&url, Some(AUDITOR_TOKEN)).await;
    // Each request is two events: request.received and the request.opened it implies.
    let total = 2 * (ON_NATS + ON_GRPC) as u64;
    wait_for_head(&mut audit, total, Duration::from_secs(120)).await;
    let stored = all_events(&mut audit).await;
    assert_eq!(
        stored.len() as u64,
        total,
        "no request lost or stored twice"
    );
    let received: Vec<String> = stored
        .iter()
        .map(|e| e.envelope.as_ref().unwrap())
        .filter(|e| e.event_type == "request.received")
        .map(|e| e.event_id.clone())
        .collect();
    let unique: BTreeSet<String> = received.iter().cloned().collect();
    assert_eq!(unique.len(), received.len(), "a request stored twice");
    let mut expected = published.clone();
    expected.extend(calls.iter().map(|e| e.event_id.clone()));
    assert_eq!(unique, expected);
    assert_log_intact(&mut audit, &stored, total).await;

    assert_rebuild_equals_live(&url, total).await;
    let status = process
        .terminate(Duration::from_secs(20))
        .expect("exit status");
    assert!(status.success(), "SIGTERM exit: {status:?}");
}

/// Kill -9 retention while erasures are being answered and settled: after a restart every
/// erasure finishes exactly once — one order per system on PRIVACY_OUT, one `subject.erased`,
/// one vault shred recorded — the chain verifies and the view equals its rebuild. The backend
/// is simulated by a pull consumer on PRIVACY_OUT that answers each order once with
/// `data.erased`, also while retention is down (the answers wait in PRIVACY_IN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_retention_finishes_every_erasure_once() {
    use std::collections::{BTreeMap, HashSet};

    use futures::StreamExt;
    use prost::Message;
    use tokio_util::sync::CancellationToken;

    const SUBJECTS: usize = 150;
    const SYSTEMS: [(&str, &str); 3] = [
        ("accounts", "account"),
        ("mailer", "contact"),
        ("gateway", "usage"),
    ];
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut env = service_env(&nats.url(), data.path(), port);
    env.insert("PRIVACY_ACK_WAIT_SECS".into(), "2".into());
    let mut process = ServiceProcess::spawn("privacy-retention", &env);
    wait_serving(&url).await;

    let subjects: Vec<String> = (0..SUBJECTS).map(|i| format!("u-kill-{i}")).collect();
    let collected: Vec<Envelope> = subjects
        .iter()
        .flat_map(|s| {
            SYSTEMS.iter().map(move |(system, category)| {
                envelope(
                    s,
                    Payload::DataCollected(DataCollected {
                        category: (*category).into(),
                        system: (*system).into(),
                        purpose: "provide_service".into(),
                        ..Default::default()
                    }),
                )
            })
        })
        .collect();
    publish_pipelined(&js, collected).await;
    let held = (SUBJECTS * SYSTEMS.len()) as u64;
    assert!(wait_past(&url, held).await >= held);

    // Every erasure planned (each call answered) before the backend answers.
    let mut c = retention_client(&url, OPERATOR_TOKEN).await;
    let mut erasures = Vec::new();
    for s in &subjects {
        let e = c
            .plan_erasure(PlanErasureRequest {
                tenant: TENANT.into(),
                subject_id: s.clone(),
                reason: "operator".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .erasure
            .unwrap();
        assert_eq!(e.orders.len(), SYSTEMS.len(), "{e:?}");
        erasures.push(e.erasure_id);
    }
    // The backend: answers each order once, whatever retention's state; the process is killed
    // while the answers are being folded and the erasures settled.
    let stop = CancellationToken::new();
    let backend = tokio::spawn({
        let (js, stop) = (js.clone(), stop.clone());
        async move {
            let consumer = js
                .get_stream("PRIVACY_OUT")
                .await
                .unwrap()
                .create_consumer(jetstream::consumer::pull::Config {
                    durable_name: Some("backend".into()),
                    filter_subject: "privacy.out.vn-apihub.>".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut messages = consumer.messages().await.unwrap();
            let mut answered = HashSet::new();
            let mut received = 0usize;
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => return (received, answered.len()),
                    m = messages.next() => m.unwrap().unwrap(),
                };
                received += 1;
                let order = Order::decode(m.payload.as_ref()).unwrap();
                if answered.insert(order.order_id.clone()) {
                    let mut answer = envelope(
                        &order.subject_id,
                        Payload::DataErased(DataErased {
                            order_id: order.order_id.clone(),
                            category: order.categories[0].clone(),
                            system: order.system.clone(),
                            ..Default::default()
                        }),
                    );
                    answer.source = order.system.clone();
                    publish_acked(&js, &answer).await;
                }
                m.ack().await.unwrap();
            }
        }
    });

    // Each plan is 4 events (the plan and its 3 orders); each erasure then takes 3 answers,
    // `subject.erased` and `subject.shredded`.
    let planned = held + 4 * SUBJECTS as u64;
    let killed_at = wait_past(&url, planned + SUBJECTS as u64).await;
    process.kill9();
    let mut process = ServiceProcess::spawn("privacy-retention", &env);
    wait_serving(&url).await;
    eprintln!("retention killed with SIGKILL at head {killed_at} of {planned} + answers");

    let total = planned + 5 * SUBJECTS as u64;
    let mut audit = audit_client(&url, Some(AUDITOR_TOKEN)).await;
    wait_for_head(&mut audit, total, Duration::from_secs(120)).await;
    let stored = all_events(&mut audit).await;
    assert_log_intact(&mut audit, &stored, total).await;
    let mut per_type: BTreeMap<String, usize> = BTreeMap::new();
    for e in &stored {
        *per_type
            .entry(e.envelope.as_ref().unwrap().event_type.clone())
            .or_default() += 1;
    }
    for (t, n) in [
        ("erasure.planned", SUBJECTS),
        ("erasure.ordered", 3 * SUBJECTS),
        ("data.erased", 3 * SUBJECTS),
        ("subject.erased", SUBJECTS),
        ("subject.shredded", SUBJECTS),
    ] {
        assert_eq!(per_type.get(t).copied(), Some(n), "{t}: {per_type:?}");
    }
    let mut c = retention_client(&url, OPERATOR_TOKEN).await;
    for id in &erasures {
        let e = c
            .get_erasure(GetErasureRequest {
                tenant: TENANT.into(),
                erasure_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .erasure
            .unwrap();
        assert!(e.shredded_at.is_some() && e.orders.iter().all(|o| o.answered));
    }
    // One order per system per erasure reached the bus; the backend answered each once.
    let out = js
        .get_stream("PRIVACY_OUT")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(out, 3 * SUBJECTS as u64, "orders on PRIVACY_OUT");
    let answered = eventually("the backend saw every order", || {
        let js = js.clone();
        async move {
            let mut consumer: jetstream::consumer::PullConsumer = js
                .get_stream("PRIVACY_OUT")
                .await
                .unwrap()
                .get_consumer("backend")
                .await
                .unwrap();
            let info = consumer.info().await.unwrap();
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                Ok(())
            } else {
                Err(format!("{info:?}"))
            }
        }
    })
    .await;
    let () = answered;
    stop.cancel();
    let (received, unique) = backend.await.unwrap();
    assert_eq!(unique, 3 * SUBJECTS, "orders answered");
    assert!(received >= unique);

    assert_rebuild_equals_live(&url, total).await;
    let status = process
        .terminate(Duration::from_secs(20))
        .expect("exit status");
    assert!(status.success(), "SIGTERM exit: {status:?}");
}
