//! `loadgen soak` and `loadgen burst`: an open-loop driver. Request i is due
//! at `i / rate` seconds after the start, whatever earlier requests are
//! doing; at most `max_in_flight` requests are in flight, and a start that
//! would exceed that is not made and counted as dropped by the client.
//! Event i goes to patient `i % patients`.
//!
//! Every interval it prints one JSON line (`"kind":"minute"` for 60 s
//! intervals, `"kind":"interval"` otherwise); answers are counted in the
//! interval in which they arrived, sends and client drops in the interval in
//! which they were due. Latency is measured from the time a request was due
//! (not from when the driver got round to it), so a driver falling behind
//! shows in the figures instead of hiding queueing; `start_lag_max_ms` says
//! how far behind the schedule the driver itself was. After the last
//! interval it waits (bounded) for the backlog to drain and checks that every
//! accepted eventId has exactly one `processed_events` document; then prints
//! a `"kind":"summary"` line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use reqwest::header::HeaderValue;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::cli::{BurstArgs, OpenLoopArgs, SoakArgs};
use crate::common::{self, histogram, max_ms, percentile_ms};

pub struct Args {
    mode: &'static str,
    ingest: String,
    mongo: String,
    api_key: String,
    rate: f64,
    seconds: u64,
    patients: u64,
    interval: u64,
    max_in_flight: usize,
    request_timeout: Duration,
    drain_timeout: Duration,
}

impl From<SoakArgs> for Args {
    fn from(args: SoakArgs) -> Self {
        Self::new(
            "soak",
            args.rate,
            args.seconds,
            args.interval,
            args.open_loop,
        )
    }
}

impl From<BurstArgs> for Args {
    fn from(args: BurstArgs) -> Self {
        Self::new(
            "burst",
            args.rate,
            args.seconds,
            args.interval,
            args.open_loop,
        )
    }
}

impl Args {
    /// The command line has checked the ranges (rate positive, counts at least 1).
    fn new(mode: &'static str, rate: f64, seconds: u64, interval: u64, rest: OpenLoopArgs) -> Self {
        Self {
            mode,
            ingest: rest.target.url.trim_end_matches('/').to_owned(),
            mongo: rest.target.mongo,
            api_key: rest.target.api_key,
            rate,
            seconds,
            patients: rest.patients,
            interval,
            max_in_flight: rest.max_in_flight,
            request_timeout: Duration::from_secs(rest.request_timeout),
            drain_timeout: Duration::from_secs(rest.drain_timeout),
        }
    }

    fn total(&self) -> u64 {
        (self.rate * self.seconds as f64).round() as u64
    }

    fn intervals(&self) -> usize {
        self.seconds.div_ceil(self.interval) as usize
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Accepted(u128),
    RateLimited,
    Unavailable,
    OtherStatus,
    Transport,
}

/// Counts of one interval (or of the whole run).
struct Tally {
    sent: u64,
    dropped: u64,
    accepted: u64,
    status_429: u64,
    status_503: u64,
    status_other: u64,
    transport: u64,
    start_lag_max: Duration,
    /// Microseconds from due time to the full answer, of every answered request.
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            sent: 0,
            dropped: 0,
            accepted: 0,
            status_429: 0,
            status_503: 0,
            status_other: 0,
            transport: 0,
            start_lag_max: Duration::ZERO,
            latency: histogram(),
        }
    }

    fn errors(&self) -> u64 {
        self.status_429 + self.status_503 + self.status_other + self.transport
    }

    fn answer(&mut self, outcome: Outcome, latency_us: u64) {
        match outcome {
            Outcome::Accepted(_) => self.accepted += 1,
            Outcome::RateLimited => self.status_429 += 1,
            Outcome::Unavailable => self.status_503 += 1,
            Outcome::OtherStatus => self.status_other += 1,
            // Not answered: no latency to record.
            Outcome::Transport => {
                self.transport += 1;
                return;
            }
        }
        self.latency.saturating_record(latency_us.max(1));
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "sent": self.sent,
            "dropped_by_client": self.dropped,
            "accepted": self.accepted,
            "status_429": self.status_429,
            "status_503": self.status_503,
            "status_other": self.status_other,
            "transport_errors": self.transport,
            "errors": self.errors(),
            "answered": self.latency.len(),
            "p50_ms": percentile_ms(&self.latency, 0.50),
            "p99_ms": percentile_ms(&self.latency, 0.99),
            "max_ms": max_ms(&self.latency),
            "start_lag_max_ms": self.start_lag_max.as_secs_f64() * 1000.0,
        })
    }
}

