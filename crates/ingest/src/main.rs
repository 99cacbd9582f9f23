//! The ingest service: `POST /events` on port 3000 (see README).

/// BSON documents are many small allocations: mimalloc serves them with
/// a fraction of glibc malloc's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    medical_events::service_main::main::<medical_events::ingest::IngestApp>().await
}
