//! Helpers shared by the end-to-end tests and the benchmark: start services in-process on a free
//! port against a test NATS, call them over real gRPC with a role's token, and build events.

#![forbid(unsafe_code)]

pub mod bench_kit;
pub mod door_fuzz;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use privacy_proto::v1::audit_service_client::AuditServiceClient;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_service_kit::{RunningService, ServiceConfig, ServiceSpec};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const OPERATOR_TOKEN: &str = "test-operator-token";
pub const AUDITOR_TOKEN: &str = "test-auditor-token";
pub const BACKEND_TOKEN: &str = "test-backend-token";
/// Tokens of each role bound to [`TENANT`] only.
pub const TENANT_OPERATOR_TOKEN: &str = "test-vn-operator-token";
pub const TENANT_AUDITOR_TOKEN: &str = "test-vn-auditor-token";
pub const TENANT_BACKEND_TOKEN: &str = "test-vn-backend-token";
/// A tenant of `examples/tenants`.
pub const TENANT: &str = "vn-apihub";

/// The example tenants shipped in the repository.
pub fn tenants_dir() -> PathBuf {
    privacy_testkit::workspace_root().join("examples/tenants")
}

/// The `PRIVACY_*` environment of a service under test.
pub fn service_env(nats_url: &str, data_dir: &Path, grpc_port: u16) -> BTreeMap<String, String> {
    [
        ("PRIVACY_NATS_URL", nats_url.to_owned()),
        ("PRIVACY_DATA_DIR", data_dir.display().to_string()),
        ("PRIVACY_TENANTS_DIR", tenants_dir().display().to_string()),
        ("PRIVACY_GRPC_ADDR", format!("127.0.0.1:{grpc_port}")),
        (
            "PRIVACY_TOKENS",
            format!(
                "operator:*:{OPERATOR_TOKEN},auditor:*:{AUDITOR_TOKEN},backend:*:{BACKEND_TOKEN},\
                 operator:{TENANT}:{TENANT_OPERATOR_TOKEN},auditor:{TENANT}:{TENANT_AUDITOR_TOKEN},\
                 backend:{TENANT}:{TENANT_BACKEND_TOKEN}"
            ),
        ),
        ("PRIVACY_PEER_TOKEN", BACKEND_TOKEN.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A service started inside the test process.
pub struct InProcess {
    pub service: RunningService,
    pub shutdown: CancellationToken,
}

impl InProcess {
    /// Starts `spec` on a free port with data under `data_dir`.
    pub async fn start(spec: ServiceSpec, nats_url: &str, data_dir: &Path) -> InProcess {
        InProcess::start_with(spec, nats_url, data_dir, &[]).await
    }

    /// Starts `spec` with `extra` `PRIVACY_*` settings over the test environment.
    pub async fn start_with(
        spec: ServiceSpec,
        nats_url: &str,
        data_dir: &Path,
        extra: &[(&str, &str)],
    ) -> InProcess {
        let mut env = service_env(nats_url, data_dir, 0);
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let config =
            ServiceConfig::from_map(&env, spec.default_port).expect("test configuration is valid");
        let shutdown = CancellationToken::new();
        let service = privacy_service_kit::start(spec, config, shutdown.clone())
            .await
            .expect("service starts");
        wait_serving(&format!("http://{}", service.grpc_addr)).await;
        InProcess { service, shutdown }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.service.grpc_addr)
    }

    /// Graceful stop: cancel, wait, flush.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.service.wait().await.expect("clean shutdown");
    }
}

/// Waits until the gRPC health endpoint at `url` answers SERVING.
pub async fn wait_serving(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
        {
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            if let Ok(resp) = client
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                && resp.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not become SERVING within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds a bearer token to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<&'static str>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Ok(req)
    }
}

pub type Audit = AuditServiceClient<InterceptedService<Channel, Bearer>>;

/// A channel to the gRPC server at `url`.
pub async fn connect(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("gRPC connects")
}

/// An AuditService client at `url` calling with `token`.
pub async fn audit_client(url: &str, token: Option<&'static str>) -> Audit {
    AuditServiceClient::with_interceptor(connect(url).await, Bearer(token))
}

/// A SubjectRequestService client calling with a role's token.
pub type Requests = privacy_proto::v1::subject_request_service_client::SubjectRequestServiceClient<
    InterceptedService<Channel, Bearer>,
>;

/// A SubjectRequestService client at `url` calling with `token`.
pub async fn requests_client(url: &str, token: &'static str) -> Requests {
    privacy_proto::v1::subject_request_service_client::SubjectRequestServiceClient::with_interceptor(
        connect(url).await,
        Bearer(Some(token)),
    )
}

/// A RetentionService client calling with a role's token.
pub type Retention = privacy_proto::v1::retention_service_client::RetentionServiceClient<
    InterceptedService<Channel, Bearer>,
>;

/// A RetentionService client at `url` calling with `token`.
pub async fn retention_client(url: &str, token: &'static str) -> Retention {
    privacy_proto::v1::retention_service_client::RetentionServiceClient::with_interceptor(
        connect(url).await,
        Bearer(Some(token)),
    )
}

/// A DisclosureLogService client calling with a role's token.
pub type Disclosures = privacy_proto::v1::disclosure_log_service_client::DisclosureLogServiceClient<
    InterceptedService<Channel, Bearer>,
>;

/// A DisclosureLogService client at `url` calling with `token`.
pub async fn disclosures_client(url: &str, token: &'static str) -> Disclosures {
    privacy_proto::v1::disclosure_log_service_client::DisclosureLogServiceClient::with_interceptor(
        connect(url).await,
        Bearer(Some(token)),
    )
}

/// Calls `probe` every 25 ms until it answers `Ok` (at most 20 s), and returns that; panics
/// with `what` and the last `Err` otherwise. For state another task reaches on its own time.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what} within 20 s; last: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A ConsentService client calling with a role's token.
pub type Consent = privacy_proto::v1::consent_service_client::ConsentServiceClient<
    InterceptedService<Channel, Bearer>,
>;

/// A ConsentService client at `url` calling with `token`.
pub async fn consent_client(url: &str, token: &'static str) -> Consent {
    privacy_proto::v1::consent_service_client::ConsentServiceClient::with_interceptor(
        connect(url).await,
        Bearer(Some(token)),
    )
}

/// Every stored event of a service, in order.
pub async fn all_events(audit: &mut Audit) -> Vec<StoredEvent> {
    let mut stream = audit
        .stream_events(StreamEventsRequest {
            from_seq: 1,
            ..Default::default()
        })
        .await
        .expect("StreamEvents")
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = stream.message().await.expect("stream item") {
        out.push(e);
    }
    out
}

/// The service's committed head (0 while it does not answer).
pub async fn head_seq(audit: &mut Audit) -> u64 {
    audit
        .projection_status(ProjectionStatusRequest {
            checkpoints_only: true,
        })
        .await
        .map(|r| r.into_inner().head_seq)
        .unwrap_or(0)
}

/// Asserts that `stored` (every stored event, in order) holds `total` events numbered without a
/// gap, and that VerifyChain checks all of them and finds the chain intact.
pub async fn assert_log_intact(audit: &mut Audit, stored: &[StoredEvent], total: u64) {
    assert_eq!(stored.len() as u64, total, "events stored");
    assert!(
        stored
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1),
        "gap-free"
    );
    let chain = audit
        .verify_chain(VerifyChainRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(chain.ok, "{chain:?}");
    assert_eq!(chain.events_checked, total);
}

/// Waits until the service's head reaches `seq` and its projections have caught up.
pub async fn wait_for_head(audit: &mut Audit, seq: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let status = audit
            .projection_status(ProjectionStatusRequest {
                checkpoints_only: true,
            })
            .await
            .map(|r| r.into_inner());
        if let Ok(s) = &status
            && s.head_seq >= seq
            && s.projections.iter().all(|p| p.checkpoint == s.head_seq)
        {
            return s.head_seq;
        }
        if Instant::now() > deadline {
            panic!("head did not reach {seq} within {timeout:?}: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A valid envelope of `payload` for `subject` of the test tenant, with a fresh id.
pub fn envelope(subject: &str, payload: Payload) -> Envelope {
    let event_type = privacy_proto::EventType::of_payload(&payload)
        .expect("a user event")
        .as_str()
        .to_owned();
    Envelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type,
        schema_version: 1,
        tenant: TENANT.into(),
        subject_id: subject.into(),
        occurred_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        source: "e2e".into(),
        payload: Some(payload),
        ..Default::default()
    }
}

/// A `consent.granted` payload for one purpose.
pub fn granted(purpose: &str) -> Payload {
    Payload::ConsentGranted(ConsentGranted {
        purposes: vec![purpose.into()],
        policy_version: "v1".into(),
        method: ConsentMethod::UntickedCheckbox as i32,
        expressed_by: ExpressedBy::Subject as i32,
        evidence: [(
            "ip".to_string(),
            PersonalValue {
                value: Some(personal_value::Value::Clear("203.0.113.7".into())),
            },
        )]
        .into(),
        ..Default::default()
    })
}

/// A `data.collected` payload (retention's event).
pub fn collected() -> Payload {
    Payload::DataCollected(DataCollected {
        category: "contact".into(),
        purpose: "provide_service".into(),
        system: "accounts".into(),
        location: "users table".into(),
        ..Default::default()
    })
}

/// A `data.disclosed` payload: contact data to a processor in Vietnam under a contract.
pub fn disclosed_to(recipient: &str) -> Payload {
    Payload::DataDisclosed(DataDisclosed {
        recipient: recipient.into(),
        recipient_role: RecipientRole::Processor as i32,
        country: "VN".into(),
        categories: vec!["contact".into()],
        legal_basis: LegalBasis::Contract as i32,
        system: "billing".into(),
        ..Default::default()
    })
}

/// Opens a request of type `t` for `subject` of the test tenant over the web channel, with a
/// fresh idempotency key.
pub async fn open_request(c: &mut Requests, subject: &str, t: RequestType) -> SubjectRequest {
    c.open_request(OpenRequestRequest {
        tenant: TENANT.into(),
        subject_id: subject.into(),
        request_type: t as i32,
        channel: "web".into(),
        event_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    })
    .await
    .expect("OpenRequest")
    .into_inner()
    .request
    .expect("the opened request")
}

/// The four services in-process against one NATS, their data under one folder.
pub struct Stack {
    pub consent: InProcess,
    pub requests: InProcess,
    pub retention: InProcess,
    pub disclosures: InProcess,
}

impl Stack {
    pub async fn start(nats_url: &str, data_dir: &Path) -> Stack {
        Stack {
            consent: InProcess::start(privacy_consent::SPEC, nats_url, data_dir).await,
            requests: InProcess::start(privacy_subject_requests::SPEC, nats_url, data_dir).await,
            retention: InProcess::start(privacy_retention::SPEC, nats_url, data_dir).await,
            disclosures: InProcess::start(privacy_disclosure_log::SPEC, nats_url, data_dir).await,
        }
    }

    /// Each service's name and URL, in DESIGN §7's order.
    pub fn urls(&self) -> [(&'static str, String); 4] {
        [
            ("consent", self.consent.url()),
            ("subject-requests", self.requests.url()),
            ("retention", self.retention.url()),
            ("disclosure-log", self.disclosures.url()),
        ]
    }

    pub async fn stop(self) {
        for svc in [
            self.consent,
            self.requests,
            self.retention,
            self.disclosures,
        ] {
            svc.stop().await;
        }
    }
}

/// Publishes `env` as protobuf on its tenant's subject with `Nats-Msg-Id = event_id`, and waits
/// for JetStream's ack.
pub async fn publish_acked(js: &async_nats::jetstream::Context, env: &Envelope) {
    use prost::Message;
    js.send_publish(
        format!("privacy.in.{}.{}", env.tenant, env.event_type),
        async_nats::jetstream::message::PublishMessage::build()
            .payload(env.encode_to_vec().into())
            .message_id(&env.event_id),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Messages `PRIVACY_IN` holds (user events some consumer has yet to store).
pub async fn in_stream_messages(js: &async_nats::jetstream::Context) -> u64 {
    stream_messages(js, "PRIVACY_IN").await
}

/// Messages a JetStream stream holds.
pub async fn stream_messages(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

/// Publishes policy version `v1` of the test tenant, in force since yesterday, through the
/// consent service at `url` (consent grants must name the version in force).
pub async fn publish_policy_v1(url: &str) {
    use privacy_proto::v1::consent_service_client::ConsentServiceClient;
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("gRPC connects");
    let mut client = ConsentServiceClient::with_interceptor(channel, Bearer(Some(OPERATOR_TOKEN)));
    let yesterday = std::time::SystemTime::now() - Duration::from_secs(86_400);
    let request = PublishPolicyRequest {
        tenant: TENANT.into(),
        version: "v1".into(),
        notice_hash: "sha256:test".into(),
        effective_at: Some(yesterday.into()),
        ..Default::default()
    };
    match client.publish_policy(request).await {
        Ok(_) => {}
        Err(e) if e.code() == tonic::Code::AlreadyExists => {}
        Err(e) => panic!("PublishPolicy: {e}"),
    }
}

/// Rebuilds every projection of the service at `url` and checks each equals the live view
/// (digest), having folded `total` events.
pub async fn assert_rebuild_equals_live(url: &str, total: u64) {
    let mut audit = audit_client(url, Some(AUDITOR_TOKEN)).await;
    let live = audit
        .projection_status(ProjectionStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut operator = audit_client(url, Some(OPERATOR_TOKEN)).await;
    let mut progress = operator
        .rebuild_projections(RebuildProjectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut rebuilt = 0;
    while let Some(p) = progress.message().await.unwrap() {
        if !p.done {
            continue;
        }
        let before = live.projections.iter().find(|l| l.name == p.name).unwrap();
        assert_eq!(
            p.digest, before.digest,
            "{} differs from its rebuild",
            p.name
        );
        assert_eq!(p.applied, total, "{} folded every event", p.name);
        rebuilt += 1;
    }
    assert_eq!(rebuilt, live.projections.len(), "every projection rebuilt");
}

/// Publishes envelopes on their subjects (protobuf, `Nats-Msg-Id = event_id`), acks pipelined
/// 500 at a time.
pub async fn publish_pipelined(
    js: &async_nats::jetstream::Context,
    envs: impl IntoIterator<Item = Envelope>,
) {
    use prost::Message;
    let mut acks = Vec::new();
    for env in envs {
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(env.encode_to_vec().into())
            .message_id(&env.event_id);
        acks.push(
            js.send_publish(format!("privacy.in.{}.{}", env.tenant, env.event_type), msg)
                .await
                .unwrap(),
        );
        if acks.len() >= 500 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// At least `want` messages of `stream` under `filter`, read by a new consumer from the start
/// (at most 20 s).
pub async fn fetch_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
    filter: &str,
    want: usize,
) -> Vec<async_nats::jetstream::Message> {
    use futures::StreamExt;
    let consumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: filter.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "{stream} {filter}: {} of {want} messages",
            got.len()
        );
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_millis(200))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(m)) = batch.next().await {
            got.push(m);
        }
    }
    got
}
