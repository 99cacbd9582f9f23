//! The processor service: `POST /queue` on port 3001 (see README).

/// BSON documents are many small allocations: mimalloc serves them with
/// a fraction of glibc malloc's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    medical_events::service_main::main::<medical_events::processor::ProcessorApp>().await
}
