//! A transient failure (the store side cannot take the batch) naks with back-off and never acks:
//! the messages come back and are stored once the failure clears, none lost, none doubled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use futures::future::BoxFuture;
use privacy_bus::{BusConfig, Ingest, IngestHandler, IngestStats, Prepared, Transient};
use privacy_e2e::*;
use privacy_event_store::{EventStore, NewEvent, StoreConfig};
use privacy_proto::Limits;
use privacy_proto::v1::Envelope;
use privacy_testkit::NatsServer;
use prost::Message;
use tokio_util::sync::CancellationToken;

/// Refuses the first `failures` batches as if the vault could not sync.
struct Flaky {
    failures: AtomicU32,
}

impl IngestHandler for Flaky {
    fn prepare<'a>(
        &'a self,
        envelope: Envelope,
        _: Option<&'a str>,
        _: SystemTime,
    ) -> BoxFuture<'a, Result<Prepared, Transient>> {
        Box::pin(async move {
            Ok(Prepared::Store(vec![NewEvent::new(
                envelope.tenant.clone(),
                envelope.event_id.clone(),
                format!("{}/{}", envelope.tenant, envelope.subject_id),
                envelope.event_type.clone(),
                envelope.encode_to_vec(),
            )]))
        })
    }

    fn before_append(&self) -> Result<(), Transient> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(Transient("vault unavailable".into()));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_nak_and_the_events_arrive_later() {
    let nats = NatsServer::start();
    let config = BusConfig {
        url: nats.url(),
        ..BusConfig::default()
    };
    let js = jetstream::new(privacy_bus::connect(&config, "transient").await.unwrap());
    privacy_bus::ensure_streams(&js, &config).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        let env = envelope(&format!("u-{i}"), granted("marketing"));
        ids.push(env.event_id.clone());
        publish_acked(&js, &env).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path(), StoreConfig::default()).unwrap();
    let stats = Arc::new(IngestStats::default());
    let ingest = Ingest {
        js,
        store: store.clone(),
        handler: Arc::new(Flaky {
            failures: AtomicU32::new(3),
        }),
        service: "consent".into(),
        config,
        limits: Limits::default(),
        stats: stats.clone(),
        links: Default::default(),
    };
    let shutdown = CancellationToken::new();
    let task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { ingest.run("privacy.in.vn-apihub.consent.*", shutdown).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.head().seq < 20 {
        assert!(
            Instant::now() < deadline,
            "stored only {} of 20",
            store.head().seq
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let stored: Vec<String> = store
        .read(1, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let mut want = ids.clone();
    want.sort();
    let mut got = stored.clone();
    got.sort();
    assert_eq!(got, want, "every event once");
    let [accepted, _, rejected, naked] = stats.snapshot();
    assert_eq!((accepted, rejected), (20, 0));
    assert!(naked >= 3, "the failed batches were nak'ed ({naked})");
}
