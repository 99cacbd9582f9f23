//! HL7 v2 over MLLP: `loadgen mllp` sends P patients x M messages over C
//! connections (each connection serial: a message, its ACK, the next, as
//! senders do) and reports messages/s and ACK latency; with `--wait`, it
//! then waits until every message has its outcome (delivered out) and
//! reports the end-to-end time. `loadgen mllp-receiver` is the receiving
//! system for delivery out: it holds each message a random time in a
//! range, answers `AA`, and on stdin's close prints what it received.
//!
//! The framing is written out here (a benchmark must not trust the code it
//! measures to read its own answers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mongodb::bson::{Document, doc};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::{MllpArgs, MllpReceiverArgs};
use crate::common::{histogram, max_ms, own_cpu_secs, percentile_ms};

const START: u8 = 0x0B;
const END: u8 = 0x1C;
const CR: u8 = 0x0D;

fn frame(payload: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(START);
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(&[END, CR]);
    out
}

/// Reads the next frame's payload; `None` when the peer closed.
async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, buffer: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(start) = buffer.iter().position(|&b| b == START) {
            if let Some(end) = buffer[start..].iter().position(|&b| b == END) {
                let end = start + end;
                let payload = String::from_utf8_lossy(&buffer[start + 1..end]).into_owned();
                let consumed = if buffer.get(end + 1) == Some(&CR) {
                    end + 2
                } else {
                    end + 1
                };
                buffer.drain(..consumed.min(buffer.len()));
                return Some(payload);
            }
        }
        let mut chunk = [0u8; 16384];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An ORU^R01 for `patient` with control id `id`.
fn message(run: &str, id: &str, patient: &str, n: usize) -> String {
    format!(
        "MSH|^~\\&|BenchLab|{run}|EventSvc|EVSVC|20240411070545||ORU^R01|{id}|P|2.5.1\r\
         PID|1||{patient}^^^BENCH^MR||DOE^JANE||19700101|F\r\
         OBR|1||{n}|cbc^CBC|||20240410160227\r\
         OBX|1|NM|wbc^Wbc||{n}.0|/nl|3.8-11.0||||F\r"
    )
}

fn msa(answer: &str) -> (String, String) {
    let msa = answer
        .split('\r')
        .find(|s| s.starts_with("MSA|"))
        .unwrap_or("");
    let mut fields = msa.split('|').skip(1);
    (
        fields.next().unwrap_or("").to_owned(),
        fields.next().unwrap_or("").to_owned(),
    )
}

