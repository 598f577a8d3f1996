//! Bearer-token roles over real gRPC: no token is UNAUTHENTICATED, a wrong role is
//! PERMISSION_DENIED, health needs no token.

use privacy_e2e::*;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;
use tonic::Code;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_wrong_role_calls_are_refused() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_retention::SPEC, &nats.url(), data.path()).await;
    let url = svc.url();

    let mut anonymous = audit_client(&url, None).await;
    let err = anonymous
        .verify_chain(VerifyChainRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    let mut forged = audit_client(&url, Some("not-a-configured-token")).await;
    let err = forged
        .projection_status(ProjectionStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    let mut auditor = audit_client(&url, Some(AUDITOR_TOKEN)).await;
    assert!(
        auditor
            .verify_chain(VerifyChainRequest::default())
            .await
            .unwrap()
            .into_inner()
            .ok
    );
    let err = auditor
        .rebuild_projections(RebuildProjectionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    let mut backend = audit_client(&url, Some(BACKEND_TOKEN)).await;
    let err = backend
        .verify_chain(VerifyChainRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    let mut operator = audit_client(&url, Some(OPERATOR_TOKEN)).await;
    let mut progress = operator
        .rebuild_projections(RebuildProjectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut done = 0;
    while let Some(p) = progress.message().await.unwrap() {
        done += usize::from(p.done);
    }
    // The subject timeline and the service's own projections.
    assert_eq!(done, 1 + (privacy_retention::SPEC.projections)().len());
    let err = operator
        .rebuild_projections(RebuildProjectionsRequest {
            names: vec!["nope".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("names"), "{err}");

    // Health answers without a token (wait_serving uses no token), and so does reflection.
    wait_serving(&url).await;
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in ["privacy.v1.AuditService", "grpc.health.v1.Health"] {
        assert!(names.contains(&want), "{names:?}");
    }
    // v1alpha too (Python's grpcio-reflection speaks only that), with the same services.
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "privacy.v1.AuditService".into(),
            )),
        };
        let answer = ServerReflectionClient::new(channel)
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else {
            panic!("{answer:?}")
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
    svc.stop().await;
}
