//! The disclosure log against a real NATS, a real consent service and real gRPC: each example
//! tenant's disclosures recorded (never refused for a rule) and flagged by the rules in force —
//! a state body without its request reference, a transfer abroad without what the
//! jurisdiction requires, consent withdrawn before a consent-based disclosure — the accounting
//! of a subject's disclosures, the recipients to notify, and a consent service that is down:
//! the disclosure stays unchecked and is checked once it is back.

use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use privacy_e2e::*;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_testkit::{NatsServer, free_port};

fn disclosed(
    tenant: &str,
    subject: &str,
    recipient: &str,
    role: RecipientRole,
    country: &str,
    basis: LegalBasis,
    purpose: &str,
) -> Envelope {
    let mut env = envelope(
        subject,
        Payload::DataDisclosed(DataDisclosed {
            recipient: recipient.into(),
            recipient_role: role as i32,
            country: country.into(),
            categories: vec!["contact".into()],
            purpose: purpose.into(),
            legal_basis: basis as i32,
            system: "crm-sync".into(),
            ..Default::default()
        }),
    );
    env.tenant = tenant.into();
    env
}

fn with(mut env: Envelope, change: impl FnOnce(&mut DataDisclosed)) -> Envelope {
    if let Some(Payload::DataDisclosed(d)) = env.payload.as_mut() {
        change(d);
    }
    env
}

fn rules(d: &Disclosure) -> Vec<&str> {
    d.flags.iter().map(|f| f.rule.as_str()).collect()
}

/// The disclosure once the ledger has it and `done` holds.
async fn recorded(
    c: &Disclosures,
    tenant: &str,
    id: &str,
    done: impl Fn(&Disclosure) -> bool,
) -> Disclosure {
    eventually(&format!("disclosure {id}"), || {
        let mut c = c.clone();
        let done = &done;
        async move {
            match c
                .get_disclosure(GetDisclosureRequest {
                    tenant: tenant.into(),
                    disclosure_id: id.into(),
                })
                .await
            {
                Ok(r) => {
                    let d = r.into_inner().disclosure.unwrap();
                    if done(&d) {
                        Ok(d)
                    } else {
                        Err(format!("{d:?}"))
                    }
                }
                Err(s) => Err(s.to_string()),
            }
        }
    })
    .await
}

