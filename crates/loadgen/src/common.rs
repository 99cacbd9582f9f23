//! What the drivers share: the HTTP client, the store, latency histograms and
//! the driver's own CPU time.

use std::time::Duration;

use hdrhistogram::Histogram;
use mongodb::bson::Document;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};

/// Latencies are recorded in microseconds, up to this (longer ones saturate).
const MAX_LATENCY_US: u64 = 300_000_000;

/// `USER_HZ`, the unit of the times in `/proc/<pid>/stat`: 100 on every Linux
/// architecture (the kernel converts to it whatever its internal tick).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

pub fn http_client(pool: usize, timeout: Option<Duration>) -> Result<reqwest::Client, String> {
    let key = std::env::var("API_KEY").unwrap_or_else(|_| "dev-ingest-key-change-me".to_owned());
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {key}"))
            .map_err(|_| "API_KEY is not a valid header value")?,
    );
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut builder = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(pool)
        .tcp_nodelay(true);
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder.build().map_err(|e| e.to_string())
}

pub async fn processed_events(uri: &str) -> Result<mongodb::Collection<Document>, String> {
    let mongo = mongodb::Client::with_uri_str(uri)
        .await
        .map_err(|e| e.to_string())?;
    let db = mongo
        .default_database()
        .ok_or("the Mongo URI must name a database")?;
    Ok(db.collection::<Document>("processed_events"))
}

/// Documents in `processed_events` (from the collection's metadata: cheap).
pub async fn processed_count(
    processed: &mongodb::Collection<Document>,
) -> Result<u64, mongodb::error::Error> {
    processed.estimated_document_count().await
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Percentile of a microsecond histogram, in milliseconds (0 when empty).
pub fn percentile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

pub fn max_ms(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.max() as f64 / 1000.0
    }
}

/// CPU seconds this process has used so far (user + system, `/proc/self/stat`).
pub fn own_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / CLOCK_TICKS_PER_SEC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        assert!(own_cpu_secs() >= 0.0);
    }
}
