//! Benchmark driver for `scripts/bench/` (not shipped). Subcommands:
//!
//! - `loadgen run`: P patients x E events, each patient's in sequence,
//!   C requests in flight; checks exactly-once and per-patient order.
//! - `loadgen soak` / `loadgen burst`: a constant arrival rate (open loop),
//!   one JSON line per interval, then a lost/duplicated check.
//! - `loadgen mllp` / `loadgen mllp-receiver`: HL7 v2 over MLLP in (and
//!   out, with the receiver), serial per connection.
//! - `loadgen stack`: starts a database and the services, prints where they
//!   are as one JSON line, holds them until stdin closes or SIGTERM.
//!
//! `loadgen help` prints the flags. Figures go to stdout as JSON.

mod cli;
mod common;
mod mllp;
mod open_loop;
mod run;
mod start_stack;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    // A usage error exits 2, as clap's own errors do.
    let result = match Cli::parse().command {
        Command::Run(args) => run::main(args).await,
        Command::Soak(args) => open_loop::main(args.into()).await,
        Command::Burst(args) => open_loop::main(args.into()).await,
        Command::Stack(args) => start_stack::main(args).await,
        Command::Mllp(args) => mllp::main(args).await,
        Command::MllpReceiver(args) => mllp::receiver(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("loadgen: {message}");
            ExitCode::from(2)
        }
    }
}
