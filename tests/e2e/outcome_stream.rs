//! The live outcome stream (`GET /events/stream`, Server-Sent Events): one
//! message per recorded outcome, in each patient's order, resumable with
//! `Last-Event-ID`, scoped to the client; a client that never reads is cut
//! off and ingest's memory stays flat.

use std::time::Duration;

use crate::support::{
    Service, event_body, fresh_database_uri, ingest_env, post_until_accepted, processor_env,
};
use medical_events::event::EventId;
use medical_events::store::{ProcessedEvent, ProcessingResult};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One SSE message: its id and its JSON data.
#[derive(Debug, Clone)]
struct Message {
    id: String,
    data: Value,
}

/// Opens the stream at `url` as `key`'s client (with `Last-Event-ID: last`
/// if given). The headers have come when this returns: the server has
/// subscribed to the live outcomes by then.
async fn connect(url: &str, last: Option<&str>, key: &str) -> reqwest::Response {
    let mut request = crate::support::client_with_token(key)
        .build()
        .unwrap()
        .get(format!("{url}/events/stream"));
    if let Some(last) = last {
        request = request.header("Last-Event-ID", last);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    response
}

/// Reads `count` `outcome` messages from the stream at `url` (with
/// `Last-Event-ID: last` if given), failing after `timeout`.
async fn read_messages(
    url: &str,
    last: Option<&str>,
    count: usize,
    timeout: Duration,
) -> Vec<Message> {
    read(
        connect(url, last, crate::support::API_KEY).await,
        count,
        timeout,
    )
    .await
}

/// Reads `count` `outcome` messages from an open stream, failing after `timeout`.
async fn read(mut response: reqwest::Response, count: usize, timeout: Duration) -> Vec<Message> {
    let mut buffer = String::new();
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while messages.len() < count {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} messages arrived", messages.len()))
            .unwrap()
            .expect("the stream ended");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut data, mut event) = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                }
            }
            if event.as_deref() == Some("outcome") {
                messages.push(Message {
                    id: id.unwrap(),
                    data: data.unwrap(),
                });
            }
        }
    }
    messages
}

/// The place (1, 2, ...) in `sent` (the patient's events in the order they
/// were accepted) of each of `patient`'s messages, in the order they came.
/// A client's messages carry no `seq`: it counts other clients' events.
fn seqs_of(messages: &[Message], patient: &str, sent: &[&String]) -> Vec<i64> {
    messages
        .iter()
        .filter(|m| m.data["patientId"] == patient)
        .map(|m| {
            assert!(m.data.get("seq").is_none(), "a client is shown no seq");
            let id = m.data["eventId"].as_str().unwrap();
            sent.iter().position(|s| s.as_str() == id).unwrap() as i64 + 1
        })
        .collect()
}

async fn stack(uri: &str, processing: (u64, u64)) -> (Service, Service) {
    let processor =
        Service::start("processor", &processor_env(uri, processing.0, processing.1)).await;
    crate::support::wait_for_leases(&processor.url(), 256).await;
    let ingest = Service::start("ingest", &ingest_env(uri, &processor.url())).await;
    (processor, ingest)
}

