//! The processor service: `POST /queue` on port 3001 (see README).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    medical_events::service_main::main::<medical_events::processor::ProcessorApp>().await
}
