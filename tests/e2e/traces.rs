//! One user event is one trace across processes: the client SDK's `publish` span (here, in the
//! test), then in the consent process `ingest` → `store` → `outbox.publish`, then in the
//! retention process the `react` span of the consumer that takes consent's event — each the
//! child of the one before. The services export over OTLP/gRPC to a collector this test runs,
//! exactly as they would to Jaeger or an OpenTelemetry Collector.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use privacy_e2e::*;
use privacy_proto::v1::ConsentWithdrawn;
use privacy_testkit::{NatsServer, ServiceProcess, free_port};
use tracing_subscriber::layer::SubscriberExt;

/// A span as the collector received it: the exporting service, and the span.
type Received = (String, Span);

/// An OTLP trace collector that keeps what it is sent.
struct Collector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                kept.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The test's own finished spans (the backend's side of the trace).
#[derive(Debug, Clone, Default)]
struct Finished(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Finished {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.0.lock().unwrap().extend(batch);
        std::future::ready(Ok(()))
    }
}

/// The single span named `name` that `service` sent in `trace` (panics, showing the trace,
/// when there is not exactly one).
fn only<'a>(trace: &'a [Received], service: &str, name: &str) -> &'a Span {
    let found: Vec<_> = trace
        .iter()
        .filter(|(svc, s)| svc == service && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {service}/{name} span expected in the trace; it has {:?}",
        trace
            .iter()
            .map(|(svc, s)| format!("{svc}/{}", s.name))
            .collect::<Vec<_>>()
    );
    &found[0].1
}

// One thread: the test's subscriber (set for this thread only) sees the client SDK's span.
#[tokio::test(flavor = "current_thread")]
async fn one_user_event_is_one_trace_from_the_publisher_to_another_service() {
    privacy_telemetry::init_propagator();
    let finished = Finished::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(finished.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("backend")));
    let _default = tracing::subscriber::set_default(subscriber);

    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let collector_port = free_port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(received.clone())))
            .serve(([127, 0, 0, 1], collector_port).into()),
    );

    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut processes = Vec::new();
    let mut urls = Vec::new();
    for name in ["consent", "retention"] {
        let port = free_port();
        let mut env = service_env(&nats.url(), data.path(), port);
        env.insert(
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://127.0.0.1:{collector_port}"),
        );
        env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into());
        processes.push(ServiceProcess::spawn(&format!("privacy-{name}"), &env));
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    for url in &urls {
        wait_serving(url).await;
    }

    let client = privacy_client::PrivacyClient::connect(&nats.url(), "settings-page")
        .await
        .unwrap();
    client
        .publish(
            TENANT,
            "u-traced",
            ConsentWithdrawn {
                purposes: vec!["marketing".into()],
                method: "settings".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let publish = finished
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.name == "publish")
        .cloned()
        .expect("the client SDK opens a publish span");
    let trace_id = publish.span_context.trace_id().to_bytes().to_vec();

    // The services export in batches, each on its own schedule: wait until every span the
    // checks below need arrived (retention's reaction can be exported before the consent
    // outbox's publish span that led to it).
    let needed = [
        ("privacy-consent", "ingest"),
        ("privacy-consent", "store"),
        ("privacy-consent", "outbox.publish"),
        ("privacy-retention", "react"),
    ];
    let trace = eventually("the trace to reach retention's reaction", || {
        let received = received.clone();
        let trace_id = trace_id.clone();
        async move {
            let trace: Vec<Received> = received
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s)| s.trace_id == trace_id)
                .cloned()
                .collect();
            let arrived = |(service, name): &(&str, &str)| {
                trace
                    .iter()
                    .any(|(svc, s)| svc == service && s.name == *name)
            };
            if needed.iter().all(arrived) {
                Ok(trace)
            } else {
                Err(format!(
                    "received so far in the trace: {:?}",
                    trace.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
                ))
            }
        }
    })
    .await;

    let ingest = only(&trace, "privacy-consent", "ingest");
    let store = only(&trace, "privacy-consent", "store");
    let outbox = only(&trace, "privacy-consent", "outbox.publish");
    // The consumer is another process; what it records in turn continues the trace.
    let react = only(&trace, "privacy-retention", "react");
    let hops = [
        (
            "ingest ← publish",
            &ingest.parent_span_id,
            publish.span_context.span_id().to_bytes().to_vec(),
        ),
        (
            "store ← ingest",
            &store.parent_span_id,
            ingest.span_id.clone(),
        ),
        (
            "outbox ← store",
            &outbox.parent_span_id,
            store.span_id.clone(),
        ),
        (
            "react ← outbox",
            &react.parent_span_id,
            outbox.span_id.clone(),
        ),
    ];
    for (hop, parent, expected) in hops {
        assert_eq!(
            parent, &expected,
            "{hop}: the span's parent is the hop before"
        );
    }

    for mut p in processes {
        assert!(p.terminate(Duration::from_secs(20)).unwrap().success());
    }
}
