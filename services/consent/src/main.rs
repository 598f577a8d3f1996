//! The `privacy-consent` binary: `serve` (default) or `healthcheck`.

fn main() -> std::process::ExitCode {
    privacy_service_kit::main(privacy_consent::SPEC)
}
