//! A 3-node NATS JetStream cluster with streams of 3 replicas: the consent service, a real
//! binary given every node's URL, keeps ingesting while the node leading the user-event stream is
//! killed with SIGKILL in the middle of 20,000 publishes; every event is stored exactly once and
//! the chain verifies.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use futures::TryStreamExt;
use privacy_e2e::*;
use privacy_proto::v1::*;
use privacy_testkit::{NatsCluster, ServiceProcess, free_port};
use prost::Message;

const EVENTS: usize = 20_000;
/// Publishes in flight at once; each chunk's acks are awaited before the next is sent.
const CHUNK: usize = 256;
/// Acked publishes before the kill.
const KILL_AFTER: usize = 5_000;

/// The index of the node leading `stream` (asked until the cluster names one).
async fn stream_leader(js: &jetstream::Context, stream: &str, cluster: &NatsCluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await
            && let Ok(info) = s.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.as_deref())
            && let Some(i) = cluster.index_of(leader)
        {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "{stream} has no leader after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether every consumer of the user-event stream (the consent service's, here) has had every
/// message delivered and acked, so no redelivery can still arrive.
async fn consumers_drained(js: &jetstream::Context, bus: &privacy_bus::BusConfig) -> bool {
    let Ok(stream) = js.get_stream(bus.in_stream()).await else {
        return false;
    };
    let Ok(consumers) = stream.consumers().try_collect::<Vec<_>>().await else {
        return false;
    };
    !consumers.is_empty()
        && consumers
            .iter()
            .all(|c| c.num_pending == 0 && c.num_ack_pending == 0)
}

/// The consumers of the user-event stream whose leader is the node `name` (for the log).
async fn consumers_led_by(
    js: &jetstream::Context,
    bus: &privacy_bus::BusConfig,
    name: &str,
) -> BTreeSet<String> {
    let Ok(stream) = js.get_stream(bus.in_stream()).await else {
        return BTreeSet::new();
    };
    let consumers = stream
        .consumers()
        .try_collect::<Vec<_>>()
        .await
        .unwrap_or_default();
    consumers
        .into_iter()
        .filter(|c| c.cluster.as_ref().and_then(|c| c.leader.as_deref()) == Some(name))
        .map(|c| c.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_killed_mid_ingest_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3);
    let bus = privacy_bus::BusConfig {
        url: cluster.urls(),
        replicas: 3,
        ..Default::default()
    };
    let js = jetstream::new(privacy_bus::connect(&bus, "e2e-cluster").await.unwrap());
    privacy_bus::ensure_streams(&js, &bus).await.unwrap();

    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut env = service_env(&cluster.urls(), data.path(), port);
    env.insert("PRIVACY_STREAM_REPLICAS".into(), "3".into());
    // A delivery whose ack died with the node comes again after this, not after 30 s.
    env.insert("PRIVACY_ACK_WAIT_SECS".into(), "5".into());
    let mut process = ServiceProcess::spawn("privacy-consent", &env);
    wait_serving(&url).await;
    publish_policy_v1(&url).await;
    let mut audit = audit_client(&url, Some(AUDITOR_TOKEN)).await;
    let ready = started.elapsed();

    // The node leading the user-event stream: losing it forces a leader election while
    // publishes and pulls are in flight. The service may or may not be connected to it.
    let victim = stream_leader(&js, &bus.in_stream(), &cluster).await;
    let victim_leads = consumers_led_by(&js, &bus, &cluster.name(victim)).await;

    let events: Vec<Envelope> = (0..EVENTS)
        .map(|i| {
            let purpose = if i % 2 == 0 { "marketing" } else { "analytics" };
            envelope(&format!("u-{}", i % 2000), granted(purpose))
        })
        .collect();
    let published: BTreeSet<String> = events.iter().map(|e| e.event_id.clone()).collect();
    let mut acked = 0;
    let mut resent = 0;
    let mut killed_at_head = None;
    for chunk in events.chunks(CHUNK) {
        let mut pending: Vec<&Envelope> = chunk.iter().collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pending.is_empty() {
            let mut sent = Vec::with_capacity(pending.len());
            for e in pending.drain(..) {
                // Retries carry the same Nats-Msg-Id, so JetStream drops a repeat.
                let msg = PublishMessage::build()
                    .payload(e.encode_to_vec().into())
                    .message_id(&e.event_id);
                let ack = js
                    .send_publish(bus.in_subject(&e.tenant, &e.event_type), msg)
                    .await;
                sent.push((e, ack));
            }
            if killed_at_head.is_none() && acked >= KILL_AFTER {
                // This chunk's publishes are in flight.
                cluster.kill(victim);
                killed_at_head = Some(head_seq(&mut audit).await);
            }
            // Awaited together: each ack's 5 s timeout starts when it is awaited, and a chunk
            // whose publishes died with the node would otherwise wait 256 × 5 s.
            let outcomes = futures::future::join_all(sent.into_iter().map(|(e, ack)| async move {
                match ack {
                    Ok(ack) => (e, ack.await.is_ok()),
                    Err(_) => (e, false),
                }
            }))
            .await;
            for (e, ok) in outcomes {
                if ok {
                    acked += 1;
                } else {
                    pending.push(e);
                }
            }
            if !pending.is_empty() {
                resent += pending.len();
                assert!(
                    Instant::now() < deadline,
                    "{} publishes not acked within 60 s of retrying",
                    pending.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(acked, EVENTS);
    let published_in = started.elapsed() - ready;
    let killed_at_head = killed_at_head.expect("a node was killed");
    assert!(process.is_running(), "the service survived the node's loss");

    // The killed node comes back and catches up; the service need not notice.
    cluster.restart(victim);

    // Every event stored, nothing left to redeliver.
    let total = EVENTS as u64 + 1;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let h = head_seq(&mut audit).await;
        if h >= total && consumers_drained(&js, &bus).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 90 s the head is {h} of {total} (or redeliveries are pending)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The policy version, then the grants.
    let stored = all_events(&mut audit).await;
    assert_log_intact(&mut audit, &stored, total).await;
    let grants: Vec<String> = stored
        .iter()
        .filter_map(|e| e.envelope.as_ref())
        .filter(|e| e.event_type == "consent.granted")
        .map(|e| e.event_id.clone())
        .collect();
    let unique: BTreeSet<String> = grants.iter().cloned().collect();
    assert_eq!(grants.len(), EVENTS, "consent.granted events stored");
    assert_eq!(unique.len(), EVENTS, "no event stored twice");
    assert_eq!(unique, published, "no event lost");
    assert!(process.is_running(), "the service kept running");

    let in_stream = in_stream_messages(&js).await;
    eprintln!(
        "cluster: killed n{victim} (leader of {} and of the consumers {victim_leads:?}) at \
         service head {killed_at_head}; {resent} publishes sent again; {in_stream} messages in the \
         stream; ready in {ready:?}, published in {published_in:?}, all stored after {:?}",
        bus.in_stream(),
        started.elapsed()
    );
}
