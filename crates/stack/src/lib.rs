//! Real processes on this machine, started and stopped the same way for the
//! black-box tests (`tests/`, which re-export this crate's types unchanged)
//! and the benchmarks (`loadgen stack`, which `scripts/bench/` drives): a
//! SecantusDB server ([`MongoServer`]), a spawned `ingest` or `processor`
//! binary ([`Service`]), and the two together ([`Stack`]).
//!
//! Not shipped: nothing in the services depends on it.

mod database;
mod error;
mod listener;
mod log_tail;
mod service;
mod signal;
mod stack;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

pub use database::{DEFAULT_CACHE_SIZE, DatabaseKind, DatabaseSpec, MongoServer, Storage};
pub use error::StackError;
pub use service::{Service, ServiceSpec};
pub use stack::{Mongo, Stack, StackSpec, Stopped};

/// The workspace root (this crate lives in `<root>/crates/stack`). Not
/// shipped, so the path it was built from is the path it runs from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/stack has a workspace root")
        .to_path_buf()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Where the running executable's sibling binary `name` is: next to it
/// (`target/<profile>/loadgen`), or one level up from a test executable in
/// `target/<profile>/deps`.
pub fn find_binary(name: &str) -> Result<PathBuf, StackError> {
    let exe = std::env::current_exe().map_err(StackError::CurrentExe)?;
    let mut dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    if dir.file_name().is_some_and(|d| d == "deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(StackError::NotBuilt(path))
    }
}

/// The path of a built workspace binary (`ingest`, `processor`); panics with
/// what to run when it is not built (the tests' wording).
pub fn binary_path(name: &str) -> PathBuf {
    match find_binary(name) {
        Ok(path) => path,
        Err(StackError::NotBuilt(path)) => panic!(
            "{} not built: run `cargo build --bins` first (scripts/test.sh does)",
            path.display()
        ),
        Err(e) => panic!("{e}"),
    }
}
