//! The consent service over real gRPC and a real NATS: policies, grants and withdrawals from
//! both doors, checks as of any instant, the jurisdiction's form rules, the child rule,
//! idempotent commands, roles, and consent events on the outbox.

use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use futures::StreamExt;
use privacy_e2e::*;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;
use tonic::Code;

fn ts(t: SystemTime) -> Option<prost_types::Timestamp> {
    Some(t.into())
}

fn grant(subject: &str, purpose: &str, version: &str, at: SystemTime) -> GrantConsentRequest {
    GrantConsentRequest {
        tenant: TENANT.into(),
        subject_id: subject.into(),
        consent: Some(ConsentGranted {
            purposes: vec![purpose.into()],
            policy_version: version.into(),
            method: ConsentMethod::UntickedCheckbox as i32,
            expressed_by: ExpressedBy::Subject as i32,
            ..Default::default()
        }),
        occurred_at: ts(at),
        event_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    }
}

async fn check(
    c: &mut Consent,
    subject: &str,
    purpose: &str,
    at: SystemTime,
) -> CheckConsentResponse {
    c.check_consent(CheckConsentRequest {
        tenant: TENANT.into(),
        subject_id: subject.into(),
        purpose: purpose.into(),
        as_of: ts(at),
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_is_recorded_checked_as_of_any_instant_and_published() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    let url = svc.url();
    let mut operator = consent_client(&url, OPERATOR_TOKEN).await;
    let mut backend = consent_client(&url, BACKEND_TOKEN).await;
    let mut auditor = consent_client(&url, AUDITOR_TOKEN).await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);

    // A policy in force since yesterday.
    operator
        .publish_policy(PublishPolicyRequest {
            tenant: TENANT.into(),
            version: "v1".into(),
            notice_hash: "sha256:aa".into(),
            effective_at: ts(now - 24 * hour),
            ..Default::default()
        })
        .await
        .unwrap();
    let again = operator
        .publish_policy(PublishPolicyRequest {
            tenant: TENANT.into(),
            version: "v1".into(),
            notice_hash: "sha256:aa".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);

    // Granted an hour ago over gRPC; idempotent by event id.
    let mut g = grant("u-1", "marketing", "v1", now - hour);
    g.event_id = uuid::Uuid::now_v7().to_string();
    let first = backend.grant_consent(g.clone()).await.unwrap().into_inner();
    assert!(!first.duplicate);
    assert_eq!(first.record_ids, vec![format!("{}/marketing", g.event_id)]);
    let repeat = backend.grant_consent(g.clone()).await.unwrap().into_inner();
    assert!(repeat.duplicate);
    assert_eq!(repeat.seq, first.seq);
    // A retry of a command that left `occurred_at` to the server is the same command too.
    let mut untimed = grant("u-untimed", "analytics", "v1", now);
    untimed.occurred_at = None;
    let once = backend
        .grant_consent(untimed.clone())
        .await
        .unwrap()
        .into_inner();
    let retried = backend.grant_consent(untimed).await.unwrap().into_inner();
    assert!(!once.duplicate && retried.duplicate);
    assert_eq!(retried.seq, once.seq);
    // The same key for another event is refused; a command without a key is refused.
    let mut reused = grant("u-1", "marketing", "v1", now - hour);
    reused.event_id = g.event_id.clone();
    reused.subject_id = "u-other".into();
    let err = backend.grant_consent(reused).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    assert!(err.message().starts_with("event_id:"), "{err}");
    let mut keyless = grant("u-1", "marketing", "v1", now);
    keyless.event_id.clear();
    let err = backend.grant_consent(keyless).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().starts_with("event_id:"), "{err}");
    // gRPC takes no larger messages than NATS (64 KiB).
    let mut huge = grant("u-1", "marketing", "v1", now);
    huge.consent.as_mut().unwrap().attestation_ref = "x".repeat(70 * 1024);
    let err = backend.grant_consent(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    // Poison timestamps are refused naming the field.
    let mut forever = grant("u-1", "marketing", "v1", now);
    forever.consent.as_mut().unwrap().valid_until = Some(prost_types::Timestamp {
        seconds: i64::MAX,
        nanos: 0,
    });
    let err = backend.grant_consent(forever).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().starts_with("consent_granted.valid_until:"),
        "{err}"
    );
    let err = backend
        .check_consent(CheckConsentRequest {
            tenant: TENANT.into(),
            subject_id: "u-1".into(),
            purpose: "marketing".into(),
            as_of: Some(prost_types::Timestamp {
                seconds: i64::MIN,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().starts_with("as_of:"), "{err}");

    let ok = check(&mut backend, "u-1", "marketing", now).await;
    assert!(ok.allowed, "{ok:?}");
    assert_eq!(
        (ok.basis.as_str(), ok.policy_version.as_str()),
        ("consent", "v1")
    );
    assert_eq!(ok.record_id, first.record_ids[0]);
    let before = check(&mut auditor, "u-1", "marketing", now - 2 * hour).await;
    assert_eq!(
        (before.allowed, before.reason.as_str()),
        (false, "never_given")
    );
    let contract = check(&mut backend, "u-1", "provide_service", now).await;
    assert_eq!(
        (contract.allowed, contract.basis.as_str()),
        (true, "contract")
    );
    let unknown = check(&mut backend, "u-1", "telepathy", now).await;
    assert_eq!(
        (unknown.allowed, unknown.reason.as_str()),
        (false, "unknown_purpose")
    );

    // Withdrawn through NATS with the SDK; the earlier instant still answers as it was.
    let client = privacy_client::PrivacyClient::connect(&nats.url(), "settings-page")
        .await
        .unwrap();
    client
        .publish(
            TENANT,
            "u-1",
            ConsentWithdrawn {
                purposes: vec![],
                method: "settings".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = check(&mut backend, "u-1", "marketing", SystemTime::now()).await;
        if c.reason == "withdrawn" {
            break;
        }
        assert!(Instant::now() < deadline, "withdrawal not seen: {c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        check(&mut backend, "u-1", "marketing", now).await.allowed,
        "as of `now` it was allowed"
    );

    // The jurisdiction's form rules (VN: no pre-ticked consent) and the policy in force.
    let mut pre_ticked = grant("u-2", "marketing", "v1", now);
    pre_ticked.consent.as_mut().unwrap().method = ConsentMethod::PreTickedCheckbox as i32;
    let err = backend.grant_consent(pre_ticked).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().starts_with("consent_granted.method"), "{err}");
    let err = backend
        .grant_consent(grant("u-2", "marketing", "v9", now))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().starts_with("consent_granted.policy_version"),
        "{err}"
    );
    let err = backend
        .grant_consent(grant("u-2", "provide_service", "v1", now))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let err = auditor
        .grant_consent(grant("u-2", "marketing", "v1", now))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A material change to marketing, effective in an hour, requires re-consent from then on.
    backend
        .grant_consent(grant("u-3", "marketing", "v1", now))
        .await
        .unwrap();
    operator
        .publish_policy(PublishPolicyRequest {
            tenant: TENANT.into(),
            version: "v2".into(),
            notice_hash: "sha256:bb".into(),
            purposes: vec!["marketing".into()],
            material: true,
            effective_at: ts(now + hour),
        })
        .await
        .unwrap();
    assert!(
        check(&mut backend, "u-3", "marketing", now + hour / 2)
            .await
            .allowed
    );
    let later = check(&mut backend, "u-3", "marketing", now + 2 * hour).await;
    assert_eq!(
        (later.reason.as_str(), later.superseded_by.as_str()),
        ("reconsent_required", "v2")
    );
    assert!(
        check(&mut backend, "u-3", "analytics", now + 2 * hour)
            .await
            .reason
            == "never_given"
    );

    // A child (VN: under 16) needs a guardian. Born 14 years ago, so only the threshold in
    // force now makes them a child: none was in force in VN on the birth date, and the tenant's
    // own 13 alone would say adult.
    let year = 1970 + now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 31_556_952;
    client
        .publish(
            TENANT,
            "kid-1",
            SubjectRegistered {
                birth_date: format!("{}-01-01", year - 14),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        match backend
            .grant_consent(grant("kid-1", "marketing", "v1", now))
            .await
        {
            Err(e) if e.message().starts_with("consent_granted.expressed_by") => break e,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "child rule not applied: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let mut by_guardian = grant("kid-1", "marketing", "v1", now);
    by_guardian.consent.as_mut().unwrap().expressed_by = ExpressedBy::Guardian as i32;
    backend.grant_consent(by_guardian).await.unwrap();
    assert!(
        check(&mut backend, "kid-1", "marketing", SystemTime::now())
            .await
            .allowed
    );

    // Receipts carry the opened evidence; after the subject's key is shredded they show it as
    // erased, checks still answer and the chain still verifies.
    let mut with_evidence = grant("u-4", "analytics", "v1", now);
    with_evidence.consent.as_mut().unwrap().evidence = [
        (
            "ip".to_string(),
            PersonalValue {
                value: Some(personal_value::Value::Clear("203.0.113.9".into())),
            },
        ),
        (
            "notice_language".to_string(),
            PersonalValue {
                value: Some(personal_value::Value::Clear("vi".into())),
            },
        ),
    ]
    .into();
    let record = backend
        .grant_consent(with_evidence)
        .await
        .unwrap()
        .into_inner()
        .record_ids
        .remove(0);
    let export = |mut c: Consent, record: String| async move {
        let json = c
            .export_consent_receipt(ExportConsentReceiptRequest {
                tenant: TENANT.into(),
                subject_id: "u-4".into(),
                record_id: record,
            })
            .await
            .unwrap()
            .into_inner()
            .receipt_json;
        serde_json::from_str::<serde_json::Value>(&json).unwrap()
    };
    let receipt = export(auditor.clone(), record.clone()).await;
    assert_eq!(receipt["version"], "KI-CR-v1.1.0");
    assert_eq!(receipt["consentReceiptID"], record.as_str());
    assert_eq!(receipt["jurisdiction"], "VN");
    assert_eq!(receipt["state"], "given");
    assert_eq!(receipt["language"], "vi");
    assert_eq!(receipt["evidence"]["ip"], "203.0.113.9");
    assert_eq!(receipt["notice"]["noticeHash"], "sha256:aa");
    svc.service
        .vault
        .shred(TENANT, "u-4", 1_800_000_000_000_000)
        .unwrap();
    let erased = export(auditor.clone(), record.clone()).await;
    assert_eq!(erased["evidence"]["ip"]["erased"], true, "{erased}");
    assert!(!erased.to_string().contains("203.0.113.9"));
    assert!(
        check(&mut backend, "u-4", "analytics", SystemTime::now())
            .await
            .allowed
    );
    let mut audit = audit_client(&url, Some(AUDITOR_TOKEN)).await;
    assert!(
        audit
            .verify_chain(VerifyChainRequest::default())
            .await
            .unwrap()
            .into_inner()
            .ok
    );

    // History, for auditors.
    let history = auditor
        .get_consent_history(GetConsentHistoryRequest {
            tenant: TENANT.into(),
            subject_id: "u-1".into(),
            purpose: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let changes: Vec<_> = history
        .entries
        .iter()
        .map(|e| (e.purpose.as_str(), e.change.as_str()))
        .collect();
    assert_eq!(changes, [("marketing", "granted"), ("*", "withdrawn")]);
    // The withdrawal's method, sealed at rest, opened for display.
    assert_eq!(history.entries[1].withdrawal_method, "settings");

    // Consent changes are domain events on the bus.
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let evt = js.get_stream("PRIVACY_EVT").await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = evt
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut subjects = Vec::new();
    while subjects.len() < 8 && Instant::now() < deadline {
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            subjects.push(m.unwrap().subject.to_string());
        }
    }
    for want in [
        "privacy.evt.consent.vn-apihub.subject.child_flagged",
        "privacy.evt.consent.vn-apihub.policy.published",
        "privacy.evt.consent.vn-apihub.consent.granted",
        "privacy.evt.consent.vn-apihub.consent.withdrawn",
    ] {
        assert!(
            subjects.iter().any(|s| s == want),
            "{want} missing from {subjects:?}"
        );
    }
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpc_signal_withdraws_sale_and_marketing_where_the_law_honours_it() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    let mut operator = consent_client(&svc.url(), OPERATOR_TOKEN).await;
    let mut backend = consent_client(&svc.url(), BACKEND_TOKEN).await;
    let now = SystemTime::now();
    let ca = "us-ca-store";
    operator
        .publish_policy(PublishPolicyRequest {
            tenant: ca.into(),
            version: "2026-01".into(),
            notice_hash: "sha256:cc".into(),
            effective_at: ts(now - Duration::from_secs(86_400)),
            ..Default::default()
        })
        .await
        .unwrap();
    for purpose in ["marketing", "sale", "analytics"] {
        let mut g = grant("c-1", purpose, "2026-01", now - Duration::from_secs(60));
        g.tenant = ca.into();
        backend.grant_consent(g).await.unwrap();
    }
    let client = privacy_client::PrivacyClient::connect(&nats.url(), "browser")
        .await
        .unwrap();
    client
        .publish(
            ca,
            "c-1",
            ConsentSignal {
                signal: "gpc".into(),
                value: true,
            },
        )
        .await
        .unwrap();
    let ask = |purpose: &'static str| {
        let mut backend = backend.clone();
        async move {
            backend
                .check_consent(CheckConsentRequest {
                    tenant: ca.into(),
                    subject_id: "c-1".into(),
                    purpose: purpose.into(),
                    as_of: None,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ask("sale").await.allowed {
        assert!(Instant::now() < deadline, "GPC not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ask("sale").await.reason, "withdrawn");
    assert_eq!(ask("marketing").await.reason, "withdrawn");
    assert!(
        ask("analytics").await.allowed,
        "GPC does not touch analytics"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_example_tenant_gets_its_jurisdictions_consent_rules() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    let mut operator = consent_client(&svc.url(), OPERATOR_TOKEN).await;
    let mut backend = consent_client(&svc.url(), BACKEND_TOKEN).await;
    let now = SystemTime::now();
    for tenant in ["ru-crm", "au-messenger", "vn-apihub"] {
        operator
            .publish_policy(PublishPolicyRequest {
                tenant: tenant.into(),
                version: "p1".into(),
                notice_hash: "sha256:dd".into(),
                effective_at: ts(now - Duration::from_secs(86_400)),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let request = |tenant: &str, purpose: &str, change: &dyn Fn(&mut ConsentGranted)| {
        let mut g = grant("s-1", purpose, "p1", now);
        g.tenant = tenant.into();
        change(g.consent.as_mut().unwrap());
        g
    };
    let field_of = |e: tonic::Status| {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        e.message().split(':').next().unwrap().to_owned()
    };

    // RU: consent must be a separate document since 2025-09-01, and conscious.
    let bundled = request("ru-crm", "advertising", &|g| g.bundled = true);
    let err = backend.grant_consent(bundled).await.unwrap_err();
    assert_eq!(field_of(err), "consent_granted.bundled");
    let silent = request("ru-crm", "advertising", &|g| {
        g.method = ConsentMethod::Silent as i32
    });
    assert_eq!(
        field_of(backend.grant_consent(silent).await.unwrap_err()),
        "consent_granted.method"
    );
    // A legal-entity user passing on a third party's consent attests it.
    let unattested = request("ru-crm", "interaction", &|g| {
        g.expressed_by = ExpressedBy::Representative as i32
    });
    let err = backend.grant_consent(unattested).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("consent_granted.attestation_ref"),
        "{err}"
    );
    let attested = request("ru-crm", "interaction", &|g| {
        g.expressed_by = ExpressedBy::Representative as i32;
        g.attestation_ref = "contract-77/annex-2".into();
    });
    backend.grant_consent(attested).await.unwrap();
    // A tenant whose file does not allow representatives refuses their consent.
    let elsewhere = request("vn-apihub", "marketing", &|g| {
        g.expressed_by = ExpressedBy::Representative as i32;
        g.attestation_ref = "contract-77/annex-2".into();
    });
    assert_eq!(
        field_of(backend.grant_consent(elsewhere).await.unwrap_err()),
        "consent_granted.expressed_by"
    );

    // AU: implied consent is possible, so a pre-ticked box is recorded (as such) rather than refused.
    let pre_ticked = request("au-messenger", "marketing", &|g| {
        g.method = ConsentMethod::PreTickedCheckbox as i32
    });
    backend.grant_consent(pre_ticked).await.unwrap();
    // AU's trust-and-safety purpose rests on a legal obligation: allowed without consent.
    let safety = backend
        .check_consent(CheckConsentRequest {
            tenant: "au-messenger".into(),
            subject_id: "s-1".into(),
            purpose: "safety".into(),
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (safety.allowed, safety.basis.as_str()),
        (true, "legal_obligation")
    );

    // VN: bundled consent refused as well; the tenant's catalog is enforced.
    let bundled = request("vn-apihub", "marketing", &|g| g.bundled = true);
    assert_eq!(
        field_of(backend.grant_consent(bundled).await.unwrap_err()),
        "consent_granted.bundled"
    );
    let err = backend
        .grant_consent(request("vn-apihub", "mind_reading", &|_| {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("consent_granted.purposes"),
        "{err}"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_own_consent_never_allows_processing_whatever_the_arrival_order() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    publish_policy_v1(&svc.url()).await;
    svc.stop().await;
    // Published while the service is down: both wait in the stream and are pulled together, by
    // two consumers (subject.* and consent.*) whose relative order is not defined. The grant is
    // refused when the registration was seen first (even if not yet folded into the view);
    // otherwise it is stored and the check denies it as a child's own consent.
    let client = privacy_client::PrivacyClient::connect(&nats.url(), "signup")
        .await
        .unwrap();
    client
        .publish(
            TENANT,
            "kid-9",
            SubjectRegistered {
                birth_date: "2017-03-03".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let grant = ConsentGranted {
        purposes: vec!["marketing".into()],
        policy_version: "v1".into(),
        method: ConsentMethod::UntickedCheckbox as i32,
        expressed_by: ExpressedBy::Subject as i32,
        ..Default::default()
    };
    client.publish(TENANT, "kid-9", grant).await.unwrap();
    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let [accepted, _, rejected, _] = svc.service.stats.snapshot();
        if accepted + rejected >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "both events not handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut backend = consent_client(&svc.url(), BACKEND_TOKEN).await;
    let mut c = check(&mut backend, "kid-9", "marketing", SystemTime::now()).await;
    while c.reason.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c = check(&mut backend, "kid-9", "marketing", SystemTime::now()).await;
    }
    assert!(!c.allowed, "{c:?}");
    assert!(
        ["never_given", "child_without_guardian"].contains(&c.reason.as_str()),
        "{c:?}"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_iso_27560_state_shows_in_history_and_receipts() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    let url = svc.url();
    publish_policy_v1(&url).await;
    let mut backend = consent_client(&url, BACKEND_TOKEN).await;
    let mut operator = consent_client(&url, OPERATOR_TOKEN).await;
    let auditor = consent_client(&url, AUDITOR_TOKEN).await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let refuse = |subject: &str, purpose: &str, at: SystemTime| RefuseConsentRequest {
        tenant: TENANT.into(),
        subject_id: subject.into(),
        refusal: Some(ConsentRefused {
            purposes: vec![purpose.into()],
            policy_version: "v1".into(),
            method: ConsentMethod::UntickedCheckbox as i32,
            expressed_by: ExpressedBy::Subject as i32,
        }),
        occurred_at: ts(at),
        event_id: uuid::Uuid::now_v7().to_string(),
        source: "signup-form".into(),
    };
    let history = |mut c: Consent, subject: &'static str| async move {
        c.get_consent_history(GetConsentHistoryRequest {
            tenant: TENANT.into(),
            subject_id: subject.into(),
            purpose: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries
    };
    let receipt = |mut c: Consent, subject: &'static str, record: String| async move {
        let json = c
            .export_consent_receipt(ExportConsentReceiptRequest {
                tenant: TENANT.into(),
                subject_id: subject.into(),
                record_id: record,
            })
            .await
            .unwrap()
            .into_inner()
            .receipt_json;
        serde_json::from_str::<serde_json::Value>(&json).unwrap()
    };

    // Refused: asked and said no. Processing is denied with reason `refused`; the refusal is
    // its own record, in history and as a receipt; a contract purpose cannot be refused.
    let refused = backend
        .refuse_consent(refuse("u-r", "marketing", now - 3 * hour))
        .await
        .unwrap()
        .into_inner();
    let refusal_record = refused.record_ids[0].clone();
    let c = check(&mut backend, "u-r", "marketing", now).await;
    assert_eq!((c.allowed, c.reason.as_str()), (false, "refused"), "{c:?}");
    assert_eq!(c.decided_by_seq, refused.seq);
    let err = backend
        .refuse_consent(refuse("u-r", "provide_service", now))
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("consent_refused.purposes:"),
        "{err}"
    );
    let r = receipt(auditor.clone(), "u-r", refusal_record.clone()).await;
    assert_eq!(r["state"], "refused", "{r}");
    assert_eq!(r["notice"]["version"], "v1");
    // A later grant counts; the refusal stays what it was.
    backend
        .grant_consent(grant("u-r", "marketing", "v1", now - 2 * hour))
        .await
        .unwrap();
    assert!(check(&mut backend, "u-r", "marketing", now).await.allowed);
    let states: Vec<_> = history(auditor.clone(), "u-r")
        .await
        .into_iter()
        .map(|e| (e.change, e.state))
        .collect();
    assert_eq!(
        states,
        [
            ("refused".to_owned(), "refused".to_owned()),
            ("granted".to_owned(), "given".to_owned())
        ]
    );

    // Re-consent required: a material policy change to the purpose took effect after the grant.
    let analytics = backend
        .grant_consent(grant("u-p", "analytics", "v1", now - 2 * hour))
        .await
        .unwrap()
        .into_inner()
        .record_ids
        .remove(0);
    operator
        .publish_policy(PublishPolicyRequest {
            tenant: TENANT.into(),
            version: "v2".into(),
            notice_hash: "sha256:bb".into(),
            effective_at: ts(now - hour),
            purposes: vec!["analytics".into()],
            material: true,
        })
        .await
        .unwrap();
    let entries = history(auditor.clone(), "u-p").await;
    assert_eq!(entries[0].state, "reconsent_required", "{entries:?}");
    assert!(entries[0].state_reason.contains("v2"), "{entries:?}");
    let r = receipt(auditor.clone(), "u-p", analytics).await;
    assert_eq!(r["state"], "reconsent_required", "{r}");
    assert!(r["stateReason"].as_str().unwrap().contains("v2"), "{r}");

    // Invalidated: a grant accepted before the registration showed a 12-year-old gave it.
    let kid = backend
        .grant_consent(grant("kid-5", "marketing", "v2", now))
        .await
        .unwrap()
        .into_inner()
        .record_ids
        .remove(0);
    // 1 January, twelve years before this year: 11 or 12 years old today.
    let year = 1970
        + now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 31_556_952;
    let birth = format!("{}-01-01", year - 12);
    privacy_client::PrivacyClient::connect(&nats.url(), "signup")
        .await
        .unwrap()
        .publish(
            TENANT,
            "kid-5",
            SubjectRegistered {
                birth_date: birth,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while check(&mut backend, "kid-5", "marketing", SystemTime::now())
        .await
        .allowed
    {
        assert!(Instant::now() < deadline, "the registration was not folded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entries = history(auditor.clone(), "kid-5").await;
    assert_eq!(entries[0].state, "invalidated", "{entries:?}");
    assert!(entries[0].state_reason.contains("child"), "{entries:?}");
    assert_eq!(
        receipt(auditor.clone(), "kid-5", kid).await["state"],
        "invalidated"
    );
    svc.stop().await;
}

/// A long history (its older entries moved out to chunks as it grows) is read back whole and in
/// log order, and a check as of an instant deep in it answers from the older entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_read_whole_and_checked_as_of_its_oldest_entries() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    let url = svc.url();
    publish_policy_v1(&url).await;
    let mut backend = consent_client(&url, BACKEND_TOKEN).await;
    let auditor = consent_client(&url, AUDITOR_TOKEN).await;
    let minute = Duration::from_secs(60);
    let start = SystemTime::now() - minute * 24 * 60;
    // 150 changes of marketing (every tenth a withdrawal of it), a grant of analytics every
    // third: far more than one value's worth of entries.
    let changes = 150u32;
    for i in 0..changes {
        let at = start + minute * i;
        if i % 10 == 9 {
            backend
                .withdraw_consent(WithdrawConsentRequest {
                    tenant: TENANT.into(),
                    subject_id: "long-1".into(),
                    purposes: vec!["marketing".into()],
                    occurred_at: ts(at),
                    event_id: uuid::Uuid::now_v7().to_string(),
                    ..Default::default()
                })
                .await
                .unwrap();
        } else {
            backend
                .grant_consent(grant("long-1", "marketing", "v1", at))
                .await
                .unwrap();
        }
        if i % 3 == 0 {
            backend
                .grant_consent(grant("long-1", "analytics", "v1", at))
                .await
                .unwrap();
        }
    }
    let history = |purpose: &str| {
        let mut auditor = auditor.clone();
        let purpose = purpose.to_owned();
        async move {
            auditor
                .get_consent_history(GetConsentHistoryRequest {
                    tenant: TENANT.into(),
                    subject_id: "long-1".into(),
                    purpose,
                })
                .await
                .unwrap()
                .into_inner()
                .entries
        }
    };
    let marketing = history("marketing").await;
    assert_eq!(marketing.len(), changes as usize);
    assert!(marketing.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        marketing.iter().filter(|e| e.change == "withdrawn").count(),
        (changes / 10) as usize
    );
    let all = history("").await;
    assert_eq!(all.len(), (changes + changes.div_ceil(3)) as usize);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    // As of instants in the first minutes: granted at 5, withdrawn at 9, granted again at 10.
    let half = Duration::from_secs(30);
    for (i, allowed) in [(5, true), (9, false), (10, true), (changes - 1, false)] {
        let c = check(
            &mut backend,
            "long-1",
            "marketing",
            start + minute * i + half,
        )
        .await;
        assert_eq!(c.allowed, allowed, "as of change {i}: {c:?}");
    }
    svc.stop().await;
}