#[tokio::test]
async fn a_listener_gets_every_outcome_in_patient_order_and_resumes_where_it_left() {
    let uri = fresh_database_uri();
    let (_processor, ingest) = stack(&uri, (20, 40)).await;
    let url = ingest.url();
    let listening = connect(&url, None, crate::support::API_KEY).await;
    let listener = tokio::spawn(read(listening, 10, Duration::from_secs(60)));
    let client = crate::support::client();
    let mut sent = Vec::new();
    for n in 0..5 {
        for patient in ["stream-a", "stream-b"] {
            sent.push(
                post_until_accepted(
                    &client,
                    &url,
                    &event_body(patient, n),
                    &format!("{patient}-{n}"),
                )
                .await,
            );
        }
    }
    let messages = listener.await.unwrap();
    let ids: Vec<&str> = messages
        .iter()
        .map(|m| m.data["eventId"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    let mut expected: Vec<&str> = sent.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(sorted, expected, "one message per outcome");
    let of_patient = |p: usize| sent.iter().skip(p).step_by(2).collect::<Vec<_>>();
    for (p, patient) in ["stream-a", "stream-b"].into_iter().enumerate() {
        let seqs = seqs_of(&messages, patient, &of_patient(p));
        assert_eq!(
            seqs,
            vec![1, 2, 3, 4, 5],
            "{patient}'s outcomes out of order"
        );
        assert!(messages.iter().all(|m| m.data["status"] == "processed"));
    }
    // Reconnecting after the fifth message replays from a little before it
    // (delivery is at least once; all ten were recorded within the overlap):
    // every outcome, each patient's in order, none twice.
    let resumed = read_messages(&url, Some(&messages[4].id), 10, Duration::from_secs(30)).await;
    let mut resumed_ids: Vec<&str> = resumed
        .iter()
        .map(|m| m.data["eventId"].as_str().unwrap())
        .collect();
    resumed_ids.sort();
    assert_eq!(resumed_ids, expected, "the replay after a reconnect");
    for (p, patient) in ["stream-a", "stream-b"].into_iter().enumerate() {
        let seqs = seqs_of(&resumed, patient, &of_patient(p));
        assert_eq!(seqs, vec![1, 2, 3, 4, 5], "{patient}'s replay out of order");
    }
    // A last id past everything recorded replays nothing: the next message
    // is a new outcome.
    let future = format!("{}-{}", now_millis() + 60_000, sent[0]);
    let after = connect(&url, Some(&future), crate::support::API_KEY).await;
    let after = tokio::spawn(read(after, 1, Duration::from_secs(30)));
    let newest = post_until_accepted(&client, &url, &event_body("stream-a", 5), "stream-a-5").await;
    let after = after.await.unwrap();
    assert_eq!(after[0].data["eventId"], newest.as_str());
    let bad = client
        .get(format!("{url}/events/stream"))
        .header("Last-Event-ID", "not-an-id")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

/// An outcome as the processor records it, for `client`, at `millis`.
fn recorded(client: &str, millis: i64, seq: i64) -> ProcessedEvent {
    let at = mongodb::bson::DateTime::from_millis(millis);
    ProcessedEvent {
        event_id: EventId::new_time_ordered().to_string(),
        patient_id: format!("replayed-{}", seq % 7),
        event_type: "lab_result".to_owned(),
        data: Default::default(),
        ts: "2025-10-01T12:00:00.000Z".to_owned(),
        processed_at: at,
        processing_duration_ms: 5,
        result: ProcessingResult::success(),
        bucket: 0,
        seq,
        client: client.to_owned(),
        run: 1,
        attempts: 1,
        history: Vec::new(),
        created_at: at,
        updated_at: at,
    }
}

#[tokio::test]
async fn a_replay_longer_than_the_buffer_and_a_query_page_arrives_whole() {
    let uri = fresh_database_uri();
    let ingest = Service::start("ingest", &ingest_env(&uri, "http://127.0.0.1:9")).await;
    // 1,300 outcomes of this client, three per millisecond so that query
    // pages end inside a millisecond, with another client's in between.
    let start = now_millis() - 60_000;
    let ours: Vec<ProcessedEvent> = (0..1_300)
        .map(|n| recorded(crate::support::CLIENT, start + n / 3, n))
        .collect();
    let theirs: Vec<ProcessedEvent> = (0..300)
        .map(|n| recorded("other-client", start + n, n))
        .collect();
    let db = mongodb::Client::with_uri_str(&uri)
        .await
        .unwrap()
        .default_database()
        .unwrap();
    let outcomes = db.collection::<ProcessedEvent>("processed_events");
    outcomes.insert_many(&ours).await.unwrap();
    outcomes.insert_many(&theirs).await.unwrap();

    // A last id from before them all (the replay starts 10 s earlier still).
    let last = format!("{}-{}", start - 1, EventId::new_time_ordered());
    let messages = read_messages(
        &ingest.url(),
        Some(&last),
        ours.len(),
        Duration::from_secs(60),
    )
    .await;
    let received: Vec<&str> = messages
        .iter()
        .map(|m| m.data["eventId"].as_str().unwrap())
        .collect();
    let mut in_stream_order: Vec<(i64, &str)> = ours
        .iter()
        .map(|o| (o.processed_at.timestamp_millis(), o.event_id.as_str()))
        .collect();
    in_stream_order.sort();
    let expected: Vec<&str> = in_stream_order.into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        received, expected,
        "every outcome once, in the stream's order, none of another client's"
    );
    // An operator's replay has both clients' outcomes.
    let all = read(
        connect(&ingest.url(), Some(&last), crate::support::ADMIN_KEY).await,
        ours.len() + theirs.len(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        all.iter()
            .filter(|m| m.data["client"] == "other-client")
            .count(),
        theirs.len()
    );
    // Live, too, a client sees only its own: another client's outcome
    // recorded first does not come before this client's.
    let live = connect(&ingest.url(), None, crate::support::API_KEY).await;
    let now = now_millis();
    outcomes
        .insert_one(recorded("other-client", now, 1))
        .await
        .unwrap();
    let own = recorded(crate::support::CLIENT, now + 1, 2);
    outcomes.insert_one(&own).await.unwrap();
    let next = read(live, 1, Duration::from_secs(30)).await;
    assert_eq!(next[0].data["eventId"], own.event_id.as_str());
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_listener_that_never_reads_is_cut_off_and_memory_stays_flat() {
    let uri = fresh_database_uri();
    // Outcomes are written straight into processed_events, as processors
    // record them: the stream follows that collection, and 20,000 events
    // through a debug processor would take minutes for no more coverage.
    let ingest = Service::start("ingest", &ingest_env(&uri, "http://127.0.0.1:9")).await;
    // A raw connection with a tiny receive window, that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket
        .connect(format!("127.0.0.1:{}", ingest.port()).parse().unwrap())
        .await
        .unwrap();
    stalled
        .write_all(
            format!(
                "GET /events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
                crate::support::API_KEY
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = ingest.pid().unwrap();
    let before = rss_kb(pid);
    // More than the kernel buffers between the two sockets (about 1-4 MB on
    // loopback): only then does the server's own buffer fill up.
    let total = 20_000;
    let outcomes = mongodb::Client::with_uri_str(&uri)
        .await
        .unwrap()
        .default_database()
        .unwrap()
        .collection::<ProcessedEvent>("processed_events");
    let now = now_millis();
    for batch in 0..total / 1_000 {
        let recorded: Vec<ProcessedEvent> = (batch * 1_000..(batch + 1) * 1_000)
            .map(|n| recorded(crate::support::CLIENT, now, n))
            .collect();
        outcomes.insert_many(&recorded).await.unwrap();
    }
    crate::support::wait_until(
        Duration::from_secs(60),
        "the stalled listener cut off",
        || async {
            let metrics = crate::support::scrape(&ingest.metrics_url()).await;
            metrics.contains("outcome_stream_cut_off_total 1")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kb(pid);
    eprintln!(
        "ingest RSS {before} kB before, {after} kB after {total} outcomes to a stalled listener"
    );
    // Now read what the server had buffered: the response ended early (its
    // last chunk came), although outcomes kept being recorded.
    let mut received = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = stalled.read(&mut chunk).await.unwrap();
            received.extend_from_slice(&chunk[..n]);
            if n == 0 || received.ends_with(b"\r\n0\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    let metrics = crate::support::scrape(&ingest.metrics_url()).await;
    let stream_metrics: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("outcome_stream"))
        .collect();
    eprintln!(
        "{stream_metrics:?}; read {} bytes; tail {:?}",
        received.len(),
        String::from_utf8_lossy(&received[received.len().saturating_sub(200)..])
    );
    assert!(ended.is_ok(), "the server never ended the stalled stream");
    let messages = String::from_utf8_lossy(&received)
        .matches("event: outcome")
        .count();
    eprintln!("the stalled listener got {messages} of {total} messages before being cut off");
    assert!(
        (messages as i64) < total,
        "a listener that never reads was not cut off"
    );
    assert!(
        after < before + 20_000,
        "ingest grew from {before} kB to {after} kB"
    );
    assert!(
        metrics.contains("outcome_stream_cut_off_total 1"),
        "{metrics}"
    );
}

/// Issue 16, finding 6: outcome streams are capped per client and overall
/// (`429` naming the setting); a closed stream gives its place back.
#[tokio::test]
async fn streams_are_capped_per_client_and_overall() {
    use medical_events::ingest::stream::StreamLimits;
    let uri = fresh_database_uri();
    let mut config = crate::support::InProcessIngest::config(&uri, "http://127.0.0.1:9");
    config.streams = StreamLimits {
        per_client: 2,
        total: 3,
    };
    let ingest = crate::support::InProcessIngest::start_with(config).await;
    let url = ingest.url.clone();
    let open = |key: &'static str| {
        let url = url.clone();
        async move {
            crate::support::client_with_token(key)
                .build()
                .unwrap()
                .get(format!("{url}/events/stream"))
                .send()
                .await
                .unwrap()
        }
    };
    let first = open(crate::support::API_KEY).await;
    let _second = open(crate::support::API_KEY).await;
    assert_eq!(first.status(), 200);
    let third = open(crate::support::API_KEY).await;
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    let problem: Value = third.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("STREAM_MAX_PER_CLIENT"),
        "{problem}"
    );
    let operator = open(crate::support::ADMIN_KEY).await;
    assert_eq!(operator.status(), 200, "another caller has its own share");
    let fourth = open(crate::support::ADMIN_KEY).await;
    assert_eq!(fourth.status(), 429);
    let problem: Value = fourth.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("STREAM_MAX"),
        "{problem}"
    );

    drop(first);
    crate::support::wait_until(
        Duration::from_secs(10),
        "a closed stream's place back",
        || {
            let open = open(crate::support::API_KEY);
            async move { open.await.status() == 200 }
        },
    )
    .await;
}

/// Issue 16, finding 10: an open outcome stream does not hold a graceful
/// shutdown until the process is killed: after `HTTP_DRAIN_MS` it is
/// closed and ingest exits cleanly.
#[tokio::test]
async fn an_open_stream_does_not_hold_shutdown_past_the_drain_time() {
    let uri = fresh_database_uri();
    let mut env = ingest_env(&uri, "http://127.0.0.1:9");
    env.push(("HTTP_DRAIN_MS", "1000".to_owned()));
    let mut ingest = Service::start("ingest", &env).await;
    let stream = connect(&ingest.url(), None, crate::support::API_KEY).await;
    let started = std::time::Instant::now();
    let status = ingest.try_terminate(Duration::from_secs(15)).await;
    let status = status.expect("ingest exits while a stream is open");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(stream);
}
