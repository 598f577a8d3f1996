//! Outbox ordering benchmark, for a decision not yet taken: JetStream publishes one at a time
//! with their acks (as the outbox relay publishes today) against publishes pipelined W at a
//! time where each names its predecessor in `Nats-Expected-Last-Msg-Id`, on a stream only this
//! publisher writes to (that header is checked against the whole stream's last message, so it
//! needs one stream per publishing service). Prints both rates and their ratio, then checks —
//! and fails loudly if the server does otherwise — what makes the pipelined way safe: after a
//! gap (an event whose publish was lost) every later event in flight is refused, so none
//! overtakes it; a retried event the stream already holds is answered as a duplicate; and
//! publishing resumes in order from the gap.
//!
//! Run: `cargo bench -p privacy-e2e --bench outbox_order` (BENCH_EVENTS, default 50,000).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage, stream};
use privacy_e2e::bench_kit::{env_count, runtime};
use privacy_testkit::NatsServer;

/// Event `seq` of one service's outbox: the relay's headers and a 300-byte body.
fn event(seq: u64, expect_previous: bool) -> PublishMessage {
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/protobuf");
    headers.insert("Privacy-Seq", seq.to_string().as_str());
    if expect_previous && seq > 1 {
        headers.insert("Nats-Expected-Last-Msg-Id", id(seq - 1).as_str());
    }
    PublishMessage::build()
        .payload(vec![7u8; 300].into())
        .headers(headers)
        .message_id(id(seq))
}

fn id(seq: u64) -> String {
    format!("consent:bench:{seq}")
}

/// A new stream `name` taking `<name>.>` (file storage, the services' duplicate window).
async fn fresh(js: &jetstream::Context, name: &str) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn publish(js: &jetstream::Context, stream: &str, msg: PublishMessage) -> PublishAckFuture {
    js.send_publish(format!("{stream}.evt"), msg).await.unwrap()
}

/// Events 1..=n one at a time, each after the previous one's ack; events/s.
async fn one_at_a_time(js: &jetstream::Context, n: u64) -> f64 {
    fresh(js, "ONE").await;
    let start = Instant::now();
    for seq in 1..=n {
        publish(js, "ONE", event(seq, false)).await.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Events 1..=n with up to `window` unacknowledged, each expecting its predecessor; events/s.
async fn pipelined(js: &jetstream::Context, n: u64, window: usize) -> f64 {
    let name = format!("PIPE{window}");
    fresh(js, &name).await;
    let start = Instant::now();
    let mut in_flight = VecDeque::with_capacity(window);
    for seq in 1..=n {
        in_flight.push_back(publish(js, &name, event(seq, true)).await);
        if in_flight.len() >= window {
            in_flight.pop_front().unwrap().await.unwrap();
        }
    }
    for ack in in_flight {
        ack.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// What the pipelined way promises, checked against the server.
async fn check_order_guard(js: &jetstream::Context) {
    let mut stream = fresh(js, "GAP").await;
    // Event 11's publish is lost; 12..=20 are already in flight behind it.
    let mut acks = Vec::new();
    for seq in (1..=10).chain(12..=20) {
        acks.push((seq, publish(js, "GAP", event(seq, true)).await));
    }
    for (seq, ack) in acks {
        match (seq, ack.await) {
            (..=10, Ok(a)) => assert_eq!(a.sequence, seq, "event {seq} stored out of place"),
            (..=10, Err(e)) => panic!("event {seq} refused: {e}"),
            (_, Ok(a)) => panic!(
                "event {seq} overtook the lost 11 (stored at {})",
                a.sequence
            ),
            (_, Err(e)) => assert!(
                e.to_string().contains("wrong last msg ID"),
                "event {seq} refused for another reason: {e}"
            ),
        }
    }
    assert_eq!(stream.info().await.unwrap().state.messages, 10);
    // An event whose ack was lost is published again: the stream answers it as a duplicate.
    let again = publish(js, "GAP", event(10, true)).await.await.unwrap();
    assert!(again.duplicate && again.sequence == 10, "{again:?}");
    // The relay resumes at the gap, in order, pipelined again.
    let (a11, a12) = (
        publish(js, "GAP", event(11, true)).await,
        publish(js, "GAP", event(12, true)).await,
    );
    assert_eq!(
        (a11.await.unwrap().sequence, a12.await.unwrap().sequence),
        (11, 12)
    );
    assert_eq!(stream.info().await.unwrap().state.messages, 12);
    println!(
        "order guard: a lost event's followers were all refused, a retried stored event was a \
         duplicate, and publishing resumed in order"
    );
}

fn main() {
    let n = env_count("BENCH_EVENTS", 50_000) as u64;
    runtime().block_on(async {
        let nats = NatsServer::start();
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        check_order_guard(&js).await;
        let one = one_at_a_time(&js, n).await;
        println!("one at a time (the relay today):              {one:>8.0} events/s");
        for window in [16, 64, 256] {
            let rate = pipelined(&js, n, window).await;
            println!(
                "pipelined, {window:>3} in flight, expected last id: {rate:>8.0} events/s ({:.1}×)",
                rate / one
            );
        }
    });
}
