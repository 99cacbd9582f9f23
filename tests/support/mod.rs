//! Test harness: a real MongoDB-compatible server (SecantusDB), a fresh
//! database per test, and the real services, in-process or as spawned binaries.
//!
//! `TEST_MONGO_URI` (set by `scripts/test.sh`) points at a shared server;
//! without it each test process starts its own from `SECANTUSD_BIN`
//! (default `.mongo/venv/bin/secantusd-py`).

pub mod checks;
pub mod mongo_server;
pub mod services;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub use mongo_server::MongoServer;
pub use services::{InProcessIngest, Service};

/// The repository root (the tests package lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Base URI of the shared test server, without a database.
pub fn shared_mongo() -> String {
    static SHARED: OnceLock<(String, Option<MongoServer>)> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("TEST_MONGO_URI") {
            Ok(uri) if !uri.trim().is_empty() => (uri.trim_end_matches('/').to_owned(), None),
            _ => {
                let server = MongoServer::start_in_memory();
                (server.base_uri(), Some(server))
            }
        })
        .0
        .clone()
}

/// A URI naming a database no other test uses.
pub fn fresh_database_uri() -> String {
    format!("{}/t_{}", shared_mongo(), uuid::Uuid::new_v4().simple())
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A valid event body for `patient`.
pub fn event_body(patient: &str, n: usize) -> serde_json::Value {
    serde_json::json!({
        "patientId": patient,
        "type": "lab_result",
        "data": { "n": n, "test": "glucose", "value": 5.4 },
        "ts": "2025-10-01T12:00:00Z",
    })
}
