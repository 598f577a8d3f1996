//! The door, fuzzed: a few thousand arbitrary and mutated inputs (protobuf and JSON) through
//! decode → validate → domain check → seal; nothing panics and every refusal names a field.
//! `PRIVACY_FUZZ_CASES` sets the count; the `fuzz_door` bench runs 100k and more.

use privacy_e2e::door_fuzz;

#[test]
fn the_door_never_panics_and_every_refusal_names_a_field() {
    let cases = std::env::var("PRIVACY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let run = door_fuzz::run(cases);
    if let Some(failure) = run.failure {
        panic!("{failure}");
    }
    let t = run.tally;
    assert!(
        t.admitted > 0 && t.refused > 0,
        "the inputs reach both ends: {t:?}"
    );
}
