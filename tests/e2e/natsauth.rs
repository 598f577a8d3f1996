//! NATS authorization against a real `nats-server` started with the block
//! `privacy_bus::authz` generates (DESIGN §4.2, §5.10): a backend allowed one tenant cannot
//! publish for another (NATS refuses it), a service's user cannot pull another service's
//! consumer or publish as another service, and the services work under their own users.
//! Also keeps `deploy/nats/nats-authz.example.conf` equal to what the generator writes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use privacy_bus::BusConfig;
use privacy_bus::authz::{BackendUser, authorization};
use privacy_e2e::*;
use privacy_testkit::NatsServer;
use prost::Message;

const SERVICES: [&str; 4] = ["consent", "subject-requests", "retention", "disclosure-log"];

/// A connection as `user`, recording the server's errors (permission violations) it receives.
async fn connect_as(url: &str, user: &str) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(user.into(), format!("{user}-password"))
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    sink.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap();
    (client, errors)
}

/// Waits until the server reported a permission violation naming `subject`.
async fn wait_for_violation(errors: &Mutex<Vec<String>>, subject: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.to_lowercase().contains("permissions violation") && e.contains(subject))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no permission violation for {subject}: {:?}",
            errors.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_confines_backends_to_their_tenants_and_services_to_their_subjects() {
    let passwords: Vec<String> = SERVICES
        .iter()
        .map(|s| format!("\"{s}-password\""))
        .collect();
    let services: Vec<(&str, &str)> = SERVICES
        .iter()
        .zip(&passwords)
        .map(|(s, p)| (*s, p.as_str()))
        .collect();
    let config = authorization(
        &BusConfig::default(),
        &services,
        &[BackendUser {
            user: "vn-backend",
            password: "\"vn-backend-password\"",
            tenants: &[TENANT],
        }],
    );
    let nats = NatsServer::start_with(&config);
    let data = tempfile::tempdir().unwrap();
    let as_user = |user: &'static str| {
        [
            ("PRIVACY_NATS_USER", user),
            (
                "PRIVACY_NATS_PASSWORD",
                Box::leak(format!("{user}-password").into_boxed_str()) as &str,
            ),
        ]
    };
    // Both services reach SERVING: streams and every consumer created under their own users.
    let consent = InProcess::start_with(
        privacy_consent::SPEC,
        &nats.url(),
        data.path(),
        &as_user("consent"),
    )
    .await;
    let retention = InProcess::start_with(
        privacy_retention::SPEC,
        &nats.url(),
        data.path(),
        &as_user("retention"),
    )
    .await;
    publish_policy_v1(&consent.url()).await;

    let (backend, backend_errors) = connect_as(&nats.url(), "vn-backend").await;
    let mut js = jetstream::new(backend);
    js.set_timeout(Duration::from_secs(2));
    let mine = envelope("u-1", granted("marketing"));
    js.send_publish(
        format!("privacy.in.{TENANT}.consent.granted"),
        PublishMessage::build().payload(mine.encode_to_vec().into()),
    )
    .await
    .unwrap()
    .await
    .expect("a backend publishes its own tenant's events");
    let mut audit = audit_client(&consent.url(), Some(AUDITOR_TOKEN)).await;
    wait_for_head(&mut audit, 2, Duration::from_secs(20)).await;

    // Another tenant's subject: NATS refuses the publish, nothing reaches the stream.
    let mut theirs = envelope("u-2", granted("marketing"));
    theirs.tenant = "ru-crm".into();
    let forbidden = "privacy.in.ru-crm.consent.granted";
    let acked = match js
        .send_publish(
            forbidden.to_string(),
            PublishMessage::build().payload(theirs.encode_to_vec().into()),
        )
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!acked, "NATS accepted a publish for another tenant");
    wait_for_violation(&backend_errors, forbidden).await;

    // The consent service's user: no pulling retention's consumer, no publishing as retention
    // or as a backend.
    let (consent_nats, consent_errors) = connect_as(&nats.url(), "consent").await;
    let others_pull = "$JS.API.CONSUMER.MSG.NEXT.PRIVACY_IN.retention_all_data_collected";
    let _ = consent_nats
        .publish_with_reply(others_pull, consent_nats.new_inbox(), "1".into())
        .await;
    let as_retention = format!("privacy.evt.retention.{TENANT}.retention.planned");
    let _ = consent_nats.publish(as_retention.clone(), "x".into()).await;
    let as_backend = format!("privacy.in.{TENANT}.consent.granted");
    let _ = consent_nats.publish(as_backend.clone(), "x".into()).await;
    consent_nats.flush().await.unwrap();
    wait_for_violation(&consent_errors, others_pull).await;
    wait_for_violation(&consent_errors, &as_retention).await;
    wait_for_violation(&consent_errors, &as_backend).await;

    // Nothing but the backend's own event (and the policy) was stored.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(head_seq(&mut audit).await, 2);
    retention.stop().await;
    consent.stop().await;
}

/// The example shipped in `deploy/nats/` is the generator's output (set `PRIVACY_BLESS=1` to
/// rewrite it after changing the catalogue or the generator).
#[test]
fn the_example_nats_authorization_is_what_the_generator_writes() {
    const HEADER: &str = "\
# Example NATS authorization for Privacy Ledger (not used by docker-compose.yml), generated by
# privacy_bus::authz from the event catalogue; tests/e2e/natsauth.rs checks a server running it.
# Each service has its own user: it may publish only its domain events and dead letters, create
# the durable consumers of every service (PRIVACY_IN keeps a message only while some consumer
# still wants it, so all must exist before backends publish) and pull and ack only its own.
# A backend user may publish only its tenants' user events (privacy.in.<tenant>.>).
#
# Use: add `include ./nats-authz.conf` to nats.conf, set the passwords in the NATS server's
# environment (unquoted $NAME values are read from it), and give each service its user:
#   PRIVACY_NATS_USER=consent PRIVACY_NATS_PASSWORD=<password>
# Add one backend user per backend system with the tenants it publishes for.
# Services that send orders (subject-requests, retention) may publish on privacy.out.>; a
# backend that takes its orders needs a consumer on PRIVACY_OUT for privacy.out.<tenant>.<system>.>
# (not generated here).

";
    let services: Vec<(&str, String)> = SERVICES
        .iter()
        .map(|s| {
            (
                *s,
                format!("${}_PASSWORD", s.to_uppercase().replace('-', "_")),
            )
        })
        .collect();
    let services: Vec<(&str, &str)> = services.iter().map(|(s, p)| (*s, p.as_str())).collect();
    let text = format!(
        "{HEADER}{}",
        authorization(
            &BusConfig::default(),
            &services,
            &[
                BackendUser {
                    user: "vn-apihub-backend",
                    password: "$VN_APIHUB_BACKEND_PASSWORD",
                    tenants: &["vn-apihub"],
                },
                BackendUser {
                    user: "crm-backend",
                    password: "$CRM_BACKEND_PASSWORD",
                    tenants: &["ru-crm", "au-messenger"],
                },
            ],
        )
    );
    let path = privacy_testkit::workspace_root().join("deploy/nats/nats-authz.example.conf");
    if std::env::var("PRIVACY_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &text).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "{} is stale: rerun this test with PRIVACY_BLESS=1",
        path.display()
    );
}
