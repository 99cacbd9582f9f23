//! End-to-end benchmark driver, used by `scripts/bench.py`.
//!
//! `loadgen INGEST_URL MONGO_URI PATIENTS EVENTS CONCURRENCY TIMEOUT_SECS`
//!
//! Sends EVENTS events for each of PATIENTS patients (each patient's events
//! one after another, patients concurrently, at most CONCURRENCY requests in
//! flight), waits until every accepted event has its `processed_events`
//! document, then checks exactly-once and per-patient order. Prints one JSON
//! object on stdout. The API key comes from the environment (`API_KEY`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use serde_json::json;
use tokio::sync::Semaphore;

struct Args {
    ingest: String,
    mongo: String,
    patients: usize,
    events: usize,
    concurrency: usize,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 6 {
        return Err(
            "usage: loadgen INGEST_URL MONGO_URI PATIENTS EVENTS CONCURRENCY TIMEOUT_SECS".into(),
        );
    }
    let number = |i: usize| {
        args[i]
            .parse::<usize>()
            .map_err(|_| format!("argument {} must be a number", i + 1))
    };
    Ok(Args {
        ingest: args[0].trim_end_matches('/').to_owned(),
        mongo: args[1].clone(),
        patients: number(2)?,
        events: number(3)?,
        concurrency: number(4)?,
        timeout: Duration::from_secs(number(5)? as u64),
    })
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Posts one event, retrying (same key) on transport errors and 5xx.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    key: &str,
) -> Result<String, String> {
    for _ in 0..50 {
        match client
            .post(url)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
        {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
                return body["eventId"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "no eventId".to_owned());
            }
            Ok(response) if response.status().is_client_error() => {
                return Err(format!("refused with {}", response.status()));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Err("gave up after 50 tries".to_owned())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let mut headers = reqwest::header::HeaderMap::new();
    let key = std::env::var("API_KEY").unwrap_or_else(|_| "dev-ingest-key-change-me".to_owned());
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}")
            .parse()
            .map_err(|_| "API_KEY is not a valid header value")?,
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| e.to_string())?;
    let mongo = mongodb::Client::with_uri_str(&args.mongo)
        .await
        .map_err(|e| e.to_string())?;
    let db = mongo
        .default_database()
        .ok_or("MONGO_URI must name a database")?;
    let processed = db.collection::<Document>("processed_events");

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
                let mut ids = Vec::with_capacity(events);
                let mut errors = 0;
                for n in 0..events {
                    let body = json!({
                        "patientId": patient,
                        "type": "lab_result",
                        "data": { "n": n, "test": "glucose", "value": 5.4 },
                        "ts": "2025-10-01T12:00:00Z",
                    });
                    let _slot = slots.acquire().await.expect("semaphore open");
                    match post(&client, &url, &body, &format!("{patient}-{n}")).await {
                        Ok(id) => ids.push(id),
                        Err(_) => errors += 1,
                    }
                }
                (patient, ids, errors)
            })
        })
        .collect();
    let mut accepted: HashMap<String, Vec<String>> = HashMap::new();
    let mut errors = 0;
    for task in tasks {
        let (patient, ids, failed) = task.await.map_err(|e| e.to_string())?;
        errors += failed;
        accepted.insert(patient, ids);
    }
    let accept_secs = started.elapsed().as_secs_f64();
    let total: usize = accepted.values().map(Vec::len).sum();

    // Wait for every accepted event to have its outcome.
    let deadline = Instant::now() + args.timeout;
    let mut done = 0;
    while Instant::now() < deadline {
        done = processed
            .estimated_document_count()
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
        let duration = d.get_i64("processingDurationMs").unwrap_or(0);
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
    for (patient, ids) in &accepted {
        let mut outcomes = by_patient.remove(patient).unwrap_or_default();
        outcomes.sort();
        duplicates += outcomes.len().saturating_sub(ids.len());
        let processed_ids: Vec<&String> = outcomes.iter().map(|(_, _, id)| id).collect();
        if processed_ids.len() == ids.len() && processed_ids.iter().zip(ids).any(|(a, b)| *a != b) {
            order_violations += 1;
        }
        overlaps += outcomes
            .windows(2)
            .filter(|w| w[1].0 - w[1].1 < w[0].0 - 1)
            .count();
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
            "accepted": total,
            "post_errors": errors,
            "processed": docs.len(),
            "lost": total.saturating_sub(done.min(docs.len())),
            "duplicates": duplicates,
            "order_violations": order_violations,
            "overlap_violations": overlaps,
            "accept_secs": accept_secs,
            "accept_rate_per_sec": total as f64 / accept_secs,
            "end_to_end_secs": e2e_secs,
            "mean_processing_ms": mean_processing_ms,
            "ideal_secs": ideal_secs,
            "ratio_to_ideal": if ideal_secs > 0.0 { e2e_secs / ideal_secs } else { 0.0 },
            "events_per_min": if e2e_secs > 0.0 { docs.len() as f64 * 60.0 / e2e_secs } else { 0.0 },
        })
    );
    Ok(())
}
