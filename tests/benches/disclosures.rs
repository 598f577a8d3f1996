//! Disclosure-log benchmark, against real nats-servers and a real consent service:
//! (a) recording throughput — consent-based `data.disclosed` pulled from NATS, checked and
//! stored with what they imply, then each asked of consent as of its instant — beside the
//! ingest floor (pull → sled batch → flush + fdatasync → ack) over the same events in the same
//! run; (b) `AccountingOfDisclosures` latency for a subject with 1,000 disclosures among
//! BENCH_LEDGER (default 1,000,000) in the ledger.
//!
//! Run: `cargo bench -p privacy-e2e --bench disclosures` (BENCH_EVENTS, default 20,000, for (a);
//! BENCH_LEDGER for (b)).

use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use privacy_e2e::bench_kit::{Stats, env_count, runtime};
use privacy_e2e::*;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;

#[path = "common/floor.rs"]
mod floor;

use floor::floor;

const SUBJECTS: usize = 2000;

fn disclosure(subject: &str, basis: LegalBasis, at: SystemTime) -> Envelope {
    let mut env = envelope(
        subject,
        Payload::DataDisclosed(DataDisclosed {
            recipient: "Ad Partner Pte".into(),
            recipient_role: RecipientRole::Partner as i32,
            country: "VN".into(),
            categories: vec!["contact".into()],
            purpose: "marketing".into(),
            legal_basis: basis as i32,
            system: "crm".into(),
            ..Default::default()
        }),
    );
    env.occurred_at = Some(at.into());
    env
}

