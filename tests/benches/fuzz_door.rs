//! The long fuzz run of the door (`cargo bench -p privacy-e2e --bench fuzz_door`): by default
//! 100,000 cases (`PRIVACY_FUZZ_CASES` to change), the same generator and property as the e2e
//! test. Prints the case count, the tally and the rate.

use std::time::Instant;

use privacy_e2e::door_fuzz::{Tally, inputs, run_case};
use privacy_e2e::*;
use privacy_testkit::NatsServer;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn main() {
    let cases: u32 = std::env::var("PRIVACY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let nats = NatsServer::start();
    let data = tempfile::tempdir().expect("a temporary directory");
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
    let start = Instant::now();
    let result = runner.run(&inputs(), |input| {
        let mut t = tally.lock().expect("not poisoned");
        rt.block_on(run_case(&ctx, &input, &mut t))
            .map_err(TestCaseError::fail)
    });
    let elapsed = start.elapsed();
    let t = *tally.lock().expect("not poisoned");
    println!(
        "fuzz_door: {cases} cases in {:.1} s ({:.0}/s): admitted {}, duplicates {}, refused {}",
        elapsed.as_secs_f64(),
        f64::from(cases) / elapsed.as_secs_f64(),
        t.admitted,
        t.duplicates,
        t.refused
    );
    rt.block_on(svc.stop());
    if let Err(e) = result {
        eprintln!("fuzz_door FAILED: {e}");
        std::process::exit(1);
    }
}
