//! Scale benchmark (issue #15), in two parts.
//!
//! **The event store alone**: appends `SCALE_EVENTS` events (default 1M) of 300-byte payloads
//! over `SCALE_STREAMS` streams (default 1M) in batches of 1000, every commit fdatasynced, and
//! reports the append rate, the disk used against the payload (log files, index runs and
//! checkpoint, sled apart), the resident memory while appending, and, in a fresh process, the
//! time a plain read of every log file takes beside the time the store takes to open (the
//! index checkpoint, then the log after it) and its resident memory.
//!
//! **One service at that size**: the consent service binary ingests `SCALE_SERVICE_EVENTS`
//! `consent.granted` events (default 1M) over `SCALE_SUBJECTS` subjects (default 1M) through a
//! real nats-server; then the end-to-end ingest rate, the service's disk and memory, the time
//! from a restart to SERVING, and CheckConsent latency at concurrency 1 on that data beside a
//! floor: the same client calling a bare tonic echo server in a process of its own.
//!
//! Run: `cargo bench -p privacy-e2e --bench scale` (`SCALE_EVENTS=10000000` for 10M; either
//! count 0 skips its part; `SCALE_CACHE_MB` sets the store's page cache; the store's data goes
//! to a temporary directory unless `SCALE_DIR` names an empty one). Build the binaries first:
//! `cargo build --release --bins`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use privacy_e2e::bench_kit::{Stats, channel_to, echo_call, measure, runtime, serve_echo};
use privacy_e2e::*;
use privacy_event_store::{EventStore, ExpectedVersion, NewEvent, StoreConfig};
use privacy_proto::v1::CheckConsentRequest;
use privacy_testkit::{NatsServer, ServiceProcess, free_port};

const PAYLOAD: usize = 300;
const BATCH: usize = 1000;
/// Commits in flight while appending (the writer group-commits what is queued).
const PIPELINE: usize = 4;

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A `/proc/self/status` figure in MiB (`VmRSS`, `VmHWM`).
fn proc_mib(field: &str) -> f64 {
    pid_mib("self", field)
}

/// A `/proc/<pid>/status` figure in MiB.
fn pid_mib(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Bytes under `path` (files only), recursively.
fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.len()
    }
}

fn event(i: u64, streams: u64) -> NewEvent {
    let mut data = vec![0u8; PAYLOAD];
    // Distinct, incompressible-ish bytes per event.
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    NewEvent::new(
        "bench",
        format!("{i:016x}-0000-7000-8000-000000000000"),
        format!("bench/u-{}", i % streams),
        "consent.granted",
        data,
    )
}

/// The store's settings (`SCALE_CACHE_MB` overrides the page cache).
fn config() -> StoreConfig {
    let mut config = StoreConfig::default();
    if let Ok(mb) = std::env::var("SCALE_CACHE_MB") {
        config.cache_bytes = mb.parse::<u64>().expect("SCALE_CACHE_MB is a number") << 20;
    }
    config
}

fn append(dir: &Path, events: u64, streams: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = EventStore::open(dir, config()).unwrap();
        let started = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        let mut rss_max: f64 = 0.0;
        let mut i = 0;
        let mut batches = 0u64;
        while i < events {
            let n = BATCH.min((events - i) as usize) as u64;
            let batch: Vec<NewEvent> = (i..i + n).map(|j| event(j, streams)).collect();
            i += n;
            in_flight.push_back(store.submit(batch, ExpectedVersion::Any).await.unwrap());
            if in_flight.len() >= PIPELINE {
                in_flight.pop_front().unwrap().await.unwrap();
            }
            batches += 1;
            if batches.is_multiple_of(100) {
                rss_max = rss_max.max(proc_mib("VmRSS"));
            }
            if batches.is_multiple_of(1000) {
                eprintln!("  appended {i} events");
            }
        }
        for c in in_flight {
            c.await.unwrap();
        }
        let took = started.elapsed();
        rss_max = rss_max.max(proc_mib("VmRSS"));
        println!(
            "append: {events} events in {:.1} s = {:.0} events/s (fdatasync per commit)",
            took.as_secs_f64(),
            events as f64 / took.as_secs_f64()
        );
        println!(
            "rss while appending: max {rss_max:.0} MiB (sampled), peak {:.0} MiB",
            proc_mib("VmHWM")
        );
        // The writer thread joins when the last handle drops: the database is closed after.
        drop(store);
    });
}

