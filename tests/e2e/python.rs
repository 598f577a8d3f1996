//! The "any language" promise, tested: the Python backend example (`examples/python`, nats-py,
//! proto3 JSON) publishes every user event type against the four services; each event is
//! stored by every service that takes it, under the id Python gave it, and none is
//! dead-lettered. Its `order.confirmed` answers a real order.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use async_nats::jetstream;
use privacy_e2e::*;
use privacy_proto::EventType;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;

use crate::retention::out_orders;

/// The Python with nats-py: `PRIVACY_PYTHON`, else the project's `.venv` (scripts/test installs
/// it there with scripts/install-python-example).
fn python() -> PathBuf {
    let python = std::env::var_os("PRIVACY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| privacy_testkit::workspace_root().join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import nats"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import nats: run scripts/install-python-example (scripts/test does) or set \
         PRIVACY_PYTHON",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_publishes_every_user_event_and_each_is_stored() {
    let python = python();
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let stack = Stack::start(&nats.url(), data.path()).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    publish_policy_v1(&stack.consent.url()).await;
    let subject = "u-python";

    // A real order for Python to answer: a rectification, started, orders every system.
    let mut r = requests_client(&stack.requests.url(), OPERATOR_TOKEN).await;
    let request = open_request(&mut r, subject, RequestType::Rectification).await;
    r.verify_identity(VerifyIdentityRequest {
        tenant: TENANT.into(),
        request_id: request.request_id.clone(),
        method: "account_login".into(),
    })
    .await
    .unwrap();
    r.start_request(StartRequestRequest {
        tenant: TENANT.into(),
        request_id: request.request_id.clone(),
    })
    .await
    .unwrap();
    let order = out_orders(&js, "privacy.out.vn-apihub.accounts.rectify", 1)
        .await
        .remove(0);

    let mut command = Command::new(&python);
    command.arg(privacy_testkit::workspace_root().join("examples/python/publish_events.py"));
    command.args([
        "--nats",
        &nats.url(),
        "--tenant",
        TENANT,
        "--subject",
        subject,
    ]);
    command.args([
        "--order-id",
        &order.order_id,
        "--order-system",
        &order.system,
    ]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let published: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: BTreeSet<&str> = published
        .iter()
        .map(|p| p["event_type"].as_str().unwrap())
        .collect();
    let every: BTreeSet<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(types, every, "the example publishes every user event type");
    assert!(
        published
            .iter()
            .all(|p| p["stream"] == "PRIVACY_IN" && p["duplicate"] == false)
    );

    // Each event is stored, under Python's event id, by every service that takes it.
    for (service, url) in stack.urls() {
        let wanted: BTreeSet<String> = published
            .iter()
            .filter(|p| {
                let t: EventType = p["event_type"].as_str().unwrap().parse().unwrap();
                t.consumers().contains(&service)
            })
            .map(|p| p["event_id"].as_str().unwrap().to_owned())
            .collect();
        assert!(!wanted.is_empty(), "{service} takes some user event");
        let mut audit = audit_client(&url, Some(AUDITOR_TOKEN)).await;
        eventually(&format!("{service} stores Python's events"), || {
            let mut audit = audit.clone();
            let wanted = wanted.clone();
            async move {
                let stored: BTreeSet<String> = all_events(&mut audit)
                    .await
                    .into_iter()
                    .filter_map(|e| e.envelope.map(|e| e.event_id))
                    .collect();
                let missing: Vec<&String> = wanted.difference(&stored).collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("missing {missing:?}"))
                }
            }
        })
        .await;
        let verified = audit
            .verify_chain(VerifyChainRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(verified.ok, "{service}: {verified:?}");
    }
    assert_eq!(
        stream_messages(&js, "PRIVACY_DLQ").await,
        0,
        "nothing dead-lettered"
    );
    // The answer reached the request.
    let answered = eventually("the order's answer reaches the request", || {
        let mut r = r.clone();
        let id = request.request_id.clone();
        async move {
            let q = r
                .get_request(GetRequestRequest {
                    tenant: TENANT.into(),
                    request_id: id,
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .request
                .unwrap();
            q.orders
                .into_iter()
                .find(|o| o.system == "accounts" && o.confirmed_at.is_some())
                .ok_or_else(|| "not yet".to_owned())
        }
    })
    .await;
    assert_eq!(answered.outcome, OrderOutcome::Done as i32);
    stack.stop().await;
}
