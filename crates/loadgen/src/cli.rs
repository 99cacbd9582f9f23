//! Hand-parsed command line: a subcommand, then `--name value` flags.
//! Small enough that a parser crate would cost more than it saves.

use std::collections::HashMap;
use std::str::FromStr;

pub const USAGE: &str = "\
usage: loadgen <command> [--flag value]...

commands:
  run    P patients x E events, each patient's events in sequence, C senders;
         waits for every outcome and checks exactly-once and order
         --url URL --mongo URI [--patients 1000] [--events 5]
         [--concurrency 64] [--timeout 600]
  soak   open loop: a constant arrival rate, event i to patient i % patients;
         one JSON line per interval, then a summary after the backlog drains
         --url URL --mongo URI [--rate 1000] [--seconds 600] [--patients 10000]
         [--interval 60] [--max-in-flight 8192] [--request-timeout 30]
         [--drain-timeout 600]
  burst  the soak driver with burst defaults:
         [--rate 10000] [--seconds 30] [--interval 5], other flags as soak

The API key comes from the environment (API_KEY); the Mongo URI must name
the database the services use.";

/// Flags of one subcommand; every flag given must be read (typos are errors).
pub struct Flags {
    values: HashMap<String, String>,
}

impl Flags {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut values = HashMap::new();
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let name = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {arg:?}\n\n{USAGE}"))?;
            let (name, value) = match name.split_once('=') {
                Some((name, value)) => (name.to_owned(), value.to_owned()),
                None => (
                    name.to_owned(),
                    rest.next()
                        .ok_or_else(|| format!("--{name} needs a value"))?
                        .clone(),
                ),
            };
            if values.insert(name.clone(), value).is_some() {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(Self { values })
    }

    pub fn text(&mut self, name: &str) -> Result<String, String> {
        self.values
            .remove(name)
            .ok_or_else(|| format!("--{name} is required\n\n{USAGE}"))
    }

    pub fn number<T: FromStr>(&mut self, name: &str, default: T) -> Result<T, String> {
        match self.values.remove(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|_| format!("--{name} {raw:?} is not a valid number")),
        }
    }

    /// Fails on any flag no one asked for.
    pub fn finish(self) -> Result<(), String> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(name) => Err(format!("unknown flag --{name}\n\n{USAGE}")),
        }
    }
}