async fn list(c: &mut Disclosures, tenant: &str, filter: DisclosureFilter) -> Vec<Disclosure> {
    c.list_disclosures(ListDisclosuresRequest {
        tenant: tenant.into(),
        filter: filter as i32,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .disclosures
}

/// ApiWay (RU): a state body with its request reference is recorded clean, without it flagged;
/// a transfer to a country abroad without the regulator's notice is flagged under 152-FZ Art.
/// 12; a business transfer to an acquirer is recorded; a contract error goes to the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ru_disclosures_are_recorded_and_flagged_by_the_rules_in_force() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_disclosure_log::SPEC, &nats.url(), data.path()).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut c = disclosures_client(&svc.url(), AUDITOR_TOKEN).await;
    const RU: &str = "ru-crm";
    let state = |subject: &str| {
        disclosed(
            RU,
            subject,
            "Investigative Committee",
            RecipientRole::StateBody,
            "RU",
            LegalBasis::StateBodyRequest,
            "provide_service",
        )
    };
    let with_ref = with(state("u-ru-1"), |d| d.request_ref = "No. 17/2026".into());
    let without_ref = state("u-ru-2");
    let abroad = disclosed(
        RU,
        "u-ru-1",
        "Partner Ltd",
        RecipientRole::Partner,
        "CF",
        LegalBasis::Contract,
        "provide_service",
    );
    let acquirer = with(
        disclosed(
            RU,
            "u-ru-3",
            "NewCo LLC",
            RecipientRole::Acquirer,
            "RU",
            LegalBasis::BusinessTransfer,
            "provide_service",
        ),
        |d| d.categories = vec!["contact".into(), "account".into()],
    );
    let bad = with(state("u-ru-4"), |d| d.country = "Russia".into());
    for env in [&with_ref, &without_ref, &abroad, &acquirer, &bad] {
        publish_acked(&js, env).await;
    }

    let d = recorded(&c, RU, &with_ref.event_id, |_| true).await;
    assert!(d.flags.is_empty(), "{d:?}");
    // The reference is sealed at rest and opened for display.
    assert_eq!(d.disclosure.as_ref().unwrap().request_ref, "No. 17/2026");
    let d = recorded(&c, RU, &without_ref.event_id, |d| !d.flags.is_empty()).await;
    assert_eq!(rules(&d), ["state_body_without_request"]);
    let d = recorded(&c, RU, &abroad.event_id, |d| !d.flags.is_empty()).await;
    assert!(d.cross_border);
    // The policy's own promise (4.4) and the law's notice requirement.
    assert_eq!(rules(&d), ["policy_no_cross_border", "cross_border"]);
    assert!(d.flags[1].citation.contains("152-FZ Art. 12"), "{d:?}");
    assert!(d.flags[1].detail.contains("rkn-notice"), "{d:?}");
    let d = recorded(&c, RU, &acquirer.event_id, |_| true).await;
    assert!(d.flags.is_empty() && !d.cross_border, "{d:?}");
    assert_eq!(d.consent_check(), ConsentCheck::NotNeeded);

    let dead = fetch_messages(&js, "PRIVACY_DLQ", "privacy.dlq.disclosure-log.>", 1).await;
    let field = dead[0].headers.as_ref().unwrap().get("Privacy-Error-Field");
    assert_eq!(field.map(|v| v.as_str()), Some("data_disclosed.country"));

    let ids = |list: Vec<Disclosure>| -> Vec<String> {
        list.into_iter().map(|d| d.disclosure_id).collect()
    };
    let states = ids(list(&mut c, RU, DisclosureFilter::StateBody).await);
    assert_eq!(states.len(), 2);
    assert!(states.contains(&with_ref.event_id) && states.contains(&without_ref.event_id));
    let flagged = ids(list(&mut c, RU, DisclosureFilter::Flagged).await);
    assert_eq!(flagged.len(), 2);
    assert_eq!(
        ids(list(&mut c, RU, DisclosureFilter::CrossBorder).await),
        std::slice::from_ref(&abroad.event_id)
    );
    assert_eq!(list(&mut c, RU, DisclosureFilter::All).await.len(), 4);
    let acquired = c
        .list_disclosures(ListDisclosuresRequest {
            tenant: RU.into(),
            filter: DisclosureFilter::Basis as i32,
            value: "business_transfer".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .disclosures;
    assert_eq!(ids(acquired), std::slice::from_ref(&acquirer.event_id));
    assert!(list(&mut c, TENANT, DisclosureFilter::All).await.is_empty());
    svc.stop().await;
}

/// Apix (VN) with the consent service: a partner disclosure under consent while consent was
/// given is valid, after the withdrawal it is flagged naming the withdrawal's position in
/// consent's log; an aggregate disclosure has no subject. While consent is down a
/// consent-based disclosure stays unchecked, and is checked once consent is back. The
/// accounting lists exactly the subject's disclosures since the look-back; the recipients to
/// notify list each recipient once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vn_consent_based_disclosures_are_checked_against_consent_at_their_instant() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let consent_addr = format!("127.0.0.1:{}", free_port());
    let consent_url = format!("http://{consent_addr}");
    let consent_env = [("PRIVACY_GRPC_ADDR", consent_addr.as_str())];
    let consent = InProcess::start_with(
        privacy_consent::SPEC,
        &nats.url(),
        data.path(),
        &consent_env,
    )
    .await;
    publish_policy_v1(&consent.url()).await;
    let svc = InProcess::start_with(
        privacy_disclosure_log::SPEC,
        &nats.url(),
        data.path(),
        &[("PRIVACY_CONSENT_URL", &consent_url)],
    )
    .await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut c = disclosures_client(&svc.url(), AUDITOR_TOKEN).await;

    let s = "u-vn-withdraws";
    let ago =
        |secs: u64| prost_types::Timestamp::from(SystemTime::now() - Duration::from_secs(secs));
    let mut grant = envelope(s, granted("marketing"));
    grant.occurred_at = Some(ago(600));
    let mut withdrawal = envelope(
        s,
        Payload::ConsentWithdrawn(ConsentWithdrawn {
            purposes: vec!["marketing".into()],
            method: "settings".into(),
            ..Default::default()
        }),
    );
    withdrawal.occurred_at = Some(ago(300));
    publish_acked(&js, &grant).await;
    publish_acked(&js, &withdrawal).await;
    let mut audit = audit_client(&consent.url(), Some(AUDITOR_TOKEN)).await;
    wait_for_head(&mut audit, 3, Duration::from_secs(20)).await;

    let partner = |secs: u64| {
        let mut e = disclosed(
            TENANT,
            s,
            "Ad Partner Pte",
            RecipientRole::Partner,
            "VN",
            LegalBasis::Consent,
            "marketing",
        );
        e.occurred_at = Some(ago(secs));
        e
    };
    let while_given = partner(450);
    let after = partner(60);
    let mut cohort = with(
        disclosed(
            TENANT,
            "",
            "Statistics Office",
            RecipientRole::StateBody,
            "VN",
            LegalBasis::Anonymised,
            "analytics",
        ),
        |d| {
            d.cohort_ref = "2026-Q3-active".into();
            d.request_ref = "GSO-2026-4".into();
        },
    );
    cohort.subject_id.clear();
    for env in [&while_given, &after, &cohort] {
        publish_acked(&js, env).await;
    }
    let valid = recorded(&c, TENANT, &while_given.event_id, |d| {
        d.consent_check() != ConsentCheck::Unchecked
    })
    .await;
    assert_eq!(valid.consent_check(), ConsentCheck::Valid, "{valid:?}");
    assert!(valid.flags.is_empty());
    let invalid = recorded(&c, TENANT, &after.event_id, |d| !d.flags.is_empty()).await;
    assert_eq!(invalid.consent_check(), ConsentCheck::Invalid);
    assert_eq!(invalid.consent_reason, "withdrawn");
    assert_eq!(rules(&invalid), ["no_valid_consent"]);
    // The withdrawal is the third event of consent's log (policy, grant, withdrawal).
    assert_eq!(invalid.consent_decided_by_seq, 3, "{invalid:?}");
    assert!(
        invalid.flags[0].detail.contains("position 3"),
        "{invalid:?}"
    );
    let agg = recorded(&c, TENANT, &cohort.event_id, |_| true).await;
    assert!(agg.subject_id.is_empty() && agg.flags.is_empty(), "{agg:?}");
    assert_eq!(agg.consent_check(), ConsentCheck::NotNeeded);

    // Consent down: recorded unchecked (through RecordDisclosure this time), checked once back.
    consent.stop().await;
    let mut backend = disclosures_client(&svc.url(), BACKEND_TOKEN).await;
    let mut while_down = partner(30);
    while_down.event_id = uuid::Uuid::now_v7().to_string();
    let Some(Payload::DataDisclosed(body)) = while_down.payload.clone() else {
        unreachable!()
    };
    let record = RecordDisclosureRequest {
        tenant: TENANT.into(),
        subject_id: s.into(),
        disclosure: Some(body),
        event_id: while_down.event_id.clone(),
        disclosed_at: while_down.occurred_at,
        source: "crm".into(),
    };
    let first = backend
        .record_disclosure(record.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate);
    let again = backend
        .record_disclosure(record)
        .await
        .unwrap()
        .into_inner();
    assert!(
        again.duplicate && again.seq == first.seq,
        "a retry is stored once"
    );
    let d = first.disclosure.unwrap();
    assert_eq!(d.consent_check(), ConsentCheck::Unchecked);
    let unchecked = list(&mut c, TENANT, DisclosureFilter::Unchecked).await;
    assert_eq!(unchecked.len(), 1);
    let consent = InProcess::start_with(
        privacy_consent::SPEC,
        &nats.url(),
        data.path(),
        &consent_env,
    )
    .await;
    let d = recorded(&c, TENANT, &while_down.event_id, |d| {
        d.consent_check() != ConsentCheck::Unchecked
    })
    .await;
    assert_eq!(d.consent_check(), ConsentCheck::Invalid);
    assert!(
        list(&mut c, TENANT, DisclosureFilter::Unchecked)
            .await
            .is_empty()
    );

    // Another subject's disclosure, and an old one of this subject beyond the look-back.
    let mut other = partner(20);
    other.subject_id = "u-vn-other".into();
    let mut old = with(
        disclosed(
            TENANT,
            s,
            "Courier JSC",
            RecipientRole::Processor,
            "VN",
            LegalBasis::Contract,
            "provide_service",
        ),
        |d| d.recipient_natural_person = false,
    );
    old.occurred_at = Some(ago(4 * 365 * 86_400));
    publish_acked(&js, &other).await;
    publish_acked(&js, &old).await;
    recorded(&c, TENANT, &old.event_id, |_| true).await;
    recorded(&c, TENANT, &other.event_id, |_| true).await;
    let accounting = c
        .accounting_of_disclosures(AccountingOfDisclosuresRequest {
            tenant: TENANT.into(),
            subject_id: s.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .disclosures;
    let got: Vec<&str> = accounting
        .iter()
        .map(|d| d.disclosure_id.as_str())
        .collect();
    assert_eq!(
        got,
        [
            while_down.event_id.as_str(),
            after.event_id.as_str(),
            while_given.event_id.as_str()
        ],
        "newest first, only this subject, within three years"
    );
    let recipients = c
        .recipients_to_notify(RecipientsToNotifyRequest {
            tenant: TENANT.into(),
            subject_id: s.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .recipients;
    let seen: Vec<(&str, u32)> = recipients
        .iter()
        .map(|r| (r.recipient.as_str(), r.disclosures))
        .collect();
    assert_eq!(seen, [("Ad Partner Pte", 3), ("Courier JSC", 1)]);
    svc.stop().await;
    consent.stop().await;
}

/// APIShift (AU): an overseas disclosure without the APP 8 steps is flagged; with them, not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn au_overseas_disclosures_need_app_8_steps() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_disclosure_log::SPEC, &nats.url(), data.path()).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let c = disclosures_client(&svc.url(), AUDITOR_TOKEN).await;
    const AU: &str = "au-messenger";
    let overseas = disclosed(
        AU,
        "u-au-1",
        "Cloud Support Inc",
        RecipientRole::Processor,
        "US",
        LegalBasis::Contract,
        "provide_service",
    );
    let with_steps = with(overseas.clone(), |d| {
        d.transfer_mechanism = "app8-steps".into();
    });
    let mut with_steps = with_steps;
    with_steps.event_id = uuid::Uuid::now_v7().to_string();
    publish_acked(&js, &overseas).await;
    publish_acked(&js, &with_steps).await;
    let d = recorded(&c, AU, &overseas.event_id, |d| !d.flags.is_empty()).await;
    assert_eq!(rules(&d), ["cross_border"]);
    assert!(d.flags[0].citation.contains("APP 8.1"), "{d:?}");
    let d = recorded(&c, AU, &with_steps.event_id, |_| true).await;
    assert!(d.cross_border && d.flags.is_empty(), "{d:?}");
    svc.stop().await;
}
