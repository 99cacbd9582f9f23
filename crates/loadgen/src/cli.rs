//! The command line (clap derive): one subcommand per driver, and `stack`.
//! Flag names and defaults are the ones `scripts/bench/` and BENCHMARKS.md
//! use.

use std::path::PathBuf;

use clap::builder::RangedU64ValueParser;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Benchmark driver (not shipped): closed-loop runs, open-loop soak and burst, and the stacks they run against.",
    after_help = "Figures go to stdout as JSON. The Mongo URI must name the database the services use."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// P patients x E events, each patient's events in sequence, C senders;
    /// waits for every outcome and checks exactly-once and order.
    Run(RunArgs),
    /// Open loop: a constant arrival rate, event i to patient i % patients;
    /// one JSON line per interval, then a summary after the backlog drains.
    Soak(SoakArgs),
    /// The soak driver with burst defaults.
    Burst(BurstArgs),
    /// Starts a database and N processors and M ingest instances, prints
    /// one JSON line describing them, and keeps them until stdin closes or
    /// SIGTERM/SIGINT arrives; then stops them as scripts/run.sh does.
    Stack(StackArgs),
    /// HL7 v2 over MLLP: P patients x M messages over C connections, each
    /// connection serial (a message, its ACK, the next); with --wait, until
    /// every outcome is recorded.
    Mllp(MllpArgs),
    /// A receiving system for MLLP delivery out: holds each message, answers
    /// AA, prints its port, and on stdin's close what it received.
    MllpReceiver(MllpReceiverArgs),
}

#[derive(Args, Debug)]
pub struct MllpArgs {
    /// The MLLP listener, HOST:PORT.
    #[arg(long)]
    pub address: String,
    /// MongoDB URI naming the database the services use.
    #[arg(long)]
    pub mongo: String,
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub connections: usize,
    #[arg(long, default_value_t = 1000)]
    pub patients: usize,
    /// Messages per patient.
    #[arg(long, default_value_t = 5)]
    pub messages: usize,
    /// Wait until every message has its outcome (delivered out).
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait for the outcomes.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct MllpReceiverArgs {
    /// 0: any free port (printed).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[arg(long, default_value_t = 5000)]
    pub hold_min_ms: u64,
    #[arg(long, default_value_t = 6000)]
    pub hold_max_ms: u64,
}

/// The stack a driver sends to.
#[derive(Args, Debug)]
pub struct Target {
    /// Ingest's base URL.
    #[arg(long)]
    pub url: String,
    /// MongoDB URI naming the database the services use.
    #[arg(long)]
    pub mongo: String,
    /// The API key sent as `Authorization: Bearer`.
    #[arg(
        long,
        env = "API_KEY",
        default_value = "dev-ingest-key-change-me",
        hide_env_values = true
    )]
    pub api_key: String,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, default_value_t = 1000)]
    pub patients: usize,
    /// Events per patient.
    #[arg(long, default_value_t = 5)]
    pub events: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64, value_parser = at_least_one())]
    pub concurrency: usize,
    /// Seconds to wait for every outcome.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// Events per second.
    #[arg(long, default_value_t = 1_000.0, value_parser = positive_rate)]
    pub rate: f64,
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Seconds per reported interval (60: "kind":"minute").
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: u64,
    #[command(flatten)]
    pub open_loop: OpenLoopArgs,
}

#[derive(Args, Debug)]
pub struct BurstArgs {
    /// Events per second.
    #[arg(long, default_value_t = 10_000.0, value_parser = positive_rate)]
    pub rate: f64,
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Seconds per reported interval.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: u64,
    #[command(flatten)]
    pub open_loop: OpenLoopArgs,
}

/// What soak and burst share.
#[derive(Args, Debug)]
pub struct OpenLoopArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub patients: u64,
    /// Requests in flight at most; a start beyond it is dropped by the client.
    #[arg(long, default_value_t = 8_192, value_parser = in_flight())]
    pub max_in_flight: usize,
    /// Seconds before a request counts as a transport error.
    #[arg(long, default_value_t = 30)]
    pub request_timeout: u64,
    /// Seconds to wait for the backlog to drain after the last interval.
    #[arg(long, default_value_t = 600)]
    pub drain_timeout: u64,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("mongo").required(true).args(["database", "mongo_base"])))]
