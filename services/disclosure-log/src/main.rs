//! The `privacy-disclosure-log` binary: `serve` (default) or `healthcheck`.

fn main() -> std::process::ExitCode {
    privacy_service_kit::main(privacy_disclosure_log::SPEC)
}
