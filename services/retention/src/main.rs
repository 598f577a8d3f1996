//! The `privacy-retention` binary: `serve` (default) or `healthcheck`.

fn main() -> std::process::ExitCode {
    privacy_service_kit::main(privacy_retention::SPEC)
}
