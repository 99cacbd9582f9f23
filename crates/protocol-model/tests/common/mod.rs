//! Shared by the checks: running a configuration and asserting on what the
//! checker found, with the trace in the failure message.

// Each test binary uses only part of it.
#![allow(dead_code)]

use protocol_model::invariants::INVARIANTS;
use protocol_model::{Config, Report, check};

/// Explores `config` completely; every invariant holds except those in
/// `except`, and every `sometimes` property in `expected` has an example.
pub fn assert_holds(config: Config, except: &[&str], expected: &[&str]) -> Report {
    let report = check(config, &[]);
    eprintln!("{}", report.summary());
    for invariant in INVARIANTS.iter().filter(|i| !except.contains(i)) {
        assert!(
            !report.found(invariant),
            "counterexample to \"{invariant}\" in {config:?}:\n{}\nlast state: {:#?}",
            report.trace(invariant),
            report.last_state(invariant)
        );
    }
    for property in expected {
        assert!(
            report.found(property),
            "no example of \"{property}\": the check is vacuous ({})",
            report.summary()
        );
    }
    report
}

/// Explores `config` until `invariant` has a counterexample (breadth-first:
/// the shortest one); fails if the whole bounded space holds it.
pub fn assert_broken(config: Config, invariant: &'static str) -> Report {
    let report = check(config, &[invariant]);
    eprintln!("{}", report.summary());
    assert!(
        report.found(invariant),
        "{:?} should break \"{invariant}\", but the checker found no counterexample ({})",
        config.variant,
        report.summary()
    );
    eprintln!(
        "counterexample to \"{invariant}\":\n{}",
        report.trace(invariant)
    );
    report
}
