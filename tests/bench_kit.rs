//! What the gRPC benchmarks share: the floor (a raw tonic echo server, no auth, no work), a
//! driver that spreads calls over concurrent tasks on one channel, and alternating rounds of the
//! floor and the real call so that drift on a shared machine hits both alike.

use std::time::{Duration, Instant};

use privacy_proto::bench::EchoMessage;
use privacy_proto::bench::echo_client::EchoClient;
use privacy_proto::bench::echo_server::{Echo, EchoServer};
use tonic::transport::Channel;

/// A count from the environment variable `name`, or `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The multi-threaded runtime a benchmark runs in.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The echo floor: answers what it is sent.
struct EchoImpl;

#[tonic::async_trait]
impl Echo for EchoImpl {
    async fn echo(
        &self,
        request: tonic::Request<EchoMessage>,
    ) -> Result<tonic::Response<EchoMessage>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }
}

/// Serves the echo floor on `listener` until the process ends (or the server fails).
pub async fn serve_echo(listener: tokio::net::TcpListener) {
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoImpl))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
        .unwrap();
}

/// A channel to a gRPC server at `addr`.
pub async fn channel_to(addr: std::net::SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Starts the echo floor on a free loopback port in this process; a channel to it.
pub async fn echo_floor() -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_echo(listener));
    channel_to(addr).await
}

/// One echo call carrying `size` bytes.
pub async fn echo_call(channel: Channel, size: usize) {
    EchoClient::new(channel)
        .echo(EchoMessage {
            payload: vec![7; size],
        })
        .await
        .unwrap();
}

/// Throughput and latency of a set of calls.
pub struct Stats {
    pub calls_per_s: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// The process's CPU time per call (every thread: client and server alike), where
    /// measured.
    pub cpu_per_call: Option<Duration>,
}

impl Stats {
    pub fn of(mut latencies: Vec<Duration>, elapsed: Duration) -> Stats {
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
        Stats {
            calls_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
            cpu_per_call: None,
        }
    }

    /// With `cpu`, the process's CPU time over `calls` calls.
    pub fn with_cpu(mut self, cpu: Duration, calls: usize) -> Stats {
        self.cpu_per_call = Some(cpu / calls.max(1) as u32);
        self
    }

    /// `<calls/s> calls/s p50 <µs> µs p99 <µs> µs`, then `cpu <µs> µs/call` where measured.
    pub fn line(&self) -> String {
        let cpu = self.cpu_per_call.map_or_else(String::new, |c| {
            format!(" cpu {:>4.0} µs/call", c.as_secs_f64() * 1e6)
        });
        format!(
            "{:>7.0} calls/s p50 {:>6.0} µs p99 {:>6.0} µs{cpu}",
            self.calls_per_s,
            self.p50.as_secs_f64() * 1e6,
            self.p99.as_secs_f64() * 1e6
        )
    }
}

/// This process's user + system CPU time so far, from `/proc/self/stat` (in clock ticks of
/// 10 ms: a round of a fraction of a second is measured to a few percent).
pub fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Runs `calls` calls of `call` spread over `concurrency` tasks sharing one channel; returns
/// every call's latency.
pub async fn measure<F, Fut>(
    channel: Channel,
    calls: usize,
    concurrency: usize,
    call: F,
) -> Vec<Duration>
where
    F: Fn(Channel, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let channel = channel.clone();
        let call = call.clone();
        let share = calls / concurrency;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for i in 0..share {
                let begin = Instant::now();
                call(channel.clone(), t * share + i).await;
                latencies.push(begin.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(calls);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// `calls` calls of the floor and of the real call at `concurrency`, in five alternating
/// rounds: (floor, real).
pub async fn compare<F, Ff, G, Gf>(
    floor: (Channel, F),
    real: (Channel, G),
    calls: usize,
    concurrency: usize,
) -> (Stats, Stats)
where
    F: Fn(Channel, usize) -> Ff + Clone + Send + 'static,
    Ff: std::future::Future<Output = ()> + Send,
    G: Fn(Channel, usize) -> Gf + Clone + Send + 'static,
    Gf: std::future::Future<Output = ()> + Send,
{
    let rounds = 5;
    let (mut floor_lat, mut real_lat) = (Vec::new(), Vec::new());
    let (mut floor_time, mut real_time) = (Duration::ZERO, Duration::ZERO);
    let (mut floor_cpu, mut real_cpu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        let cpu = process_cpu();
        floor_lat.extend(
            measure(
                floor.0.clone(),
                calls / rounds,
                concurrency,
                floor.1.clone(),
            )
            .await,
        );
        floor_time += t.elapsed();
        floor_cpu += process_cpu().saturating_sub(cpu);
        let t = Instant::now();
        let cpu = process_cpu();
        real_lat.extend(measure(real.0.clone(), calls / rounds, concurrency, real.1.clone()).await);
        real_time += t.elapsed();
        real_cpu += process_cpu().saturating_sub(cpu);
    }
    let (floor_calls, real_calls) = (floor_lat.len(), real_lat.len());
    (
        Stats::of(floor_lat, floor_time).with_cpu(floor_cpu, floor_calls),
        Stats::of(real_lat, real_time).with_cpu(real_cpu, real_calls),
    )
}
