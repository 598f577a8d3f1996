//! Tenant isolation over real gRPC (DESIGN §4.4, §5.10): every RPC of every service, found in
//! the proto descriptor rather than listed by hand, refuses a token bound to another tenant;
//! `StreamEvents` shows a bound token only its tenants' events.

use std::collections::BTreeSet;

use privacy_e2e::*;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// Another tenant of `examples/tenants`, which the bound tokens do not name.
const OTHER: &str = "ru-crm";

/// RPCs whose request has no `tenant`: what each may show or do, decided once, here. A new
/// tenant-less RPC fails the test until it is added with its reason.
const STORE_WIDE: &[(&str, &str)] = &[
    ("VerifyChain", "hashes and counts only: any reader"),
    (
        "ProjectionStatus",
        "checkpoints and digests only: any reader",
    ),
    (
        "RebuildProjections",
        "rebuilds every tenant's views: `*` tokens only",
    ),
];

const BOUND: [&str; 3] = [
    TENANT_OPERATOR_TOKEN,
    TENANT_AUDITOR_TOKEN,
    TENANT_BACKEND_TOKEN,
];

/// Calls `method` with a request holding only `tenant` (when the request has that field) and
/// returns the status code the call ends with (`Ok` for a unary success or a stream that
/// ended cleanly).
async fn call(channel: &Channel, method: &MethodDescriptor, tenant: &str, token: &str) -> Code {
    let mut body = DynamicMessage::new(method.input());
    if method.input().get_field_by_name("tenant").is_some() {
        body.set_field_by_name("tenant", Value::String(tenant.to_owned()));
    }
    let path = PathAndQuery::try_from(format!(
        "/{}/{}",
        method.parent_service().full_name(),
        method.name()
    ))
    .unwrap();
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let codec = tonic_prost::ProstCodec::<DynamicMessage, ()>::default();
    if method.is_server_streaming() {
        match grpc.server_streaming(request, path, codec).await {
            Err(status) => status.code(),
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(())) => {}
                        Ok(None) => return Code::Ok,
                        Err(status) => return status.code(),
                    }
                }
            }
        }
    } else {
        match grpc.unary(request, path, codec).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_a_token_of_another_tenant() {
    let nats = NatsServer::start();
    let pool = DescriptorPool::decode(privacy_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut checked = BTreeSet::new();
    for spec in [
        privacy_consent::SPEC,
        privacy_subject_requests::SPEC,
        privacy_retention::SPEC,
        privacy_disclosure_log::SPEC,
    ] {
        let data = tempfile::tempdir().unwrap();
        let svc = InProcess::start(spec, &nats.url(), data.path()).await;
        let channel = tonic::transport::Endpoint::from_shared(svc.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        for service in pool.services() {
            for method in service.methods() {
                let name = format!("{}/{}", service.name(), method.name());
                // Hosted here? A `*` operator answers anything but UNIMPLEMENTED.
                if call(&channel, &method, OTHER, OPERATOR_TOKEN).await == Code::Unimplemented {
                    continue;
                }
                let has_tenant = method.input().get_field_by_name("tenant").is_some();
                let mut refused = Vec::new();
                for token in BOUND {
                    refused.push(call(&channel, &method, OTHER, token).await);
                }
                if has_tenant {
                    assert!(
                        refused.iter().all(|c| *c == Code::PermissionDenied),
                        "{} {name}: a token bound to {TENANT} asking for {OTHER}: {refused:?}",
                        spec.name
                    );
                    // The refusal is the tenant's: for its own tenant some bound role gets
                    // past the check (to a later error about the empty request, or OK).
                    let mut own = Vec::new();
                    for token in BOUND {
                        own.push(call(&channel, &method, TENANT, token).await);
                    }
                    assert!(
                        own.iter().any(|c| *c != Code::PermissionDenied),
                        "{} {name}: no role bound to {TENANT} may call it for {TENANT}: {own:?}",
                        spec.name
                    );
                } else {
                    let (_, why) = STORE_WIDE
                        .iter()
                        .find(|(m, _)| *m == method.name())
                        .unwrap_or_else(|| {
                            panic!("{name} has no tenant: add it to STORE_WIDE with its scope")
                        });
                    if method.name() == "RebuildProjections" {
                        assert!(
                            refused.iter().all(|c| *c == Code::PermissionDenied),
                            "{name} ({why}): {refused:?}"
                        );
                    } else {
                        assert!(refused.contains(&Code::Ok), "{name} ({why}): {refused:?}");
                    }
                }
                checked.insert(name);
            }
        }
        svc.stop().await;
    }
    // Every method of the consent and audit services was reached and checked.
    for service in pool.services() {
        if ["ConsentService", "AuditService"].contains(&service.name()) {
            for method in service.methods() {
                let name = format!("{}/{}", service.name(), method.name());
                assert!(checked.contains(&name), "{name} was never checked");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_auditor_streams_only_its_tenants_events() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    let mut operator = consent_client(&svc.url(), OPERATOR_TOKEN).await;
    for tenant in [TENANT, OTHER] {
        operator
            .publish_policy(PublishPolicyRequest {
                tenant: tenant.into(),
                version: "v1".into(),
                notice_hash: "sha256:test".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let tenants_of = |events: &[StoredEvent]| -> BTreeSet<String> {
        events
            .iter()
            .map(|e| e.envelope.as_ref().unwrap().tenant.clone())
            .collect()
    };
    let mut all = audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await;
    assert_eq!(
        tenants_of(&all_events(&mut all).await),
        BTreeSet::from([TENANT.to_owned(), OTHER.to_owned()])
    );
    let mut bound = audit_client(&svc.url(), Some(TENANT_AUDITOR_TOKEN)).await;
    assert_eq!(
        tenants_of(&all_events(&mut bound).await),
        BTreeSet::from([TENANT.to_owned()])
    );
    let err = bound
        .get_subject_timeline(GetSubjectTimelineRequest {
            tenant: OTHER.into(),
            subject_id: "u-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().starts_with("tenant:"), "{err}");
    svc.stop().await;
}