/// Shared by the scheduler, the request tasks and the reporter.
struct Recorder {
    started: Instant,
    interval: Duration,
    /// Made on first use: a histogram takes about 160 KB.
    intervals: Vec<Option<Tally>>,
    total: Tally,
    accepted_ids: Vec<u128>,
}

impl Recorder {
    fn index_at(&self, offset: Duration) -> usize {
        ((offset.as_nanos() / self.interval.as_nanos()) as usize).min(self.intervals.len() - 1)
    }

    fn answer(&mut self, due: Instant, outcome: Outcome) {
        // Read the clock under the lock: an answer is then never counted in
        // an interval the reporter has already printed.
        let now = Instant::now();
        let latency_us = now.saturating_duration_since(due).as_micros() as u64;
        let i = self.index_at(now.saturating_duration_since(self.started));
        self.intervals[i]
            .get_or_insert_with(Tally::new)
            .answer(outcome, latency_us);
        self.total.answer(outcome, latency_us);
        if let Outcome::Accepted(id) = outcome {
            self.accepted_ids.push(id);
        }
    }

    fn starts(&mut self, index: usize, sent: u64, dropped: u64, lag: Duration) {
        let interval = self.intervals[index].get_or_insert_with(Tally::new);
        for tally in [interval, &mut self.total] {
            tally.sent += sent;
            tally.dropped += dropped;
            tally.start_lag_max = tally.start_lag_max.max(lag);
        }
    }
}

type Shared = Arc<Mutex<Recorder>>;

fn lock(recorder: &Shared) -> std::sync::MutexGuard<'_, Recorder> {
    recorder
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything a request task needs, shared by all of them.
struct Target {
    client: reqwest::Client,
    url: reqwest::Url,
    recorder: Shared,
}

/// One allocation per request: the key and the body in one buffer, split
/// into two views of it.
fn request_bytes(prefix: &str, run: u64, i: u64, patients: u64) -> (HeaderValue, Bytes) {
    use std::fmt::Write as _;
    let mut buf = BytesMut::with_capacity(160);
    let _ = write!(buf, "{prefix}-{run}-{i}");
    let key_len = buf.len();
    let _ = write!(
        buf,
        r#"{{"patientId":"{prefix}-{patient}","type":"vitals","data":{{"seq":{i},"hr":{hr}}},"ts":"2025-10-01T12:00:00Z"}}"#,
        patient = i % patients,
        hr = 60 + i % 40,
    );
    let mut body = buf.freeze();
    let key = body.split_to(key_len);
    let key = HeaderValue::from_maybe_shared(key).expect("ASCII key");
    (key, body)
}

async fn send(target: Arc<Target>, due: Instant, key: HeaderValue, body: Bytes) {
    let request = target
        .client
        .post(target.url.clone())
        .header("idempotency-key", key)
        .body(body);
    let outcome = match request.send().await {
        Err(_) => Outcome::Transport,
        Ok(response) => {
            let status = response.status();
            // Read the whole body so the connection can be reused.
            match response.bytes().await {
                Err(_) => Outcome::Transport,
                Ok(body) => match status.as_u16() {
                    202 => {
                        common::event_id_of(&body).map_or(Outcome::OtherStatus, Outcome::Accepted)
                    }
                    429 => Outcome::RateLimited,
                    503 => Outcome::Unavailable,
                    _ => Outcome::OtherStatus,
                },
            }
        }
    };
    lock(&target.recorder).answer(due, outcome);
}

/// Starts every request on schedule; returns when the last one is started.
async fn schedule(args: &Args, target: Arc<Target>, slots: Arc<Semaphore>, run: u64) {
    let total = args.total();
    let started = lock(&target.recorder).started;
    let per_interval = args.rate * args.interval as f64;
    let due_at = |i: u64| started + Duration::from_secs_f64(i as f64 / args.rate);
    let mut next = 0u64;
    while next < total {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(started).as_secs_f64();
        let due = ((elapsed * args.rate) as u64 + 1).min(total);
        // Count starts per interval and take the lock once per batch.
        let mut batch: Option<(usize, u64, u64, Duration)> = None;
        while next < due {
            let index = ((next as f64 / per_interval) as usize).min(args.intervals() - 1);
            if let Some((i, sent, dropped, lag)) = batch
                && i != index
            {
                lock(&target.recorder).starts(i, sent, dropped, lag);
                batch = None;
            }
            let (_, sent, dropped, lag) = batch.get_or_insert((index, 0, 0, Duration::ZERO));
            let due_time = due_at(next);
            *lag = (*lag).max(now.saturating_duration_since(due_time));
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => {
                    *sent += 1;
                    let (key, body) = request_bytes(args.mode, run, next, args.patients);
                    let target = Arc::clone(&target);
                    tokio::spawn(async move {
                        send(target, due_time, key, body).await;
                        drop(permit);
                    });
                }
                Err(_) => *dropped += 1,
            }
            next += 1;
        }
        if let Some((i, sent, dropped, lag)) = batch {
            lock(&target.recorder).starts(i, sent, dropped, lag);
        }
        if next < total {
            tokio::time::sleep_until(due_at(next).into()).await;
        }
    }
}