pub struct StackArgs {
    /// Start this SecantusDB server on a fresh store (stopped after the services).
    #[arg(long, value_enum)]
    pub database: Option<DatabaseArg>,
    /// Or use the server already running here (`mongodb://host:port`).
    #[arg(long)]
    pub mongo_base: Option<String>,
    /// The database the services use [default: stack_<unix time>_<pid>].
    #[arg(long)]
    pub db_name: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub processors: usize,
    /// Ingest instances (each nudges the first processor).
    #[arg(long, default_value_t = 1)]
    pub ingest: usize,
    /// KEY=VALUE in every service's environment (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// KEY=VALUE in the processors' environment (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
    pub processor_env: Vec<(String, String)>,
    /// KEY=VALUE in ingest's environment (repeatable; PROCESSOR_URL overrides the default).
    #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
    pub ingest_env: Vec<(String, String)>,
    /// Where the logs (and a fresh store) go.
    #[arg(long, default_value = "target/stack")]
    pub log_dir: PathBuf,
    /// Prefix of the log files' names [default: the database name].
    #[arg(long)]
    pub name: Option<String>,
    /// The compiled server's `--cache-size` (as scripts/start-mongo.sh).
    #[arg(long, env = "MONGO_CACHE_SIZE", default_value = stack::DEFAULT_CACHE_SIZE)]
    pub cache_size: String,
    /// The server binary [default: the project's install of --database].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Keep the store here (not deleted; `:memory:` for the Python server)
    /// instead of a fresh directory under --log-dir that is deleted at the end.
    #[arg(long)]
    pub storage: Option<String>,
    /// Where the `ingest` and `processor` binaries are [default: next to loadgen].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Seconds each service may drain after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 30)]
    pub stop_timeout: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum DatabaseArg {
    /// secantusd-rs, as make run and make bench use.
    Compiled,
    /// secantusd-py, the test suite's server.
    Python,
}

fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

fn in_flight() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..=Semaphore::MAX_PERMITS as u64)
}

fn positive_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err("must be a positive number of events per second".to_owned()),
    }
}

fn key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{raw:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn burst_and_soak_keep_their_own_defaults() {
        let Command::Burst(burst) = parse(&["burst", "--url", "u", "--mongo", "m"])
            .unwrap()
            .command
        else {
            panic!("burst")
        };
        assert_eq!(
            (burst.rate, burst.seconds, burst.interval),
            (10_000.0, 30, 5)
        );
        let Command::Soak(soak) = parse(&["soak", "--url=u", "--mongo=m"]).unwrap().command else {
            panic!("soak")
        };
        assert_eq!((soak.rate, soak.seconds, soak.interval), (1_000.0, 600, 60));
        assert_eq!(soak.open_loop.max_in_flight, 8_192);
    }

    #[test]
    fn refuses_what_the_hand_parser_refused() {
        let run = ["run", "--url", "u", "--mongo", "m"];
        assert!(parse(&run).is_ok());
        assert!(parse(&[&run[..], &["--concurrency", "0"]].concat()).is_err());
        assert!(parse(&[&run[..], &["--patients", "1", "--patients", "2"]].concat()).is_err());
        assert!(parse(&[&run[..], &["--bogus", "1"]].concat()).is_err());
        assert!(parse(&["run", "--url", "u"]).is_err());
        let soak = ["soak", "--url", "u", "--mongo", "m"];
        assert!(parse(&[&soak[..], &["--rate", "0"]].concat()).is_err());
        assert!(parse(&[&soak[..], &["--max-in-flight", "0"]].concat()).is_err());
    }

    #[test]
    fn stack_needs_one_database_and_reads_key_values() {
        assert!(parse(&["stack"]).is_err());
        assert!(
            parse(&[
                "stack",
                "--database",
                "compiled",
                "--mongo-base",
                "mongodb://x"
            ])
            .is_err()
        );
        let Command::Stack(stack) = parse(&[
            "stack",
            "--database",
            "python",
            "--env",
            "A=1=2",
            "--processor-env",
            "DELIVERY_URL=http://x",
        ])
        .unwrap()
        .command
        else {
            panic!("stack")
        };
        assert_eq!(stack.env, [("A".to_owned(), "1=2".to_owned())]);
        assert_eq!(stack.processors, 1);
        assert!(parse(&["stack", "--mongo-base", "m", "--env", "novalue"]).is_err());
    }
}