fn disk(dir: &Path, events: u64) {
    let payload = events * PAYLOAD as u64;
    let total = du(dir);
    let (mut log, mut index) = (0, 0);
    for entry in std::fs::read_dir(dir.join("log")).unwrap().flatten() {
        let len = entry.metadata().map_or(0, |m| m.len());
        if entry.path().extension().is_some_and(|e| e == "log") {
            log += len;
        } else {
            index += len;
        }
    }
    let db = du(&dir.join("db")) + du(&dir.join("blobs"));
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "disk: {:.0} MiB = {:.2}x the payload ({:.0} MiB): log files {:.0} MiB ({:.2}x), \
         index runs and checkpoint {:.0} MiB, sled (metadata) {:.0} MiB, other {:.0} MiB",
        mib(total),
        total as f64 / payload as f64,
        mib(payload),
        mib(log),
        log as f64 / payload as f64,
        mib(index),
        mib(db),
        mib(total - log - index - db)
    );
}

/// How long reading every byte of the log files takes (no parsing): what an open that re-read
/// the whole log would cost at least.
fn raw_scan(dir: &Path) -> (Duration, u64) {
    use std::io::Read;
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for entry in std::fs::read_dir(dir.join("log")).unwrap().flatten() {
        if entry.path().extension().is_none_or(|e| e != "log") {
            continue;
        }
        let mut f = std::fs::File::open(entry.path()).unwrap();
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
    }
    (started.elapsed(), bytes)
}

/// In a fresh process: open the store, say how long it took and the memory it holds.
fn reopen_child(dir: &Path) {
    let (scan, bytes) = raw_scan(dir);
    println!(
        "reading every log file ({:.0} MiB, from the OS page cache if it still holds them): \
         {:.2} s",
        bytes as f64 / (1024.0 * 1024.0),
        scan.as_secs_f64()
    );
    let before = proc_mib("VmRSS");
    let started = Instant::now();
    let store = EventStore::open(dir, config()).unwrap();
    let opened = started.elapsed();
    let head = store.head().seq;
    let rss = proc_mib("VmRSS");
    let started = Instant::now();
    let mut read = 0;
    for s in 0..1000u64 {
        read += store
            .read_stream(&format!("bench/u-{}", s * 997 % 1_000_000), 0, 100)
            .unwrap()
            .len();
    }
    let streams = started.elapsed();
    println!(
        "reopen: {:.2} s to open {head} events; rss {before:.0} MiB before, {rss:.0} MiB after; \
         1000 stream reads ({read} events) in {:.1} ms",
        opened.as_secs_f64(),
        streams.as_secs_f64() * 1000.0
    );
}