/// How many disclosures the ledger shows unchecked.
async fn unchecked(c: &mut Disclosures) -> usize {
    c.list_disclosures(ListDisclosuresRequest {
        tenant: TENANT.into(),
        filter: DisclosureFilter::Unchecked as i32,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .disclosures
    .len()
}

/// (a) Recording with the consent check, beside the floor.
async fn recording(n: usize) {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let bus = privacy_bus::BusConfig {
        url: nats.url(),
        ..Default::default()
    };
    privacy_bus::ensure_streams(&js, &bus).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let consent = InProcess::start(privacy_consent::SPEC, &nats.url(), data.path()).await;
    publish_policy_v1(&consent.url()).await;
    // Half the subjects consented; the other half's disclosures are flagged.
    let yesterday = SystemTime::now() - Duration::from_secs(3600);
    publish_pipelined(
        &js,
        (0..SUBJECTS / 2).map(|i| {
            let mut g = envelope(&format!("u-{i}"), granted("marketing"));
            g.occurred_at = Some(yesterday.into());
            g
        }),
    )
    .await;
    let mut audit = audit_client(&consent.url(), Some(AUDITOR_TOKEN)).await;
    wait_for_head(&mut audit, 1 + SUBJECTS as u64 / 2, Duration::from_secs(60)).await;
    // The disclosure-log's consumer exists before the events are published.
    let consent_url = consent.url();
    let extra = [("PRIVACY_CONSENT_URL", consent_url.as_str())];
    InProcess::start_with(
        privacy_disclosure_log::SPEC,
        &nats.url(),
        data.path(),
        &extra,
    )
    .await
    .stop()
    .await;
    let now = SystemTime::now();
    publish_pipelined(
        &js,
        (0..n).map(|i| disclosure(&format!("u-{}", i % SUBJECTS), LegalBasis::Consent, now)),
    )
    .await;
    let floor_rate = floor(&js, "privacy.in.vn-apihub.data.disclosed", n).await;

    let start = Instant::now();
    let svc = InProcess::start_with(
        privacy_disclosure_log::SPEC,
        &nats.url(),
        data.path(),
        &extra,
    )
    .await;
    let mut head = svc.service.store.watch_head();
    // Each disclosure is stored with its disclosure.recorded; half are flagged at the check.
    while (head.borrow_and_update().seq as usize) < 2 * n {
        tokio::time::timeout(Duration::from_secs(300), head.changed())
            .await
            .expect("ingest progresses")
            .unwrap();
    }
    let recorded = start.elapsed();
    // Then each disclosure.consent_checked, and a flag for the half without consent.
    while (head.borrow_and_update().seq as usize) < 3 * n + n / 2 {
        tokio::time::timeout(Duration::from_secs(300), head.changed())
            .await
            .expect("checks progress")
            .unwrap();
    }
    let checked = start.elapsed();
    let folded = head.borrow().seq;
    svc.service
        .projector
        .wait_for(folded, Duration::from_secs(60))
        .await;
    let mut c = disclosures_client(&svc.url(), AUDITOR_TOKEN).await;
    assert_eq!(unchecked(&mut c).await, 0, "every disclosure checked");
    let record_rate = n as f64 / recorded.as_secs_f64();
    let checked_rate = n as f64 / checked.as_secs_f64();
    println!(
        "ingest floor (pull → sled batch → flush+fdatasync → ack): {floor_rate:>8.0} disclosures/s"
    );
    println!(
        "recorded (stored with disclosure.recorded):               {record_rate:>8.0} disclosures/s  ratio {:.2}",
        record_rate / floor_rate
    );
    println!(
        "recorded and consent-checked as of their instant:         {checked_rate:>8.0} disclosures/s  ratio {:.2}",
        checked_rate / floor_rate
    );
    svc.stop().await;
    consent.stop().await;
}

/// (b) AccountingOfDisclosures for one subject's 1,000 disclosures among `total`.
async fn accounting(total: usize) {
    const MINE: usize = 1000;
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let data = tempfile::tempdir().unwrap();
    let svc = InProcess::start(privacy_disclosure_log::SPEC, &nats.url(), data.path()).await;
    // Spread over the last two years; every `total / MINE`-th is the subject's.
    let now = SystemTime::now();
    let span = 2 * 365 * 86_400u64;
    let every = (total / MINE).max(1);
    let t = Instant::now();
    publish_pipelined(
        &js,
        (0..total).map(|i| {
            let subject = if i % every == 0 && i / every < MINE {
                "u-target".to_owned()
            } else {
                format!("u-{}", i % 100_000)
            };
            let at = now - Duration::from_secs(span * (total - i) as u64 / total as u64 + 1);
            disclosure(&subject, LegalBasis::Contract, at)
        }),
    )
    .await;
    let mut head = svc.service.store.watch_head();
    while (head.borrow_and_update().seq as usize) < 2 * total {
        tokio::time::timeout(Duration::from_secs(600), head.changed())
            .await
            .expect("ingest progresses")
            .unwrap();
    }
    println!(
        "ledger of {total} disclosures stored in {:.0} s ({:.0} disclosures/s)",
        t.elapsed().as_secs_f64(),
        total as f64 / t.elapsed().as_secs_f64()
    );
    svc.service
        .projector
        .wait_for(2 * total as u64, Duration::from_secs(600))
        .await;
    let mut c = disclosures_client(&svc.url(), AUDITOR_TOKEN).await;
    let mut latencies = Vec::new();
    let start = Instant::now();
    for _ in 0..50 {
        let t = Instant::now();
        let got = c
            .accounting_of_disclosures(AccountingOfDisclosuresRequest {
                tenant: TENANT.into(),
                subject_id: "u-target".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        latencies.push(t.elapsed());
        assert_eq!(got.disclosures.len(), MINE);
        assert!(!got.truncated);
    }
    let s = Stats::of(latencies, start.elapsed());
    println!(
        "AccountingOfDisclosures, {MINE} of {total}: median {:.1} ms, p99 {:.1} ms",
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3
    );
    svc.stop().await;
}

fn main() {
    let n = env_count("BENCH_EVENTS", 20_000);
    let total = env_count("BENCH_LEDGER", 1_000_000);
    runtime().block_on(async {
        recording(n).await;
        accounting(total).await;
    });
}
