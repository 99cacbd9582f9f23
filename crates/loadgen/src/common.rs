//! What the drivers share: the HTTP client, the store, latency histograms and
//! the driver's own CPU time.

use std::time::Duration;

use hdrhistogram::Histogram;
use mongodb::bson::{Document, doc};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};

/// Latencies are recorded in microseconds, up to this (longer ones saturate).
const MAX_LATENCY_US: u64 = 300_000_000;

/// `USER_HZ`, the unit of the times in `/proc/<pid>/stat`: 100 on every Linux
/// architecture (the kernel converts to it whatever its internal tick).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

pub fn http_client(
    key: &str,
    pool: usize,
    timeout: Option<Duration>,
) -> Result<reqwest::Client, String> {
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

/// Every `eventId` in `processed_events`, as the 128-bit value of the UUID,
/// once per document (so duplicates show as repeats).
pub async fn processed_ids(processed: &mongodb::Collection<Document>) -> Result<Vec<u128>, String> {
    use futures_util::TryStreamExt;
    let raw = processed.clone_with_type::<mongodb::bson::RawDocumentBuf>();
    let mut cursor = raw
        .find(doc! {})
        .projection(doc! { "_id": 0, "eventId": 1 })
        .batch_size(10_000)
        .await
        .map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    while let Some(d) = cursor.try_next().await.map_err(|e| e.to_string())? {
        let id = d
            .get_str("eventId")
            .ok()
            .and_then(|s| uuid::Uuid::try_parse(s).ok())
            .map_or(0, |u| u.as_u128());
        ids.push(id);
    }
    Ok(ids)
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

/// The `eventId` of a `202` body (`{"status":"queued","eventId":"<uuid>"}`),
/// found without building a JSON tree.
pub fn event_id_of(body: &[u8]) -> Option<u128> {
    const FIELD: &[u8] = b"\"eventId\":\"";
    let start = body.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let id = body.get(start..start + 36)?;
    uuid::Uuid::try_parse_ascii(id).ok().map(|u| u.as_u128())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_event_id() {
        let body = br#"{"status":"queued","eventId":"67e55044-10b1-426f-9247-bb680e5fe0c8"}"#;
        assert_eq!(
            event_id_of(body),
            Some(0x67e5504410b1426f9247bb680e5fe0c8_u128)
        );
        assert_eq!(event_id_of(br#"{"status":"queued"}"#), None);
    }

    #[test]
    fn reads_own_cpu_time() {
        assert!(own_cpu_secs() >= 0.0);
    }
}
