//! Benchmark driver for `scripts/bench.py` (not shipped). Subcommands:
//!
//! - `loadgen run`: P patients x E events, each patient's in sequence,
//!   C requests in flight; checks exactly-once and per-patient order.
//! - `loadgen soak` / `loadgen burst`: a constant arrival rate (open loop),
//!   one JSON line per interval, then a lost/duplicated check.
//!
//! `loadgen help` prints the flags. Figures go to stdout as JSON.

mod cli;
mod common;
mod open_loop;
mod run;

use std::process::ExitCode;

use cli::{Flags, USAGE};

#[tokio::main]
async fn main() -> ExitCode {
    match dispatch().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("loadgen: {message}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        return Err(USAGE.to_owned());
    };
    if matches!(command.as_str(), "help" | "--help" | "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let flags = Flags::parse(rest)?;
    match command.as_str() {
        "run" => run::main(flags).await,
        "soak" => open_loop::main(open_loop::Args::soak(flags)?).await,
        "burst" => open_loop::main(open_loop::Args::burst(flags)?).await,
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    }
}
