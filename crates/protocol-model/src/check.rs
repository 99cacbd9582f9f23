//! Running a check: the checker, its result, and a readable trace.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use stateright::{Checker, HasDiscoveries, Model, Path};

use crate::model::{Action, ProtocolModel, State};
use crate::variants::Config;

/// What a check found.
pub struct Report {
    pub config: Config,
    /// Property name to the path that is its example or counterexample.
    pub discoveries: BTreeMap<&'static str, Path<State, Action>>,
    pub states: usize,
    pub unique_states: usize,
    pub max_depth: usize,
    pub elapsed: Duration,
}

impl Report {
    pub fn found(&self, property: &str) -> bool {
        self.discoveries.contains_key(property)
    }

    /// The actions of a discovery, one a line.
    pub fn trace(&self, property: &str) -> String {
        self.discoveries
            .get(property)
            .map(|path| {
                path.clone()
                    .into_actions()
                    .iter()
                    .enumerate()
                    .map(|(i, a)| format!("{:3} {a:?}\n", i + 1))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last state of a discovery.
    pub fn last_state(&self, property: &str) -> Option<&State> {
        self.discoveries.get(property).map(Path::last_state)
    }

    pub fn summary(&self) -> String {
        format!(
            "{:?}: {} unique states ({} generated), depth {}, {:.1} s",
            self.config.variant,
            self.unique_states,
            self.states,
            self.max_depth,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Explores the whole (bounded) state space breadth-first; `until`: stop as
/// soon as one of these properties has a discovery (the shortest one).
pub fn check(config: Config, until: &[&'static str]) -> Report {
    check_bounded(config, until, 0, 0)
}

/// [`check`] with a bound on states and depth (0: none).
pub fn check_bounded(
    config: Config,
    until: &[&'static str],
    states: usize,
    depth: usize,
) -> Report {
    let started = Instant::now();
    let mut builder = ProtocolModel::new(config).checker().threads(1);
    if states > 0 {
        builder = builder.target_state_count(states);
    }
    if depth > 0 {
        builder = builder.target_max_depth(depth);
    }
    if !until.is_empty() {
        builder = builder.finish_when(HasDiscoveries::AnyOf(
            until.iter().copied().collect::<BTreeSet<_>>(),
        ));
    }
    let checker = builder.spawn_bfs().join();
    Report {
        config,
        discoveries: checker.discoveries().into_iter().collect(),
        states: checker.state_count(),
        unique_states: checker.unique_state_count(),
        max_depth: checker.max_depth(),
        elapsed: started.elapsed(),
    }
}
