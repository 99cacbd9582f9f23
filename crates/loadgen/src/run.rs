//! `loadgen run`: P patients x E events, each patient's events one after
//! another, patients concurrently (at most C requests in flight). Waits until
//! every accepted event has its `processed_events` document, then checks
//! exactly-once and per-patient order. Prints one JSON object on stdout.
//!
//! It also drives the original NestJS service for the side-by-side bench:
//! that one answers `202 {"status":"queued"}` without an `eventId`, so its
//! outcomes are matched to what was sent by patient and count alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::cli::RunArgs;
use crate::common::{self, histogram, max_ms, percentile_ms};

struct Args {
    ingest: String,
    mongo: String,
    api_key: String,
    patients: usize,
    events: usize,
    concurrency: usize,
    timeout: Duration,
}

impl From<RunArgs> for Args {
    fn from(args: RunArgs) -> Self {
        Self {
            ingest: args.target.url.trim_end_matches('/').to_owned(),
            mongo: args.target.mongo,
            api_key: args.target.api_key,
            patients: args.patients,
            events: args.events,
            concurrency: args.concurrency,
            timeout: Duration::from_secs(args.timeout),
        }
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What one patient's sender saw.
struct Sent {
    patient: String,
    /// One per accepted event: its `eventId`, if the answer named one.
    ids: Vec<Option<String>>,
    errors: usize,
    retries: usize,
    /// Latency of each request answered `202`, in microseconds.
    latencies_us: Vec<u64>,
}

/// Posts one event, retrying (same key) on transport errors and 5xx. Returns
/// the eventId (if the answer has one) and the latency of the request that
/// was accepted.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    key: &str,
    retries: &mut usize,
) -> Result<(Option<String>, Duration), String> {
    for _ in 0..50 {
        let started = Instant::now();
        match client
            .post(url)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
        {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
                let latency = started.elapsed();
                return Ok((body["eventId"].as_str().map(str::to_owned), latency));
            }
            Ok(response) if response.status().is_client_error() => {
                return Err(format!("refused with {}", response.status()));
            }
            _ => {
                *retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err("gave up after 50 tries".to_owned())
}

/// Outcomes of one patient (sorted by end) whose processing began before the
/// previous one ended: `(processedAt ms, duration ms, eventId)`.
fn overlapping(outcomes: &[(i64, i64, String)]) -> usize {
    outcomes
        .windows(2)
        .filter(|w| w[1].0 - w[1].1 < w[0].0 - 1)
        .count()
}

pub async fn main(args: RunArgs) -> Result<(), String> {
    let args = Args::from(args);
    let client = common::http_client(&args.api_key, args.concurrency, None)?;
    let processed = common::processed_events(&args.mongo).await?;
    let cpu_before = common::own_cpu_secs();

    let slots = Arc::new(Semaphore::new(args.concurrency));
    let url = format!("{}/events", args.ingest);
    let started_wall = now_millis();
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.patients)
        .map(|p| {
            let client = client.clone();
            let slots = Arc::clone(&slots);
            let url = url.clone();
            let events = args.events;
            tokio::spawn(async move {
                let patient = format!("bench-{p}");
                let mut sent = Sent {
                    patient: String::new(),
                    ids: Vec::with_capacity(events),
                    errors: 0,
                    retries: 0,
                    latencies_us: Vec::with_capacity(events),
                };
                for n in 0..events {
                    let body = json!({
                        "patientId": patient,
                        "type": "lab_result",
                        "data": { "n": n, "test": "glucose", "value": 5.4 },
                        "ts": "2025-10-01T12:00:00Z",
                    });
                    let _slot = slots.acquire().await.expect("semaphore open");
                    let key = format!("{patient}-{n}");
                    match post(&client, &url, &body, &key, &mut sent.retries).await {
                        Ok((id, latency)) => {
                            sent.ids.push(id);
                            sent.latencies_us.push(latency.as_micros() as u64);
                        }
                        Err(_) => sent.errors += 1,
                    }
                }
                sent.patient = patient;
                sent
            })
        })
        .collect();
    let mut accepted: HashMap<String, Vec<Option<String>>> = HashMap::new();
    let mut latency = histogram();
    let mut errors = 0;
    let mut retries = 0;
    for task in tasks {
        let sent = task.await.map_err(|e| e.to_string())?;
        errors += sent.errors;
        retries += sent.retries;
        for us in sent.latencies_us {
            latency.saturating_record(us.max(1));
        }
        accepted.insert(sent.patient, sent.ids);
    }
    let accept_secs = started.elapsed().as_secs_f64();
    let accept_cpu = common::own_cpu_secs() - cpu_before;
    let total: usize = accepted.values().map(Vec::len).sum();

    // Wait for every accepted event to have its outcome.
    let deadline = Instant::now() + args.timeout;
    while Instant::now() < deadline {
        let done = common::processed_count(&processed)
            .await
            .map_err(|e| e.to_string())? as usize;
        if done >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let docs: Vec<Document> = processed
        .find(doc! {})
        .projection(doc! { "_id": 0, "eventId": 1, "patientId": 1, "processedAt": 1, "processingDurationMs": 1 })
        .await
        .map_err(|e| e.to_string())?
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let mut by_patient: HashMap<String, Vec<(i64, i64, String)>> = HashMap::new();
    let mut last_processed = started_wall;
    let mut duration_sum = 0i64;
    for d in &docs {
        let at = d
            .get_datetime("processedAt")
            .map(|t| t.timestamp_millis())
            .unwrap_or(0);
        // The original stores a JavaScript number: int32 or double.
        let duration = d
            .get("processingDurationMs")
            .and_then(|v| {
                v.as_i64()
                    .or(v.as_i32().map(i64::from))
                    .or(v.as_f64().map(|f| f as i64))
            })
            .unwrap_or(0);
        last_processed = last_processed.max(at);
        duration_sum += duration;
        by_patient
            .entry(d.get_str("patientId").unwrap_or("").to_owned())
            .or_default()
            .push((at, duration, d.get_str("eventId").unwrap_or("").to_owned()));
    }
    let mut order_violations = 0;
    let mut overlaps = 0;
    let mut duplicates = 0;
    let mut lost = 0;
    let mut unmatched = 0;
    for (patient, ids) in &accepted {
        let mut outcomes = by_patient.remove(patient).unwrap_or_default();
        outcomes.sort();
        duplicates += outcomes.len().saturating_sub(ids.len());
        let Some(ids) = ids.iter().cloned().collect::<Option<Vec<String>>>() else {
            // No ids to match (the original): what is missing is lost; order
            // cannot be told from the outcomes alone, and with more than one
            // event per patient a loss and a duplicate would cancel out (the
            // side-by-side mode sends one).
            unmatched += ids.len();
            lost += ids.len().saturating_sub(outcomes.len());
            overlaps += overlapping(&outcomes);
            continue;
        };
        lost += ids
            .iter()
            .filter(|id| !outcomes.iter().any(|(_, _, done)| done == *id))
            .count();
        let processed_ids: Vec<&String> = outcomes.iter().map(|(_, _, id)| id).collect();
        if processed_ids.len() == ids.len() && processed_ids.iter().zip(&ids).any(|(a, b)| *a != b)
        {
            order_violations += 1;
        }
        overlaps += overlapping(&outcomes);
    }
    let mean_processing_ms = if docs.is_empty() {
        0.0
    } else {
        duration_sum as f64 / docs.len() as f64
    };
    let e2e_secs = (last_processed - started_wall) as f64 / 1000.0;
    let ideal_secs = args.events as f64 * mean_processing_ms / 1000.0;
    println!(
        "{}",
        json!({
            "patients": args.patients,
            "events_per_patient": args.events,
            "concurrency": args.concurrency,
            "accepted": total,
            "post_errors": errors,
            "post_retries": retries,
            "processed": docs.len(),
            "lost": lost,
            "duplicates": duplicates,
            "order_violations": order_violations,
            "overlap_violations": overlaps,
            "accepted_without_event_id": unmatched,
            "accept_secs": accept_secs,
            "accept_rate_per_sec": total as f64 / accept_secs,
            "post_p50_ms": percentile_ms(&latency, 0.50),
            "post_p99_ms": percentile_ms(&latency, 0.99),
            "post_max_ms": max_ms(&latency),
            "end_to_end_secs": e2e_secs,
            "mean_processing_ms": mean_processing_ms,
            "ideal_secs": ideal_secs,
            "ratio_to_ideal": if ideal_secs > 0.0 { e2e_secs / ideal_secs } else { 0.0 },
            "events_per_min": if e2e_secs > 0.0 { docs.len() as f64 * 60.0 / e2e_secs } else { 0.0 },
            "driver_cpu_secs_accepting": accept_cpu,
            "driver_cpu_pct_accepting": accept_cpu * 100.0 / accept_secs,
        })
    );
    Ok(())
}
