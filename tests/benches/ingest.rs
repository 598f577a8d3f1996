//! Ingest benchmark: in one run, against one real nats-server, measures
//! (a) the floor — JetStream pull → one sled batch → flush + fdatasync → ack, no domain logic —
//! and (b) the consent service's real ingest path (decode, validate, tenant check, sealing with
//! the key vault, group commit with hash chain and indexes, ack), over the same number of
//! identical pre-published events and the same batch size, and prints both rates and the ratio
//! (target ≥ 0.8). Then (c) rebuilds the timeline projection of the resulting store and compares
//! it with a raw walk of the same store's log files and with a scan decoding every record.
//!
//! Run: `cargo bench -p privacy-e2e --bench ingest` (BENCH_EVENTS sets the count, default 50000;
//! BENCH_SUBJECTS how many subjects they name, default 2000; BENCH_REBUILD_ROUNDS how many
//! rebuilds (c) times, default 3).

/// The services' allocator, for the floor and the service alike.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use privacy_e2e::*;
use privacy_event_store::{EventStore, Projector, StoreConfig};
use privacy_service_kit::timeline::{SUBJECT_TIMELINE, SubjectTimeline};
use privacy_service_kit::{ServiceConfig, ServiceSpec};
use privacy_testkit::NatsServer;
use prost::Message;
use tokio_util::sync::CancellationToken;

#[path = "common/floor.rs"]
mod floor;

use floor::{BATCH, floor};

