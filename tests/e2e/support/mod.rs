//! Test harness: a real MongoDB-compatible server (SecantusDB), a fresh
//! database per test, and the real services, in-process or as spawned binaries.
//!
//! `TEST_MONGO_URI` (set by `scripts/test.sh`) points at a shared server;
//! without it each test process starts its own from `SECANTUSD_BIN`
//! (default `.mongo/venv/bin/secantusd-py`).
//!
//! Starting and stopping processes (SecantusDB, the service binaries) is the
//! `stack` crate's, shared with the benchmarks (`loadgen stack`); it is
//! re-exported here under the names the tests use.

pub mod checks;
pub mod fault_proxy;
pub mod mllp;
pub mod services;
pub mod sink;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub use services::{InProcessIngest, Service, binary_path};
pub use stack::{MongoServer, free_port};

/// The API key the test services accept, and the client it belongs to.
pub const API_KEY: &str = "test-api-key-0123456789";
pub const CLIENT: &str = "test-client";
/// An operator credential (`ADMIN_API_KEYS`) of the test services.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
/// The token between ingest and the processor in tests.
pub const PROCESSOR_TOKEN: &str = "test-processor-token-0123456789";

/// A client that authenticates to ingest with [`API_KEY`].
pub fn client() -> reqwest::Client {
    client_with_token(API_KEY).build().expect("client")
}

/// A client that authenticates to ingest as an operator ([`ADMIN_KEY`]).
pub fn admin_client() -> reqwest::Client {
    client_with_token(ADMIN_KEY).build().expect("client")
}

/// A client that authenticates to the processor with [`PROCESSOR_TOKEN`].
pub fn processor_client() -> reqwest::Client {
    client_with_token(PROCESSOR_TOKEN).build().expect("client")
}

/// A client builder sending `Authorization: Bearer <token>` on every request.
pub fn client_with_token(token: &str) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    reqwest::Client::builder().default_headers(headers)
}

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

/// Waits until the processor at `url` holds at least `leases` bucket leases
/// (its `/ready` says how many).
pub async fn wait_for_leases(url: &str, leases: u64) {
    let client = reqwest::Client::new();
    wait_until(
        Duration::from_secs(30),
        "the processor to hold leases",
        || async {
            match client.get(format!("{url}/ready")).send().await {
                Ok(response) => response
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|body| body["leases"].as_u64().unwrap_or(0) >= leases),
                Err(_) => false,
            }
        },
    )
    .await;
}

/// The Prometheus text a service serves at `metrics_url`. Scrapers do not
/// authenticate: metrics carry no clinical data and are served on their own
/// (internal) listener.
pub async fn scrape(metrics_url: &str) -> String {
    let response = reqwest::get(metrics_url).await.unwrap();
    assert!(response.status().is_success());
    response.text().await.unwrap()
}

/// The sum of the series whose lines start with `series` (a metric's name,
/// with `{` to take every label set, or a label set's start to pick some).
pub async fn metric_sum(metrics_url: &str, series: &str) -> f64 {
    scrape(metrics_url)
        .await
        .lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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

/// Environment that gives a spawned service a clock of its own (libfaketime,
/// from Debian's `faketime`, which `scripts/test.sh` installs): `spec` as
/// libfaketime reads it, e.g. `+2h` (wall clock two hours ahead, the
/// monotonic clock untouched) or `+0 x0.5` (every clock at half speed).
pub fn faketime(spec: &str, monotonic_too: bool) -> Vec<(&'static str, String)> {
    let mut env = vec![
        (
            "LD_PRELOAD",
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1".to_owned(),
        ),
        ("FAKETIME", spec.to_owned()),
    ];
    if !monotonic_too {
        env.push(("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()));
    }
    env
}

/// Environment for a spawned processor with fast, test-sized timings.
pub fn processor_env(mongo_uri: &str, min_ms: u64, max_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("MONGO_URI", mongo_uri.to_owned()),
        ("PROCESSING_MIN_MS", min_ms.to_string()),
        ("PROCESSING_MAX_MS", max_ms.to_string()),
        ("SWEEP_INTERVAL_MS", "300".to_owned()),
        ("PROCESSOR_TOKEN", PROCESSOR_TOKEN.to_owned()),
        ("RETRY_BASE_MS", "50".to_owned()),
        ("RETRY_MAX_MS", "500".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
        // Short leases: a killed instance's buckets move within seconds. (Not
        // shorter: the single-threaded test server, loaded by a whole fleet,
        // can take a second to answer a session renewal.)
        ("LEASE_MS", "4000".to_owned()),
    ]
}

pub fn ingest_env(mongo_uri: &str, processor_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MONGO_URI", mongo_uri.to_owned()),
        ("PROCESSOR_URL", processor_url.to_owned()),
        ("INGEST_API_KEYS", format!("{CLIENT}:{API_KEY}")),
        ("ADMIN_API_KEYS", format!("test-operator:{ADMIN_KEY}")),
        ("PROCESSOR_TOKEN", PROCESSOR_TOKEN.to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
    ]
}

/// What `POST /events` answered.
pub struct Answer {
    pub status: reqwest::StatusCode,
    /// `Idempotent-Replayed: true`: a retry or duplicate of a stored event.
    pub replayed: bool,
    pub body: serde_json::Value,
}

impl Answer {
    pub fn event_id(&self) -> String {
        self.body["eventId"]
            .as_str()
            .unwrap_or_else(|| panic!("no eventId in {}", self.body))
            .to_owned()
    }
}

/// `POST /events` with `body`, and `Idempotency-Key: key` if given.
pub async fn post_event(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    key: Option<&str>,
) -> Answer {
    let mut request = client.post(format!("{url}/events")).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("an answer");
    Answer {
        status: response.status(),
        replayed: response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true"),
        body: response.json().await.unwrap_or(serde_json::Value::Null),
    }
}

/// The JSON body of a request that must succeed at the transport level.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// Posts one event, retrying (same Idempotency-Key) through connection
/// errors and 503s, as a well-behaved client would. Returns the eventId.
pub async fn post_until_accepted(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    key: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let response = client
            .post(format!("{url}/events"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        match response {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                let body: serde_json::Value = response.json().await.expect("202 body");
                return body["eventId"].as_str().expect("eventId").to_owned();
            }
            Ok(response) if response.status().is_client_error() => {
                panic!("event refused with {}", response.status())
            }
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "event never accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
