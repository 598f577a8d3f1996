//! Observability for every binary: a `tracing` subscriber (fmt + `RUST_LOG` filter), an
//! OpenTelemetry tracer that exports over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
//! and W3C trace-context propagation through NATS headers and gRPC metadata.
//!
//! Without an endpoint no span is recorded and no trace context is passed on (recording every
//! span cost about 30% of a service's ingest rate), unless `PRIVACY_TRACE_CONTEXT=forward`
//! asks for the tracer anyway, so that trace ids travel through a service that exports nothing;
//! nothing leaves the process then either.

#![forbid(unsafe_code)]

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Setting up telemetry failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
    #[error("{0}")]
    Setting(String),
}

/// Whether spans are recorded without an exporter: `PRIVACY_TRACE_CONTEXT` unset (or empty)
/// says no, `forward` says yes.
pub fn forward_without_export(setting: Option<&str>) -> Result<bool, TelemetryError> {
    match setting.map(str::trim) {
        None | Some("") => Ok(false),
        Some("forward") => Ok(true),
        Some(other) => Err(TelemetryError::Setting(format!(
            "PRIVACY_TRACE_CONTEXT must be `forward` or unset, not {other:?}"
        ))),
    }
}

/// Flushes and shuts the tracer down when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber and propagator for a binary named `service`.
///
/// `RUST_LOG` sets what is logged (default `info`); traces record every `info` span whatever
/// it says (the spans that follow an event across services are `info` spans).
/// `OTEL_EXPORTER_OTLP_ENDPOINT` turns on the tracer and OTLP export (the `OTEL_BSP_*` variables
/// tune its batching); `PRIVACY_TRACE_CONTEXT=forward` turns on the tracer without export;
/// `OTEL_SERVICE_NAME` overrides the service name.
///
/// With an endpoint, call it inside a Tokio runtime context (`Runtime::enter`) and drop the
/// guard while that runtime still runs: the exporter's gRPC channel lives on it.
pub fn init(service: &str) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let exporting = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|v| !v.is_empty());
    let forward = forward_without_export(std::env::var("PRIVACY_TRACE_CONTEXT").ok().as_deref())?;
    let tracing = exporting || forward;
    if exporting {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(name);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(true)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter),
        )
        // Traces do not depend on how much is logged: `RUST_LOG=warn` keeps them whole.
        .with(tracing.then(|| {
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
        }))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if exporting {
        tracing::info!("exporting traces over OTLP");
    }
    Ok(TelemetryGuard { provider })
}

/// Installs only the propagator (for tests and libraries that need trace headers without a
/// global subscriber).
pub fn init_propagator() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

struct NatsHeaders<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct NatsHeadersRef<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's trace context (`traceparent`, `tracestate`) into NATS headers.
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut NatsHeaders(headers))
    });
}

/// Reads a trace context from NATS headers (an empty context when there is none).
pub fn extract_nats(headers: Option<&async_nats::HeaderMap>) -> Context {
    match headers {
        Some(h) => {
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&NatsHeadersRef(h)))
        }
        None => Context::new(),
    }
}

struct GrpcMetadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for GrpcMetadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct GrpcMetadataRef<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for GrpcMetadataRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Writes the current span's trace context into outgoing gRPC metadata.
pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut GrpcMetadata(metadata))
    });
}

/// Reads a trace context from incoming gRPC metadata (an empty context when there is no
/// `traceparent`: the W3C propagator, the only one installed, finds nothing then, and most
/// calls carry none — this spares them the global propagator's lock).
pub fn extract_grpc(metadata: &tonic::metadata::MetadataMap) -> Context {
    if !metadata.contains_key("traceparent") {
        return Context::new();
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&GrpcMetadataRef(metadata)))
}