/// How many subjects the events are spread over (`BENCH_SUBJECTS`, default 2000): each new
/// subject gets a data key, which the vault makes durable before the events' commit.
fn subjects() -> usize {
    std::env::var("BENCH_SUBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

async fn publish(js: &jetstream::Context, n: usize) {
    let mut acks = Vec::with_capacity(BATCH);
    for i in 0..n {
        let env = envelope(&format!("u-{}", i % subjects()), granted("marketing"));
        let msg = PublishMessage::build()
            .payload(env.encode_to_vec().into())
            .message_id(&env.event_id);
        acks.push(
            js.send_publish("privacy.in.vn-apihub.consent.granted", msg)
                .await
                .unwrap(),
        );
        if acks.len() == BATCH {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// (b) The consent service's real ingest path, in-process.
async fn service(nats_url: &str, data: &std::path::Path, n: usize) -> f64 {
    let spec: ServiceSpec = privacy_consent::SPEC;
    let mut env = service_env(nats_url, data, 0);
    env.insert("PRIVACY_INGEST_BATCH".into(), BATCH.to_string());
    let config = ServiceConfig::from_map(&env, spec.default_port).unwrap();
    let shutdown = CancellationToken::new();
    let svc = privacy_service_kit::start(spec, config, shutdown.clone())
        .await
        .unwrap();
    let mut head = svc.store.watch_head();
    let mut start = None;
    // The store already holds the policy version.
    let n = n + 1;
    while (head.borrow_and_update().seq as usize) < n {
        if head.borrow().seq > 1 {
            start.get_or_insert_with(Instant::now);
        }
        tokio::time::timeout(Duration::from_secs(120), head.changed())
            .await
            .expect("ingest progresses")
            .unwrap();
        start.get_or_insert_with(Instant::now);
    }
    let rate = (n - 1) as f64 / start.unwrap().elapsed().as_secs_f64();
    shutdown.cancel();
    svc.wait().await.unwrap();
    rate
}

/// How many times (c) rebuilds the timeline (`BENCH_REBUILD_ROUNDS`, default 3; more to
/// profile it), keeping the fastest.
fn rebuild_rounds() -> usize {
    std::env::var("BENCH_REBUILD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// (c) A raw walk of the store's log files versus a rebuild of the timeline projection over it.
async fn rebuild(events_dir: &std::path::Path, n: usize) -> (f64, f64, f64) {
    let mut scan_rate = 0.0;
    let mut files: Vec<_> = std::fs::read_dir(events_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    for _ in 0..3 {
        let start = Instant::now();
        let mut bytes = 0usize;
        let mut events = 0usize;
        // Frames: a u32 word, then its bytes; a word with the top bit set is a commit header.
        for path in &files {
            let v = std::fs::read(path).unwrap();
            let mut pos = 0;
            while pos < v.len() {
                let word = u32::from_be_bytes(v[pos..pos + 4].try_into().unwrap());
                let len = (word & 0x7fff_ffff) as usize;
                if word & 0x8000_0000 == 0 {
                    bytes += std::hint::black_box(&v[pos + 4..pos + 4 + len]).len();
                    events += 1;
                }
                pos += 4 + len;
            }
        }
        assert_eq!(events, n);
        std::hint::black_box(bytes);
        scan_rate = f64::max(scan_rate, n as f64 / start.elapsed().as_secs_f64());
    }
    let store = EventStore::open(events_dir, StoreConfig::default()).unwrap();
    let mut decode_rate = 0.0;
    for _ in 0..3 {
        let start = Instant::now();
        let mut from = 1;
        while let Some(last) = store.read(from, 16_384).unwrap().last() {
            from = last.seq + 1;
        }
        assert_eq!(from as usize, n + 1);
        decode_rate = f64::max(decode_rate, n as f64 / start.elapsed().as_secs_f64());
    }
    let projector = Projector::open(&store, vec![Arc::new(SubjectTimeline)]).unwrap();
    let mut rebuild_rate = 0.0;
    for _ in 0..rebuild_rounds() {
        let start = Instant::now();
        let status = projector
            .rebuild(SUBJECT_TIMELINE, |_, _| {})
            .await
            .unwrap();
        assert_eq!(status.checkpoint as usize, n);
        rebuild_rate = f64::max(rebuild_rate, n as f64 / start.elapsed().as_secs_f64());
    }
    (scan_rate, decode_rate, rebuild_rate)
}

/// (d) The event store alone (no NATS, no service): append in batches vs raw sled batches.
async fn store_only(n: usize) -> (f64, f64) {
    let payload = envelope("u-1", granted("marketing")).encode_to_vec();
    let raw = {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .mode(sled::Mode::HighThroughput)
            .open()
            .unwrap();
        let tree = db.open_tree("log").unwrap();
        let file = File::open(dir.path().join("db")).unwrap();
        let start = Instant::now();
        for b in 0..n / BATCH {
            let mut batch = sled::Batch::default();
            for i in 0..BATCH {
                batch.insert(&((b * BATCH + i) as u64).to_be_bytes(), &payload[..]);
            }
            tree.apply_batch(batch).unwrap();
            db.flush().unwrap();
            file.sync_data().unwrap();
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path(), StoreConfig::default()).unwrap();
    let start = Instant::now();
    for b in 0..n / BATCH {
        let events = (0..BATCH)
            .map(|i| {
                privacy_event_store::NewEvent::new(
                    TENANT,
                    uuid::Uuid::now_v7().to_string(),
                    format!("{TENANT}/u-{}", (b * BATCH + i) % 2000),
                    "consent.granted",
                    payload.clone(),
                )
            })
            .collect();
        store
            .append(events, privacy_event_store::ExpectedVersion::Any)
            .await
            .unwrap();
    }
    (raw, n as f64 / start.elapsed().as_secs_f64())
}

/// (e) The per-event CPU of the ingest path without NATS or the store: decode, validate, seal,
/// encode.
fn prepare_only(n: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let vault =
        privacy_event_store::Vault::open(dir.path(), &privacy_event_store::MasterKey::generate())
            .unwrap();
    let limits = privacy_proto::Limits::default();
    let msgs: Vec<Vec<u8>> = (0..n)
        .map(|i| envelope(&format!("u-{}", i % subjects()), granted("marketing")).encode_to_vec())
        .collect();
    let start = Instant::now();
    for bytes in &msgs {
        let mut env =
            privacy_proto::decode_envelope(bytes, privacy_proto::Encoding::Protobuf).unwrap();
        privacy_proto::validate_envelope(
            &env,
            Some("consent.granted"),
            std::time::SystemTime::now(),
            &limits,
        )
        .unwrap();
        privacy_service_kit::personal::seal_envelope(&vault, &mut env).unwrap();
        std::hint::black_box(env.encode_to_vec());
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if privacy_event_store::SLOW_SEAL_BUILD {
            println!("poly1305 built without its .cargo/config.toml cfg (a RUSTFLAGS variable replaces it): sealing is about 3× slower");
        }
        println!("prepare only (decode, validate, seal, encode; one thread): {:>10.0} events/s", prepare_only(n));
        let (raw, store) = store_only(n).await;
        println!("sled batch + flush + fdatasync (no NATS):   {raw:>10.0} events/s");
        println!("event store append (no NATS):               {store:>10.0} events/s");
        println!("ratio store/raw: {:.2}", store / raw);
        let nats = NatsServer::start();
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let bus = privacy_bus::BusConfig { url: nats.url(), ..Default::default() };
        privacy_bus::ensure_streams(&js, &bus).await.unwrap();
        // The grants name policy version v1: publish it through the service first.
        let data = tempfile::tempdir().unwrap();
        {
            let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
            publish_policy_v1(&svc.url()).await;
            svc.stop().await;
        }
        let t = Instant::now();
        publish(&js, n).await;
        println!("published {n} consent.granted events in {:.2} s", t.elapsed().as_secs_f64());

        let floor_rate = floor(&js, "privacy.in.vn-apihub.consent.*", n).await;
        let service_rate = service(&nats.url(), data.path(), n).await;
        println!("ingest floor (pull → sled batch → flush+fdatasync → ack): {floor_rate:>10.0} events/s");
        println!("ingest consent service (real path):                       {service_rate:>10.0} events/s");
        println!("ratio service/floor: {:.2} (target ≥ 0.80)", service_rate / floor_rate);

        let (scan, decoded, rebuilt) = rebuild(&data.path().join("consent/events"), n + 1).await;
        println!("raw walk of the store's log files (frames, no decoding):     {scan:>10.0} events/s");
        println!("store scan decoding every record (EventStore::read):      {decoded:>10.0} events/s");
        println!("timeline projection rebuild:                              {rebuilt:>10.0} events/s");
        println!("ratio rebuild/raw walk: {:.2}", rebuilt / scan);
        println!("ratio rebuild/decoding scan: {:.2} (target ≥ 0.50)", rebuilt / decoded);
    });
}
