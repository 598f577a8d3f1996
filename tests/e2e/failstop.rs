//! Loud failure (DESIGN §5.11): a failed commit, a panicking projection fold and a panicking
//! ingest loop each make the service NOT_SERVING and stop it with a fatal error (the binary's
//! exit code is then non-zero), instead of living on with a dead part.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use privacy_e2e::*;
use privacy_event_store::{Projection, RecordedEvent, StoreError, ViewWriter};
use privacy_proto::Rejection;
use privacy_proto::v1::Envelope;
use privacy_service_kit::{
    Derived, DomainService, ServiceContext, ServiceSpec, StartError, Tenant,
};
use privacy_testkit::NatsServer;
use prost::Message;
use tonic_health::pb::health_check_response::ServingStatus;

/// A projection whose fold panics on the subject `boom-view`.
struct Boom;

impl Projection for Boom {
    fn name(&self) -> &'static str {
        "boom"
    }
    fn version(&self) -> u32 {
        1
    }
    fn apply(&self, event: &RecordedEvent, _: &mut ViewWriter<'_>) -> Result<(), StoreError> {
        assert!(
            !event.stream.ends_with("/boom-view"),
            "injected panic in a projection fold"
        );
        Ok(())
    }
}

fn with_boom_projection() -> Vec<Arc<dyn Projection>> {
    let mut projections = (privacy_consent::SPEC.projections)();
    projections.push(Arc::new(Boom));
    projections
}

/// Consent's domain, except that its check panics on the subject `boom-check`.
struct PanickyCheck(Arc<dyn DomainService>);

impl DomainService for PanickyCheck {
    fn check(&self, tenant: &Tenant, envelope: &Envelope) -> Result<(), Rejection> {
        assert!(
            envelope.subject_id != "boom-check",
            "injected panic in a domain check"
        );
        self.0.check(tenant, envelope)
    }
    fn derive(&self, tenant: &Tenant, envelope: &Envelope) -> Vec<Derived> {
        self.0.derive(tenant, envelope)
    }
    fn routes(&self, ctx: &ServiceContext, routes: &mut tonic::service::RoutesBuilder) {
        self.0.routes(ctx, routes)
    }
}

fn panicky_domain(ctx: &ServiceContext) -> Arc<dyn DomainService> {
    Arc::new(PanickyCheck((privacy_consent::SPEC.domain)(ctx)))
}

/// Waits until health stops saying SERVING (NOT_SERVING, or the server already gone).
async fn wait_not_serving(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = async {
            let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let resp = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .ok()?;
            Some(resp.into_inner().status)
        }
        .await;
        if status != Some(ServingStatus::Serving as i32) {
            return;
        }
        assert!(Instant::now() < deadline, "{url} still SERVING after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the service to stop by itself and returns its fatal reason.
async fn fatal_reason(svc: InProcess) -> String {
    let url = svc.url();
    wait_not_serving(&url).await;
    match tokio::time::timeout(Duration::from_secs(30), svc.service.wait()).await {
        Ok(Err(StartError::Fatal(reason))) => reason,
        Ok(other) => panic!("expected a fatal stop, got {other:?}"),
        Err(_) => panic!("the failed service did not stop within 30 s"),
    }
}

async fn publish(js: &jetstream::Context, subject: &str) {
    js.send_publish(
        "privacy.in.vn-apihub.consent.granted".to_string(),
        PublishMessage::build().payload(
            envelope(subject, granted("marketing"))
                .encode_to_vec()
                .into(),
        ),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_stops_the_service_loudly() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    publish_policy_v1(&svc.url()).await;
    svc.service.store.inject_commit_failure();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    publish(&js, "u-1").await;
    let reason = fatal_reason(svc).await;
    assert!(
        reason.contains("event store") && reason.contains("injected commit failure"),
        "{reason}"
    );
    // A restart recovers: the event that failed to commit is redelivered and stored.
    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    let mut audit = audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await;
    wait_for_head(&mut audit, 2, Duration::from_secs(30)).await;
    svc.stop().await;
}

/// Starts `spec`, publishes the policy and one grant for `subject` on NATS, and returns the
/// fatal reason the service stopped with.
async fn reason_after_grant(spec: ServiceSpec, subject: &str) -> String {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(spec, &nats.url(), data.path()).await;
    publish_policy_v1(&svc.url()).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    publish(&js, subject).await;
    fatal_reason(svc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_projection_stops_the_service_loudly() {
    let spec = ServiceSpec {
        projections: with_boom_projection,
        ..privacy_consent::SPEC
    };
    let reason = reason_after_grant(spec, "boom-view").await;
    assert!(
        reason.contains("projector panicked") && reason.contains("injected panic"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_ingest_loop_stops_the_service_loudly() {
    let spec = ServiceSpec {
        domain: panicky_domain,
        ..privacy_consent::SPEC
    };
    let reason = reason_after_grant(spec, "boom-check").await;
    assert!(
        reason.contains("ingest loop") && reason.contains("injected panic"),
        "{reason}"
    );
}