/// Makes `span` a child of the remote context `cx` (when `cx` carries a valid span).
pub fn set_parent(span: &tracing::Span, cx: Context) {
    use opentelemetry::trace::TraceContextExt;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace context of the step that committed each event, kept until the outbox relay
/// publishes it, so that the published message continues the trace of the event that caused it.
///
/// Keyed by (tenant, event id), which are known before the commit, so a link is in place before
/// the relay can see the event. Bounded: past [`TraceLinks::CAPACITY`] links the oldest go (an
/// event published long after its commit, e.g. after a restart, starts a trace of its own).
#[derive(Default)]
pub struct TraceLinks {
    inner: std::sync::Mutex<Links>,
}

#[derive(Default)]
struct Links {
    by_event: std::collections::HashMap<(String, String), Context>,
    order: std::collections::VecDeque<(String, String)>,
}

impl TraceLinks {
    /// How many links are kept at most.
    pub const CAPACITY: usize = 8192;

    /// Remembers `span` as the cause of the event `(scope, event_id)`, when the span is
    /// recorded (has a valid trace context).
    pub fn remember(&self, scope: &str, event_id: &str, span: &tracing::Span) {
        use opentelemetry::trace::TraceContextExt;
        if span.is_disabled() {
            return;
        }
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return;
        }
        let key = (scope.to_owned(), event_id.to_owned());
        let mut links = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if links.by_event.insert(key.clone(), cx).is_none() {
            links.order.push_back(key);
        }
        while links.order.len() > Self::CAPACITY {
            if let Some(old) = links.order.pop_front() {
                links.by_event.remove(&old);
            }
        }
    }

    /// Takes the remembered cause of `(scope, event_id)`, if any.
    pub fn take(&self, scope: &str, event_id: &str) -> Option<Context> {
        let mut links = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // The key stays in `order` until it is evicted; removing it from the map is enough.
        links
            .by_event
            .remove(&(scope.to_owned(), event_id.to_owned()))
    }

    /// How many links are held.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_event
            .len()
    }

    /// Whether no link is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tonic interceptor that parents the request's handling on the caller's trace.
#[derive(Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        set_parent(&tracing::Span::current(), extract_grpc(request.metadata()));
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tracer_without_an_exporter_is_asked_for_by_name() {
        assert!(!forward_without_export(None).unwrap());
        assert!(!forward_without_export(Some("")).unwrap());
        assert!(forward_without_export(Some("forward")).unwrap());
        let err = forward_without_export(Some("yes")).unwrap_err().to_string();
        assert!(
            err.contains("PRIVACY_TRACE_CONTEXT") && err.contains("forward"),
            "{err}"
        );
    }

    #[test]
    fn trace_links_hand_each_event_its_cause_once_and_stay_bounded() {
        use opentelemetry::trace::TraceContextExt;
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let links = TraceLinks::default();
            // Nothing is kept for a span that records nothing.
            links.remember("acme", "e-0", &tracing::Span::none());
            assert!(links.is_empty());

            let span = tracing::info_span!("store");
            links.remember("acme", "e-1", &span);
            let want = span.context().span().span_context().clone();
            assert!(
                links.take("other", "e-1").is_none(),
                "tenants do not share links"
            );
            let got = links.take("acme", "e-1").expect("the link");
            assert_eq!(got.span().span_context(), &want);
            assert!(links.take("acme", "e-1").is_none(), "taken once");

            for i in 0..TraceLinks::CAPACITY + 10 {
                links.remember("acme", &format!("e-{i}"), &span);
            }
            assert_eq!(links.len(), TraceLinks::CAPACITY);
            assert!(links.take("acme", "e-0").is_none(), "the oldest went first");
            assert!(
                links
                    .take("acme", &format!("e-{}", TraceLinks::CAPACITY + 9))
                    .is_some()
            );
        });
    }

    #[test]
    fn trace_context_round_trips_through_nats_headers_and_grpc_metadata() {
        init_propagator();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let cx = extract_nats(Some(&headers));
        use opentelemetry::trace::TraceContextExt;
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut md = tonic::metadata::MetadataMap::new();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut GrpcMetadata(&mut md))
        });
        let back = extract_grpc(&md);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        // Without `traceparent` there is no parent.
        md.remove("traceparent");
        assert!(!extract_grpc(&md).span().span_context().is_valid());
        let mut out = async_nats::HeaderMap::new();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&back, &mut NatsHeaders(&mut out))
        });
        assert_eq!(
            out.get("traceparent").map(|v| v.as_str()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }
}
