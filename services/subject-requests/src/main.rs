//! The `privacy-subject-requests` binary: `serve` (default) or `healthcheck`.

fn main() -> std::process::ExitCode {
    privacy_service_kit::main(privacy_subject_requests::SPEC)
}