/// The consent service at `events` events: ingest, disk, memory, restart, CheckConsent.
fn service(events: u64, subjects: u64) {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut env = service_env(&nats.url(), data.path(), port);
    env.insert("PRIVACY_INGEST_BATCH".into(), "1000".into());
    if let Ok(mb) = std::env::var("SCALE_CACHE_MB") {
        env.insert("PRIVACY_CACHE_MB".into(), mb);
    }
    let rt = runtime();
    let mut process = ServiceProcess::spawn("privacy-consent", &env);
    let rss_of = |p: &ServiceProcess| pid_mib(&p.pid().unwrap().to_string(), "VmRSS");
    rt.block_on(async {
        wait_serving(&url).await;
        publish_policy_v1(&url).await;
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let mut audit = audit_client(&url, Some(AUDITOR_TOKEN)).await;
        let base = head_seq(&mut audit).await;
        let started = Instant::now();
        let mut published = 0;
        while published < events {
            let n = 100_000.min(events - published);
            let envs: Vec<_> = (published..published + n)
                .map(|i| envelope(&format!("u-{}", i % subjects), granted("marketing")))
                .collect();
            publish_pipelined(&js, envs).await;
            published += n;
            eprintln!("  published {published} events");
        }
        // Polled once a second, for the checkpoints only: the full status walks every view
        // for its digest, seconds of the service's CPU at this size, and holds a snapshot of
        // the views (their memory tables and runs) for as long.
        let want = base + events;
        loop {
            let status = audit
                .projection_status(privacy_proto::v1::ProjectionStatusRequest {
                    checkpoints_only: true,
                })
                .await
                .unwrap()
                .into_inner();
            if status.head_seq >= want
                && status
                    .projections
                    .iter()
                    .all(|p| p.checkpoint == status.head_seq)
            {
                assert_eq!(status.head_seq, want, "every event stored once");
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let took = started.elapsed();
        println!(
            "service ingest: {events} consent.granted over {subjects} subjects through NATS in \
             {:.1} s = {:.0} events/s; rss {:.0} MiB",
            took.as_secs_f64(),
            events as f64 / took.as_secs_f64(),
            rss_of(&process),
        );
        // The outbox relays each stored grant to PRIVACY_EVT after its commit: how far behind
        // it was when the views caught up, and when it has relayed them all (so the restart
        // below does not find it still relaying).
        let relayed = stream_messages(&js, "PRIVACY_EVT").await;
        let (mut last, mut moved) = (relayed, Instant::now());
        while last < events {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = stream_messages(&js, "PRIVACY_EVT").await;
            if now > last {
                (last, moved) = (now, Instant::now());
            }
            assert!(
                moved.elapsed() < Duration::from_secs(120),
                "the outbox relayed nothing for 2 minutes ({last} of {events} relayed)"
            );
        }
        let all = started.elapsed();
        println!(
            "outbox: {relayed} messages in PRIVACY_EVT (for {events} grants and the policy) when \
             the views caught up; {events} {:.1} s after the first publish = {:.0} events/s",
            all.as_secs_f64(),
            events as f64 / all.as_secs_f64()
        );
    });
    let status = process.terminate(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "SIGTERM ends the service cleanly");
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let base = data.path().join("consent");
    println!(
        "service disk: events/ {:.0} MiB, vault/ {:.0} MiB",
        mib(du(&base.join("events"))),
        mib(du(&base.join("vault")))
    );

    let started = Instant::now();
    let process = ServiceProcess::spawn("privacy-consent", &env);
    rt.block_on(async {
        wait_serving(&url).await;
        let serving = started.elapsed();
        println!(
            "service restart: SERVING {:.2} s after start; rss {:.0} MiB",
            serving.as_secs_f64(),
            rss_of(&process)
        );
        let mut consent = consent_client(&url, BACKEND_TOKEN).await;
        let calls = 2000;
        // Right after SERVING; the same subjects again; then subjects not asked yet.
        let mut rounds = Vec::new();
        for (round, first) in [("first", 0), ("again", 0), ("others", calls as u64)] {
            let mut latencies = Vec::with_capacity(calls);
            let started = Instant::now();
            for i in first..first + calls as u64 {
                let begin = Instant::now();
                consent
                    .check_consent(CheckConsentRequest {
                        tenant: TENANT.into(),
                        subject_id: format!("u-{}", (i * 7919) % subjects.min(events)),
                        purpose: "marketing".into(),
                        as_of: None,
                    })
                    .await
                    .unwrap();
                latencies.push(begin.elapsed());
            }
            let stats = Stats::of(latencies, started.elapsed());
            println!(
                "CheckConsent at {events} events, concurrency 1, {round}: {}; rss {:.0} MiB",
                stats.line(),
                rss_of(&process)
            );
            rounds.push((round, stats.p50));
        }
        // The same client against a bare tonic echo server in a process of its own, as the
        // service is: what any call across processes costs here.
        let floor = echo_process_floor(calls).await;
        let ratios: Vec<_> = rounds
            .iter()
            .map(|(round, p50)| {
                format!("{round} {:.2}", p50.as_secs_f64() / floor.p50.as_secs_f64())
            })
            .collect();
        println!(
            "floor (tonic echo in a process of its own), concurrency 1: {}; ratio p50 \
             CheckConsent/floor: {}",
            floor.line(),
            ratios.join(", ")
        );
    });
}

/// Child side of [`echo_process_floor`]: serves the echo floor on a free loopback port, prints
/// its address, and exits when its standard input closes (the bench dropped it, or ended).
fn echo_child() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    runtime().block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        serve_echo(listener).await;
    });
}

/// `calls` echo calls at concurrency 1 to an echo server in a child process.
async fn echo_process_floor(calls: usize) -> Stats {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("SCALE_ECHO", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let channel = channel_to(line.trim().parse().expect("the echo child's address")).await;
    // Warm up as the service was (its catch-up and first checks), then measure.
    measure(channel.clone(), calls, 1, |c, _| echo_call(c, 64)).await;
    let started = Instant::now();
    let latencies = measure(channel, calls, 1, |c, _| echo_call(c, 64)).await;
    let stats = Stats::of(latencies, started.elapsed());
    drop(child.stdin.take());
    child.wait().unwrap();
    stats
}

fn main() {
    if std::env::var_os("SCALE_ECHO").is_some() {
        echo_child();
        return;
    }
    if let Ok(dir) = std::env::var("SCALE_REOPEN") {
        reopen_child(Path::new(&dir));
        return;
    }
    let events = env_count("SCALE_EVENTS", 1_000_000);
    let streams = env_count("SCALE_STREAMS", 1_000_000);
    if events > 0 {
        store(events, streams);
    }
    let events = env_count("SCALE_SERVICE_EVENTS", 1_000_000);
    let subjects = env_count("SCALE_SUBJECTS", 1_000_000);
    if events > 0 {
        service(events, subjects);
    }
}

fn store(events: u64, streams: u64) {
    let temp = tempfile::tempdir().unwrap();
    let dir: PathBuf = std::env::var("SCALE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| temp.path().join("store"));
    println!(
        "scale: {events} events of {PAYLOAD} bytes over {streams} streams, batches of {BATCH}"
    );
    append(&dir, events, streams);
    disk(&dir, events);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("SCALE_REOPEN", &dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the reopen process failed");
    print!("{}", String::from_utf8_lossy(&out.stdout));
}
