//! What both binaries' `main` does: the `healthcheck` subcommand, or read
//! the configuration (one clear line and exit code 2 if it is wrong), set up
//! logging, build the service and run it until SIGTERM/SIGINT.

use std::future::Future;
use std::process::ExitCode;

use crate::config::ConfigError;
use crate::http;
use crate::server::StartupError;
use crate::telemetry::{self, LogFormat};

/// A runnable service, as seen from `main`.
pub trait Service: Sized + Send {
    const NAME: &'static str;
    const DEFAULT_PORT: u16;
    type Config: Send;

    fn config_from_env() -> Result<Self::Config, ConfigError>;
    fn log_format(config: &Self::Config) -> LogFormat;
    fn build(config: Self::Config) -> impl Future<Output = Result<Self, StartupError>> + Send;
    fn run(self) -> impl Future<Output = Result<(), StartupError>> + Send;
    /// The service's OpenAPI document (`<binary> openapi` prints it).
    fn openapi() -> String;
}

pub async fn main<S: Service>() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("openapi") {
        print!("{}", S::openapi());
        return ExitCode::SUCCESS;
    }
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        let port = std::env::var("PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(S::DEFAULT_PORT);
        let https = std::env::var_os("TLS_CERT_PATH").is_some_and(|v| !v.is_empty());
        return if http::health::probe(port, https).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let config = match S::config_from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: configuration error: {e}", S::NAME);
            return ExitCode::from(2);
        }
    };
    let _telemetry = telemetry::init(S::log_format(&config), S::NAME);
    let result = match S::build(config).await {
        Ok(service) => service.run().await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ StartupError::Config(_)) => {
            tracing::error!(error = %e, "{} cannot start", S::NAME);
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!(error = %e, "{} failed", S::NAME);
            ExitCode::FAILURE
        }
    }
}
