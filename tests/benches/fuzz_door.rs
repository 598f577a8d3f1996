//! The long fuzz run of the door (`cargo bench -p privacy-e2e --bench fuzz_door`): by default
//! 100,000 cases (`PRIVACY_FUZZ_CASES` to change), the same generator and property as the e2e
//! test. Prints the case count, the tally and the rate.

use privacy_e2e::door_fuzz;

fn main() {
    let cases: u32 = std::env::var("PRIVACY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let run = door_fuzz::run(cases);
    let t = run.tally;
    println!(
        "fuzz_door: {cases} cases in {:.1} s ({:.0}/s): admitted {}, duplicates {}, refused {}",
        run.elapsed.as_secs_f64(),
        f64::from(cases) / run.elapsed.as_secs_f64(),
        t.admitted,
        t.duplicates,
        t.refused
    );
    if let Some(failure) = run.failure {
        eprintln!("fuzz_door FAILED: {failure}");
        std::process::exit(1);
    }
}
