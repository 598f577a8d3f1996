//! The `main` of every service binary: `serve` (default) runs the service until SIGTERM/SIGINT
//! and exits 0 after a clean stop; `healthcheck` exits 0 when the local service answers SERVING.

use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::ServiceConfig;
use crate::spec::ServiceSpec;
use crate::start::start;

/// The `main` of every service binary: `serve` (default) or `healthcheck`.
pub fn main(spec: ServiceSpec) -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        None | Some("serve") => serve(spec),
        Some("healthcheck") => healthcheck(spec),
        Some("-h" | "--help" | "help") => {
            println!(
                "privacy-{name}: the {name} service of Privacy Ledger\n\n\
                 usage: privacy-{name} [serve|healthcheck]\n\n\
                 Configuration is PRIVACY_* environment variables (see README):\n  {keys}\n\
                 Traces: OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, PRIVACY_TRACE_CONTEXT; \
                 logs: RUST_LOG.\n\
                 Default gRPC address 127.0.0.1:{port}.",
                name = spec.name,
                port = spec.default_port,
                keys = crate::config::KEYS.join(", "),
            );
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("unknown command {other:?}; try --help");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn serve(spec: ServiceSpec) -> ExitCode {
    let runtime = runtime();
    // The OTLP exporter's gRPC channel lives on the runtime: made inside it, flushed (when the
    // guard drops, at the end) while it still runs.
    let telemetry = {
        let _inside = runtime.enter();
        privacy_telemetry::init(&format!("privacy-{}", spec.name))
    };
    let telemetry = match telemetry {
        Ok(g) => g,
        Err(e) => {
            eprintln!("telemetry: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match ServiceConfig::from_env(spec.default_port) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let service = match start(spec, config, shutdown.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: finishing the batch in hand");
            shutdown.cancel();
        });
        match service.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    });
    // The last spans leave before the runtime that carries them stops.
    drop(telemetry);
    drop(runtime);
    code
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Exits 0 when the service's gRPC health endpoint answers SERVING.
fn healthcheck(spec: ServiceSpec) -> ExitCode {
    let config = match ServiceConfig::from_env(spec.default_port) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut addr = config.grpc_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{addr}");
    runtime().block_on(async move {
        let check = async {
            let channel = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            let resp = client
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(resp.into_inner().status)
        };
        match tokio::time::timeout(Duration::from_secs(5), check).await {
            Ok(Ok(status))
                if status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
            {
                println!("{url}: SERVING");
                ExitCode::SUCCESS
            }
            Ok(Ok(status)) => {
                eprintln!("{url}: not serving (status {status})");
                ExitCode::FAILURE
            }
            Ok(Err(e)) => {
                eprintln!("{url}: {e}");
                ExitCode::FAILURE
            }
            Err(_) => {
                eprintln!("{url}: no answer within 5 s");
                ExitCode::FAILURE
            }
        }
    })
}