pub async fn main(args: Args) -> Result<(), String> {
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let client = common::http_client(
        &args.api_key,
        args.max_in_flight,
        Some(args.request_timeout),
    )?;
    let processed = common::processed_events(&args.mongo).await?;
    // Outcomes already in the database (a stack that has run before) are not ours.
    let baseline = common::processed_count(&processed)
        .await
        .map_err(|e| e.to_string())?;
    let url = reqwest::Url::parse(&format!("{}/events", args.ingest)).map_err(|e| e.to_string())?;
    let intervals = args.intervals();
    let interval = Duration::from_secs(args.interval);
    let started = Instant::now();
    let recorder: Shared = Arc::new(Mutex::new(Recorder {
        started,
        interval,
        intervals: (0..intervals).map(|_| None).collect(),
        total: Tally::new(),
        accepted_ids: Vec::with_capacity(args.total() as usize),
    }));
    let target = Arc::new(Target {
        client,
        url,
        recorder: Arc::clone(&recorder),
    });
    let slots = Arc::new(Semaphore::new(args.max_in_flight));
    let cpu_start = common::own_cpu_secs();

    let (scheduled, all_started) = tokio::sync::oneshot::channel::<()>();
    // The scheduler runs on the main thread (which drives this future and
    // is not one of the runtime's workers), so thousands of request tasks
    // ready on the workers never delay a start: as a task of its own it fell
    // up to 1.2 s behind in a 10,000/s burst, here at most about 0.15 s.
    let scheduler = {
        let target = Arc::clone(&target);
        let slots = Arc::clone(&slots);
        let args = &args;
        async move {
            schedule(args, target, slots, run).await;
            let _ = scheduled.send(());
        }
    };
    let reporter = async {
        let mut all_started = Some(all_started);
        let mut cpu_before = cpu_start;
        let mut previous_end = 0.0;
        let mut accepted_so_far = 0;
        for k in 0..intervals {
            let end = started + interval * (k as u32 + 1);
            let last = k + 1 == intervals;
            if last {
                // The last interval also holds the answers to requests still
                // in flight at the end of the schedule (bounded by the
                // request timeout).
                if let Some(all_started) = all_started.take() {
                    let _ = all_started.await;
                }
                let all = args.max_in_flight as u32;
                let _ = tokio::time::timeout(
                    args.request_timeout + Duration::from_secs(5),
                    slots.acquire_many(all),
                )
                .await;
            } else {
                tokio::time::sleep_until(end.into()).await;
            }
            // The interval's end: its boundary, or for the last one the
            // moment its last answer came in.
            let end_s = if last {
                started.elapsed().as_secs_f64()
            } else {
                (end - started).as_secs_f64()
            };
            let in_flight = args.max_in_flight - slots.available_permits();
            let cpu = common::own_cpu_secs();
            // Complete even if taken late: answers are counted by arrival time.
            let tally = lock(&recorder).intervals[k]
                .take()
                .unwrap_or_else(Tally::new);
            accepted_so_far += tally.accepted;
            let sampled_at = started.elapsed().as_secs_f64();
            let processed_so_far = common::processed_count(&processed)
                .await
                .map(|n| n.saturating_sub(baseline))
                .ok();
            let mut row = tally.json();
            let extra = json!({
                "kind": if args.interval == 60 { "minute" } else { "interval" },
                "mode": args.mode,
                "index": k,
                "start_s": (interval * k as u32).as_secs_f64(),
                "end_s": end_s,
                "accepted_so_far": accepted_so_far,
                "processed_so_far": processed_so_far,
                "backlog": processed_so_far.map(|p| accepted_so_far as i64 - p as i64),
                // When processed_so_far was read (the store may be slow to answer).
                "processed_sampled_at_s": sampled_at,
                "in_flight": in_flight,
                "driver_cpu_pct": (cpu - cpu_before) * 100.0 / (sampled_at - previous_end).max(1e-9),
            });
            cpu_before = cpu;
            previous_end = sampled_at;
            if let (Some(row), Some(extra)) = (row.as_object_mut(), extra.as_object()) {
                row.extend(extra.clone());
            }
            println!("{row}");
        }
    };
    tokio::join!(scheduler, reporter);
    let sending_secs = started.elapsed().as_secs_f64();
    let cpu_sending = common::own_cpu_secs() - cpu_start;

    // Drain: wait (bounded) until every accepted event has an outcome.
    let (accepted_ids, total) = {
        let mut r = lock(&recorder);
        let ids = std::mem::take(&mut r.accepted_ids);
        let total = std::mem::replace(&mut r.total, Tally::new());
        (ids, total)
    };
    let accepted = accepted_ids.len() as u64;
    let drain_started = Instant::now();
    let mut processed_now = 0;
    loop {
        if let Ok(n) = common::processed_count(&processed).await {
            processed_now = n.saturating_sub(baseline);
        }
        if processed_now >= accepted || drain_started.elapsed() >= args.drain_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let drained = processed_now >= accepted;

    // Exactly once: every accepted eventId has one processed_events document.
    let mut seen: HashMap<u128, u32> = accepted_ids.iter().map(|id| (*id, 0)).collect();
    let mut unexpected = 0u64;
    for id in common::processed_ids(&processed).await? {
        match seen.get_mut(&id) {
            Some(count) => *count += 1,
            None => unexpected += 1,
        }
    }
    // Without an outcome when checked: lost if the backlog had drained,
    // otherwise possibly still on its way (lost is then unknown: null).
    let without_outcome = seen.values().filter(|c| **c == 0).count();
    let duplicated = seen.values().filter(|c| **c > 1).count();
    let extra_documents: u64 = seen.values().map(|c| c.saturating_sub(1) as u64).sum();

    let mut summary = total.json();
    let extra = json!({
        "kind": "summary",
        "mode": args.mode,
        "rate": args.rate,
        "seconds": args.seconds,
        "patients": args.patients,
        "interval_secs": args.interval,
        "max_in_flight": args.max_in_flight,
        "scheduled": args.total(),
        "accepted_ids": accepted,
        "distinct_accepted_ids": seen.len(),
        "achieved_send_rate": total.sent as f64 / args.seconds as f64,
        "accepted_rate": accepted as f64 / args.seconds as f64,
        "sending_secs": sending_secs,
        "drained": drained,
        "drain_secs": drain_secs,
        "processed": processed_now,
        "without_outcome": without_outcome,
        "lost": drained.then_some(without_outcome),
        "duplicated": duplicated,
        "duplicate_documents": extra_documents,
        // Outcomes of events this run never saw a 202 for: requests that
        // timed out at the client after ingest had stored them (or another
        // client's traffic on a shared database).
        "unexpected_processed": unexpected,
        "baseline_processed": baseline,
        "driver_cpu_secs_sending": cpu_sending,
        "driver_cpu_pct_sending": cpu_sending * 100.0 / sending_secs,
        "driver_cpu_secs_total": common::own_cpu_secs(),
    });
    if let (Some(s), Some(extra)) = (summary.as_object_mut(), extra.as_object()) {
        s.extend(extra.clone());
    }
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_body_share_one_buffer() {
        let (key, body) = request_bytes("soak", 7, 12_345, 10_000);
        assert_eq!(key.to_str().unwrap(), "soak-7-12345");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["patientId"], "soak-2345");
        assert_eq!(value["data"]["seq"], 12_345);
        assert_eq!(value["ts"], "2025-10-01T12:00:00Z");
    }

    #[test]
    fn answers_after_the_schedule_count_in_the_last_interval() {
        let started = Instant::now();
        let r = Recorder {
            started,
            interval: Duration::from_secs(5),
            intervals: (0..3).map(|_| None).collect(),
            total: Tally::new(),
            accepted_ids: Vec::new(),
        };
        assert_eq!(r.index_at(Duration::from_millis(4_999)), 0);
        assert_eq!(r.index_at(Duration::from_secs(5)), 1);
        assert_eq!(r.index_at(Duration::from_secs(40)), 2);
    }
}
