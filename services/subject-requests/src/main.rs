//! The `privacy-subject-requests` binary: `serve` (default) or `healthcheck`.

/// jemalloc, not glibc's malloc: with glibc the service's per-thread arenas kept what
/// short-lived batches freed, and its memory climbed with the log while ingesting (README,
/// Performance).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    privacy_service_kit::main(privacy_subject_requests::SPEC)
}
