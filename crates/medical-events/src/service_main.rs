//! What both binaries' `main` does: parse the command line (clap; only
//! subcommands, since every setting comes from the environment), then the
//! `healthcheck` or `openapi` subcommand, or read the configuration (one
//! clear line and exit code 2 if it is wrong), set up logging, build the
//! service and run it until SIGTERM/SIGINT.

use std::future::Future;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::ConfigError;
use crate::http;
use crate::server::StartupError;
use crate::telemetry::{self, LogFormat};

/// A runnable service, as seen from `main`.
pub trait Service: Sized + Send {
    const NAME: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    const DEFAULT_PORT: u16;
    type Config: Send;

    fn config_from_env() -> Result<Self::Config, ConfigError>;
    fn log_format(config: &Self::Config) -> LogFormat;
    fn build(config: Self::Config) -> impl Future<Output = Result<Self, StartupError>> + Send;
    fn run(self) -> impl Future<Output = Result<(), StartupError>> + Send;
    /// The service's OpenAPI document (`<binary> openapi` prints it).
    fn openapi() -> String;
}

/// The command line of both binaries. No flags: the configuration is the
/// environment's (README's table), as containers and `make run` set it.
#[derive(Parser, Debug)]
#[command(
    after_help = "Without a subcommand it runs the service, configured from the \
environment (see the README's table of settings); a configuration error exits 2."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
enum Command {
    /// Exit 0 if the service on PORT (the environment's, else its default)
    /// answers GET /health, 1 otherwise: for container HEALTHCHECKs in
    /// images without curl.
    Healthcheck,
    /// Print the service's OpenAPI document.
    Openapi,
}

impl Cli {
    /// Parses this process's arguments under the binary's name; a usage
    /// error exits 2 (clap's code, the same as a configuration error), `--help` 0.
    fn of<S: Service>() -> Self {
        let matches = Self::command()
            .name(S::NAME)
            .bin_name(S::NAME)
            .about(S::ABOUT)
            .get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

pub async fn main<S: Service>() -> ExitCode {
    match Cli::of::<S>().command {
        Some(Command::Openapi) => {
            print!("{}", S::openapi());
            ExitCode::SUCCESS
        }
        Some(Command::Healthcheck) => healthcheck::<S>().await,
        None => serve::<S>().await,
    }
}

async fn healthcheck<S: Service>() -> ExitCode {
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(S::DEFAULT_PORT);
    let https = std::env::var_os("TLS_CERT_PATH").is_some_and(|v| !v.is_empty());
    if http::health::probe(port, https).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn serve<S: Service>() -> ExitCode {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ingest").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommands_and_no_subcommand() {
        assert_eq!(parse(&[]).unwrap().command, None);
        assert_eq!(
            parse(&["healthcheck"]).unwrap().command,
            Some(Command::Healthcheck)
        );
        assert_eq!(parse(&["openapi"]).unwrap().command, Some(Command::Openapi));
    }

    #[test]
    fn anything_else_is_a_usage_error_exiting_2() {
        for args in [
            &["serve"][..],
            &["--port", "3000"],
            &["healthcheck", "extra"],
        ] {
            let error = parse(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }
}
