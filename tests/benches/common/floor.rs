//! The ingest floor the NATS-ingest benchmarks measure against, shared by including this file
//! (`#[path = "common/floor.rs"] mod floor;`): a JetStream pull, one sled batch per pulled
//! chunk, flush + fdatasync, ack — no domain logic.

use std::fs::File;
use std::time::Instant;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;

/// The most messages one pull (and one sled batch) takes.
pub const BATCH: usize = 1000;

/// Pulls `n` messages under `filter` from PRIVACY_IN into sled, batch by batch; events/s.
pub async fn floor(js: &jetstream::Context, filter: &str, n: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path())
        .mode(sled::Mode::HighThroughput)
        .open()
        .unwrap();
    let tree = db.open_tree("log").unwrap();
    let file = File::open(dir.path().join("db")).unwrap();
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream("PRIVACY_IN")
        .await
        .unwrap()
        .get_or_create_consumer(
            "bench_floor",
            pull::Config {
                durable_name: Some("bench_floor".into()),
                filter_subject: filter.into(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: (BATCH * 20) as i64,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut chunks = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .messages()
        .await
        .unwrap()
        .ready_chunks(BATCH);
    let (mut done, mut seq, mut start) = (0usize, 0u64, None);
    while done < n {
        let chunk = chunks.next().await.unwrap();
        start.get_or_insert_with(Instant::now);
        let msgs: Vec<_> = chunk.into_iter().map(|m| m.unwrap()).collect();
        let mut batch = sled::Batch::default();
        for m in &msgs {
            seq += 1;
            batch.insert(&seq.to_be_bytes(), &m.payload[..]);
        }
        tree.apply_batch(batch).unwrap();
        db.flush().unwrap();
        file.sync_data().unwrap();
        for m in &msgs {
            m.ack().await.unwrap();
        }
        done += msgs.len();
    }
    n as f64 / start.unwrap().elapsed().as_secs_f64()
}
