//! Connection-level limits (issue 16, finding 1): a caller without a
//! credential cannot hold the listener's connections. Slow request heads
//! and idle connections are closed by the header timer; past the cap per
//! source address, connections are closed at once; a client from another
//! address keeps being served meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use medical_events::http::listener::ConnectionLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{InProcessIngest, event_body, fresh_database_uri};

/// How a connection of the attack ended, seen from the attacker.
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// The server closed it, this long after it was opened.
    Closed(Duration),
    /// Still open when the test stopped watching.
    Open,
}

/// Opens a connection from 127.0.0.1 and, if `slow`, sends a request head
/// one byte per second (an idle one sends nothing at all); returns when the
/// server closes it or `watch` ends.
async fn attacker(target: SocketAddr, slow: bool, watch: Duration) -> Option<Ended> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind("127.0.0.1:0".parse().unwrap()).ok()?;
    let mut stream: TcpStream = socket.connect(target).await.ok()?;
    let opened = Instant::now();
    let head = b"POST /events HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n";
    let mut sent = 0;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::sleep(watch);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut deadline => return Some(Ended::Open),
            read = stream.read(&mut buf) => match read {
                // An answer (408/400) or not, the connection is over once it reads 0 or fails.
                Ok(0) | Err(_) => return Some(Ended::Closed(opened.elapsed())),
                Ok(_) => {}
            },
            _ = tick.tick(), if slow => {
                let byte = head[sent % head.len()];
                sent += 1;
                if stream.write_all(&[byte]).await.is_err() {
                    return Some(Ended::Closed(opened.elapsed()));
                }
            }
        }
    }
}

/// Issue 16's slow-loris test: 5,000 connections sending their head a
/// byte a second and 1,000 idle ones, all from 127.0.0.1, while a normal
/// client on 127.0.0.2 posts events. Asserts the refusals past the cap per
/// source, that every admitted connection is closed within the header
/// timeout, and that the normal client's events are all accepted (its
/// latency figures are the benchmark's: scripts/bench.sh, `slowloris`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_or_refused_while_another_address_is_served() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::config(&uri, "http://127.0.0.1:9");
    // The documented defaults, the header timer shortened to keep the test short.
    let defaults = ConnectionLimits::from_source(&[("HTTP_HEADER_TIMEOUT_MS", "5000")]).unwrap();
    assert_eq!(defaults.max_per_source, 1_000);
    config.limits.connections = defaults;
    let ingest = InProcessIngest::start_with(config).await;
    let target: SocketAddr = ingest.url.trim_start_matches("http://").parse().unwrap();

    let watch = Duration::from_secs(20);
    let mut attackers = tokio::task::JoinSet::new();
    // Idle ones first and last, so that both kinds are among the admitted.
    for i in 0..6_000 {
        let slow = (500..5_500).contains(&i);
        attackers.spawn(async move { attacker(target, slow, watch).await.map(|e| (slow, e)) });
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The normal client, from another loopback address, meanwhile.
    let normal = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for n in 0..40 {
        let response = normal
            .post(format!("{}/events", ingest.url))
            .bearer_auth(crate::support::API_KEY)
            .json(&event_body("p-loris", n))
            .send()
            .await
            .expect("the normal client is served");
        assert_eq!(response.status(), 202, "event {n}");
        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut refused = 0;
    let mut timed_out = Vec::new();
    let mut still_open = 0;
    let mut idle_timed_out = 0;
    while let Some(ended) = attackers.join_next().await {
        match ended.unwrap().expect("connect from 127.0.0.1") {
            (_, Ended::Closed(after)) if after < Duration::from_secs(1) => refused += 1,
            (slow, Ended::Closed(after)) => {
                if !slow {
                    idle_timed_out += 1;
                }
                timed_out.push(after)
            }
            (_, Ended::Open) => still_open += 1,
        }
    }
    assert!(
        idle_timed_out >= 400,
        "idle connections admitted and then closed by the timer: {idle_timed_out} (refused at once {refused}, later {}, open {still_open})",
        timed_out.len()
    );
    assert_eq!(still_open, 0, "connections the server never closed");
    // The cap per source admits 1,000 at a time; the rest are closed at once.
    assert!(refused >= 5_000, "refused at once: {refused}");
    assert!(timed_out.len() <= 1_000, "admitted: {}", timed_out.len());
    let latest = timed_out.iter().max().copied().unwrap_or_default();
    assert!(
        latest <= defaults.header_timeout + Duration::from_secs(3),
        "an admitted connection lived {latest:?}, past the header timeout"
    );
}
