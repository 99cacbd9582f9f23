//! The ingest service: `POST /events` on port 3000 (see README).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    medical_events::service_main::main::<medical_events::ingest::IngestApp>().await
}
