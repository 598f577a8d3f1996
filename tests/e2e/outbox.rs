//! Outbox: domain events stored while NATS is down are all published once, in order, when it
//! comes back; re-running the relay from the start publishes nothing twice.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use privacy_bus::{BusConfig, OutboxRelay};
use privacy_event_store::{EventStore, ExpectedVersion, NewEvent, StoreConfig};
use privacy_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

fn domain_event(i: usize, publish: bool) -> NewEvent {
    let event_type = if publish {
        "thing.happened"
    } else {
        "user.event"
    };
    NewEvent {
        publish,
        ..NewEvent::new(
            "acme",
            format!("0190f5a4-8a3c-7cc0-9d3e-{i:012}"),
            format!("acme/s-{}", i % 3),
            event_type,
            format!("body {i}").into_bytes(),
        )
    }
}

async fn wait_position(relay: &OutboxRelay, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.position() < seq {
        assert!(
            Instant::now() < deadline,
            "relay stuck at {}",
            relay.position()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_relay(
    relay: &OutboxRelay,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), privacy_bus::BusError>> {
    let relay = relay.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move { relay.run(shutdown).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_events_are_published_once_in_order_across_a_nats_outage() {
    let mut nats = NatsServer::start();
    let config = BusConfig {
        url: nats.url(),
        ..BusConfig::default()
    };
    let client = privacy_bus::connect(&config, "outbox-test").await.unwrap();
    let js = jetstream::new(client);
    privacy_bus::ensure_streams(&js, &config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path(), StoreConfig::default()).unwrap();

    nats.stop();
    let mut expected = Vec::new();
    for i in 0..60 {
        let publish = i % 4 != 3;
        let e = domain_event(i, publish);
        if publish {
            expected.push(format!("consent:acme:{}", e.event_id));
        }
        store.append(vec![e], ExpectedVersion::Any).await.unwrap();
    }
    let relay = OutboxRelay::new(js.clone(), store.clone(), "consent", config.clone());
    let shutdown = CancellationToken::new();
    let task = spawn_relay(&relay, &shutdown);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        relay.cursor().unwrap(),
        0,
        "nothing can be relayed while NATS is down"
    );
    assert_eq!(relay.position(), 0);
    nats.restart();
    wait_position(&relay, 60).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(
        relay.cursor().unwrap() >= 59,
        "the durable cursor follows published events"
    );

    // A crash before the cursor moved means re-publishing; the duplicate window absorbs it.
    store
        .set_meta("outbox.cursor", &0u64.to_be_bytes())
        .await
        .unwrap();
    let relay = OutboxRelay::new(js.clone(), store.clone(), "consent", config.clone());
    let shutdown = CancellationToken::new();
    let again = spawn_relay(&relay, &shutdown);
    wait_position(&relay, 60).await;
    shutdown.cancel();
    again.await.unwrap().unwrap();

    let stream = js.get_stream("PRIVACY_EVT").await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut batch = consumer
        .fetch()
        .max_messages(500)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        assert_eq!(
            m.subject.as_str(),
            "privacy.evt.consent.acme.thing.happened"
        );
        got.push(
            m.headers
                .as_ref()
                .unwrap()
                .get("Nats-Msg-Id")
                .unwrap()
                .as_str()
                .to_owned(),
        );
    }
    assert_eq!(got, expected);
}

/// Every message on the domain-event stream, as (Nats-Msg-Id, Privacy-Seq).
async fn on_stream(js: &jetstream::Context) -> Vec<(String, String)> {
    let stream = js.get_stream("PRIVACY_EVT").await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config::default())
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending as usize;
    let mut got = Vec::new();
    let mut messages = consumer.messages().await.unwrap();
    while got.len() < pending {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("a stream message within 10 s")
            .unwrap()
            .unwrap();
        let h = m.headers.as_ref().unwrap();
        got.push((
            h.get("Nats-Msg-Id").unwrap().as_str().to_owned(),
            h.get("Privacy-Seq").unwrap().as_str().to_owned(),
        ));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_the_duplicate_window_does_not_publish_again() {
    let nats = NatsServer::start();
    let window = Duration::from_millis(300);
    let config = BusConfig {
        url: nats.url(),
        duplicate_window: window,
        ..BusConfig::default()
    };
    let js = jetstream::new(privacy_bus::connect(&config, "outbox-test").await.unwrap());
    privacy_bus::ensure_streams(&js, &config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path(), StoreConfig::default()).unwrap();
    for i in 0..30 {
        store
            .append(vec![domain_event(i, i % 5 != 4)], ExpectedVersion::Any)
            .await
            .unwrap();
    }
    let relay = OutboxRelay::new(js.clone(), store.clone(), "consent", config.clone());
    let shutdown = CancellationToken::new();
    let task = spawn_relay(&relay, &shutdown);
    wait_position(&relay, 30).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        relay.cursor().unwrap(),
        30,
        "the cursor is saved at shutdown"
    );

    // The cursor lags the stream (as after a crash between JetStream's ack and the cursor's
    // write), and the restart comes after the duplicate window: JetStream would no longer drop
    // a re-publish, so the relay must resume from what the stream holds.
    store
        .set_meta("outbox.cursor", &3u64.to_be_bytes())
        .await
        .unwrap();
    tokio::time::sleep(window * 3).await;
    assert_eq!(relay.last_on_stream().await.unwrap(), 29);
    for i in 30..35 {
        store
            .append(vec![domain_event(i, true)], ExpectedVersion::Any)
            .await
            .unwrap();
    }
    let relay = OutboxRelay::new(js.clone(), store.clone(), "consent", config.clone());
    let shutdown = CancellationToken::new();
    let again = spawn_relay(&relay, &shutdown);
    wait_position(&relay, 35).await;
    shutdown.cancel();
    again.await.unwrap().unwrap();

    let got = on_stream(&js).await;
    let expected: Vec<(String, String)> = (0..35)
        .filter(|i| *i >= 30 || i % 5 != 4)
        .map(|i| {
            let id = domain_event(i, true).event_id;
            (format!("consent:acme:{id}"), (i + 1).to_string())
        })
        .collect();
    assert_eq!(
        got, expected,
        "each domain event on the stream exactly once, in order"
    );

    // An unreadable cursor is an error, not a silent restart from 0.
    store.set_meta("outbox.cursor", b"bad").await.unwrap();
    assert!(relay.cursor().is_err());
}
