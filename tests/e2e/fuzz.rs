//! The door, fuzzed: a few thousand arbitrary and mutated inputs (protobuf and JSON) through
//! decode → validate → domain check → seal; nothing panics and every refusal names a field.
//! `PRIVACY_FUZZ_CASES` sets the count; the `fuzz_door` bench runs 100k and more.

use privacy_e2e::door_fuzz::{Tally, inputs, run_case};
use privacy_e2e::*;
use privacy_testkit::NatsServer;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

#[test]
fn the_door_never_panics_and_every_refusal_names_a_field() {
    let cases = std::env::var("PRIVACY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let svc = rt.block_on(InProcess::start(
        privacy_consent::SPEC,
        &nats.url(),
        data.path(),
    ));
    rt.block_on(publish_policy_v1(&svc.url()));
    let ctx = svc.service.context.clone();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let tally = std::sync::Mutex::new(Tally::default());
    let result = runner.run(&inputs(), |input| {
        let mut t = tally.lock().unwrap();
        rt.block_on(run_case(&ctx, &input, &mut t))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let t = *tally.lock().unwrap();
    assert!(
        t.admitted > 0 && t.refused > 0,
        "the inputs reach both ends: {t:?}"
    );
    rt.block_on(svc.stop());
}