pub async fn main(args: MllpArgs) -> Result<(), String> {
    let run = format!("R{}", std::process::id());
    let mongo = mongodb::Client::with_uri_str(&args.mongo)
        .await
        .map_err(|e| e.to_string())?;
    let db = mongo
        .default_database()
        .ok_or("the Mongo URI must name a database")?;
    let queued = db.collection::<Document>("queued_events");
    let processed = db.collection::<Document>("processed_events");
    let processed_before = processed
        .estimated_document_count()
        .await
        .map_err(|e| e.to_string())?;

    // Patient p goes to connection p % C; each connection sends its
    // patients' messages round-robin, one at a time.
    let connections = args.connections.min(args.patients).max(1);
    let total = args.patients * args.messages;
    let cpu_before = own_cpu_secs();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let patients: Vec<usize> = (c..args.patients).step_by(connections).collect();
        let (address, run, messages) = (args.address.clone(), run.clone(), args.messages);
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&address)
                .await
                .map_err(|e| format!("connect {address}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let mut buffer = Vec::new();
            let mut latencies = histogram();
            let mut refused = 0u64;
            for n in 0..messages {
                for &p in &patients {
                    let id = format!("{run}-{p}-{n}");
                    let text = message(&run, &id, &format!("{run}-P{p}"), n);
                    let sent = Instant::now();
                    stream
                        .write_all(&frame(&text))
                        .await
                        .map_err(|e| format!("send: {e}"))?;
                    let answer = read_frame(&mut stream, &mut buffer)
                        .await
                        .ok_or("the listener closed the connection")?;
                    latencies.saturating_record(sent.elapsed().as_micros() as u64);
                    let (code, control_id) = msa(&answer);
                    if code != "AA" || control_id != id {
                        refused += 1;
                    }
                }
            }
            Ok::<(Histogram<u64>, u64), String>((latencies, refused))
        }));
    }
    let mut latencies = histogram();
    let mut refused = 0;
    for task in tasks {
        let (h, r) = task.await.map_err(|e| e.to_string())??;
        latencies.add(&h).map_err(|e| e.to_string())?;
        refused += r;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = own_cpu_secs() - cpu_before;
    let stored = queued
        .count_documents(doc! { "source.sendingFacility": &run })
        .await
        .map_err(|e| e.to_string())?;
    let mut out = json!({
        "connections": connections,
        "messages": total,
        "seconds": seconds,
        "rate": total as f64 / seconds,
        "p50_ms": percentile_ms(&latencies, 0.50),
        "p95_ms": percentile_ms(&latencies, 0.95),
        "p99_ms": percentile_ms(&latencies, 0.99),
        "max_ms": max_ms(&latencies),
        "not_aa": refused,
        "stored": stored,
        "loadgen_cpu_s": cpu,
    });
    if args.wait {
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        loop {
            let done = processed
                .estimated_document_count()
                .await
                .map_err(|e| e.to_string())?
                - processed_before;
            if done >= total as u64 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "only {done} of {total} outcomes within {} s",
                    args.timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        out["end_to_end_s"] = json!(started.elapsed().as_secs_f64());
    }
    println!("{out}");
    Ok(())
}

#[derive(Default)]
struct Received {
    messages: u64,
    /// Per control id, how often it arrived.
    seen: HashMap<String, u32>,
    /// Per patient, the last message number, to check order.
    last: HashMap<String, i64>,
    out_of_order: u64,
}

pub async fn receiver(args: MllpReceiverArgs) -> Result<(), String> {
    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    println!("{}", json!({ "port": port }));
    let state: Arc<Mutex<Received>> = Arc::default();
    let shared = Arc::clone(&state);
    let (min, max) = (args.hold_min_ms, args.hold_max_ms.max(args.hold_min_ms));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let state = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                while let Some(message) = read_frame(&mut stream, &mut buffer).await {
                    let hold = rand_between(min, max);
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    let msh: Vec<&str> = message
                        .split('\r')
                        .next()
                        .unwrap_or("")
                        .split('|')
                        .collect();
                    let control_id = msh.get(9).copied().unwrap_or("").to_owned();
                    // Control ids are <run>-<patient>-<n>.
                    let mut parts = control_id.rsplitn(2, '-');
                    let n: i64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(-1);
                    let patient = parts.next().unwrap_or("").to_owned();
                    {
                        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                        state.messages += 1;
                        *state.seen.entry(control_id.clone()).or_default() += 1;
                        let last = state.last.entry(patient).or_insert(-1);
                        let out_of_order = n < *last;
                        *last = n.max(*last);
                        if out_of_order {
                            state.out_of_order += 1;
                        }
                    }
                    let ack = format!(
                        "MSH|^~\\&|EHR|HOSP|EventSvc|EVSVC|20240101000000||ACK^R01^ACK|A{control_id}|P|2.5.1\rMSA|AA|{control_id}\r"
                    );
                    if stream.write_all(&frame(&ack)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    // Until stdin closes.
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        std::io::stdin().read_to_end(&mut Vec::new())
    })
    .await;
    let state = state.lock().unwrap_or_else(|p| p.into_inner());
    let repeated = state.seen.values().filter(|&&n| n > 1).count();
    println!(
        "{}",
        json!({
            "received": state.messages,
            "distinct": state.seen.len(),
            "repeated": repeated,
            "out_of_order": state.out_of_order,
        })
    );
    Ok(())
}

fn rand_between(min: u64, max: u64) -> u64 {
    if max == min {
        return min;
    }
    // A cheap spread is enough for hold times.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or_default();
    min + nanos % (max - min + 1)
}
