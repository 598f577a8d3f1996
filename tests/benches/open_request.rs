//! OpenRequest benchmark: the subject-requests service over real gRPC (each call a durable
//! `request.received`, fsynced, with its implied `request.opened` and deadlines, folded into the
//! views before the answer) beside the floor — a raw tonic echo server answering a payload the
//! size of an OpenRequest — at concurrency 1 and 64, in alternating rounds of one run. Prints
//! calls/s, p50 and p99 of both and the ratios. Targets (issue #10): at concurrency 64 ≥ 0.5× the
//! floor and ≥ 100× the domain peer's 22 requests/s (Fides 2.78 on this machine kind).
//!
//! Run: `cargo bench -p privacy-e2e --bench open_request` (BENCH_CALLS, default 4,000).

use privacy_e2e::bench_kit::{compare, echo_call, echo_floor, env_count, measure, runtime};
use privacy_e2e::*;
use privacy_proto::v1::subject_request_service_client::SubjectRequestServiceClient;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;
use prost::Message;
use tonic::transport::Channel;

/// Requests per second the domain peer creates on this machine kind (issue #10).
const PEER_PER_S: f64 = 22.0;

fn request(i: usize) -> OpenRequestRequest {
    OpenRequestRequest {
        tenant: TENANT.into(),
        subject_id: format!("u-{i}"),
        request_type: RequestType::Access as i32,
        channel: "web".into(),
        event_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    }
}

fn main() {
    let calls = env_count("BENCH_CALLS", 4_000);
    runtime().block_on(async {
        let nats = NatsServer::start();
        let data = tempfile::tempdir().unwrap();
        let svc =
            InProcess::start(privacy_subject_requests::SPEC, &nats.url(), data.path()).await;
        let echo_channel = echo_floor().await;
        let channel = tonic::transport::Endpoint::from_shared(svc.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let size = request(0).encoded_len();
        let echo = move |channel: Channel, _i: usize| echo_call(channel, size);
        let open = |channel: Channel, i: usize| async move {
            let mut c =
                SubjectRequestServiceClient::with_interceptor(channel, Bearer(Some(BACKEND_TOKEN)));
            let r = c.open_request(request(i)).await.unwrap().into_inner();
            assert!(r.request.is_some_and(|r| r.deadlines.is_some()));
        };
        measure(echo_channel.clone(), 500, 8, echo).await;
        measure(channel.clone(), 500, 8, open).await;
        for concurrency in [1, 64] {
            let n = if concurrency == 1 { calls / 4 } else { calls };
            let (floor, real) =
                compare((echo_channel.clone(), echo), (channel.clone(), open), n, concurrency)
                    .await;
            println!(
                "concurrency {concurrency:>2}: tonic floor {} | OpenRequest {}",
                floor.line(),
                real.line()
            );
            println!(
                "  ratio OpenRequest/floor: {:.3} (target at 64 ≥ 0.5); ×peer: {:.0} (target ≥ 100)",
                real.calls_per_s / floor.calls_per_s,
                real.calls_per_s / PEER_PER_S
            );
        }
        svc.stop().await;
    });
}
