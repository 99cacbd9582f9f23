use std::process::ExitCode;

use medical_events::config::IngestConfig;
use medical_events::startup::IngestApp;
use medical_events::{http, shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        let port = std::env::var("PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(3000);
        return if http::health::probe(port).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let config = match IngestConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ingest: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    let result = match IngestApp::build(config).await {
        Ok(app) => app.run(shutdown::signal()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ingest failed");
            ExitCode::FAILURE
        }
    }
}
