//! Metrics are served, and they move with traffic.

use std::time::Duration;

use crate::support::{
    InProcessIngest, Service, event_body, fresh_database_uri, ingest_env, post_until_accepted,
    processor_env, scrape,
};

/// The value of the sample `name{labels...}` in a Prometheus text exposition.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            let (series, _) = line.rsplit_once(' ').unwrap_or((line, ""));
            let bare = series.split('{').next().unwrap_or("");
            bare == name
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn ingest_counts_accepted_and_rejected_requests() {
    let config = InProcessIngest::config(&fresh_database_uri(), "http://127.0.0.1:9");
    let ingest = InProcessIngest::start_with(config).await;
    let metrics = ingest.metrics_url.clone().expect("a metrics listener");
    let before = scrape(&metrics).await;
    assert_eq!(sample(&before, "events_accepted_total", &[]), None);

    let client = crate::support::client();
    let url = format!("{}/events", ingest.url);
    for n in 0..2 {
        client
            .post(&url)
            .json(&event_body("p-metrics", n))
            .send()
            .await
            .unwrap();
    }
    client
        .post(&url)
        .json(&serde_json::json!({"patientId": ""}))
        .send()
        .await
        .unwrap();
    reqwest::Client::new()
        .post(&url)
        .json(&event_body("p", 9))
        .send()
        .await
        .unwrap();

    let after = scrape(&metrics).await;
    assert_eq!(
        sample(&after, "events_accepted_total", &[]),
        Some(2.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, "requests_rejected_total", &[("reason", "invalid")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "requests_rejected_total",
            &[("reason", "unauthorized")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "http_requests_total",
            &[("route", "/events"), ("method", "POST"), ("status", "202")]
        ),
        Some(2.0)
    );
    let latency_count = sample(
        &after,
        "http_request_duration_seconds_count",
        &[("route", "/events"), ("method", "POST")],
    );
    assert_eq!(latency_count, Some(4.0));
    assert!(
        after.contains("http_request_duration_seconds_bucket"),
        "latency is a histogram"
    );
}

#[tokio::test]
async fn the_processor_reports_outcomes_durations_backlog_and_lanes() {
    let uri = fresh_database_uri();
    let processor = Service::start("processor", &processor_env(&uri, 20, 40)).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processor.url())).await;
    let client = crate::support::client();
    for n in 0..3 {
        post_until_accepted(
            &client,
            &ingest.url(),
            &event_body("p-gauges", n),
            &format!("k{n}"),
        )
        .await;
    }
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&processor.metrics_url()).await;
        // The histograms are recorded after the counter, and the oldest
        // age after the backlog: wait for the later of each.
        if sample(&text, "events_processed_total", &[("result", "success")]) == Some(3.0)
            && sample(&text, "event_end_to_end_seconds_count", &[]) == Some(3.0)
            && sample(&text, "processor_backlog_events", &[]) == Some(0.0)
            && sample(&text, "processor_oldest_unfinished_age_seconds", &[]) == Some(0.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(&text, "events_processed_total", &[("result", "success")]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "processing_duration_seconds_count", &[]),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "event_end_to_end_seconds_count", &[]),
        Some(3.0)
    );
    assert_eq!(sample(&text, "processor_backlog_events", &[]), Some(0.0));
    assert_eq!(
        sample(&text, "processor_oldest_unfinished_age_seconds", &[]),
        Some(0.0)
    );
    assert!(sample(&text, "processor_active_lanes", &[]).is_some());
    // Ingest's nudges, counted by route: at least the first (it learns the
    // change stream is open and may send no more, see end_to_end.rs).
    let nudges = sample(
        &text,
        "http_requests_total",
        &[("route", "/queue"), ("status", "202")],
    );
    assert!(
        nudges.is_some_and(|n| (1.0..=3.0).contains(&n)),
        "{nudges:?}"
    );
}

#[tokio::test]
async fn the_callers_trace_id_reaches_the_processors_log_lines() {
    let uri = fresh_database_uri();
    let processor = Service::start("processor", &processor_env(&uri, 10, 20)).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processor.url())).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = crate::support::client()
        .post(format!("{}/events", ingest.url()))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({
            "patientId": "p-trace",
            "type": "diagnosis",
            "ts": "2025-10-01T12:00:00Z",
            "data": { "note": "PHI-MARKER-7d1f", "PHI-KEY-2c9a": 1 },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let echoed = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(echoed.starts_with(&format!("00-{trace_id}-")), "{echoed}");
    assert!(
        !echoed.contains("00f067aa0ba902b7"),
        "ingest answers with its own span id"
    );

    let processed_line = |log: &str| {
        log.lines().any(|line| {
            line.contains("event processed")
                && line.contains(&format!("\"traceId\":\"{trace_id}\""))
        })
    };
    for _ in 0..100 {
        if processed_line(&processor.read_log()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        processed_line(&processor.read_log()),
        "{}",
        processor.read_log()
    );
    assert!(
        processor
            .read_log()
            .lines()
            .any(|l| l.contains("/queue") || l.contains(trace_id)),
        "the notification carried the trace"
    );
    assert!(
        ingest
            .read_log()
            .lines()
            .any(|l| l.contains("event accepted") && l.contains(trace_id))
    );
    // Clinical data never reaches the logs, not even as a key.
    for log in [ingest.read_log(), processor.read_log()] {
        assert!(
            !log.contains("PHI-MARKER") && !log.contains("PHI-KEY"),
            "data was logged"
        );
    }
}

#[tokio::test]
async fn spans_are_exported_over_otlp_under_the_callers_trace_id() {
    use std::sync::{Arc, Mutex};
    // A stand-in OTLP/HTTP collector that keeps what it receives.
    let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = Arc::clone(&received);
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            sink.lock().unwrap().push(body.to_vec());
            async { axum::http::StatusCode::OK }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let uri = fresh_database_uri();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let mut env = processor_env(&uri, 10, 20);
    env.extend(otel.clone());
    let processor = Service::start("processor", &env).await;
    let mut env = ingest_env(&uri, &processor.url());
    env.extend(otel);
    let ingest = Service::start("ingest", &env).await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = crate::support::client()
        .post(format!("{}/events", ingest.url()))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&event_body("p-otlp", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);

    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let exported_by = |service: &str| {
        received.lock().unwrap().iter().any(|body| {
            body.windows(16).any(|w| w == trace_bytes.as_slice())
                && body.windows(service.len()).any(|w| w == service.as_bytes())
        })
    };
    for _ in 0..100 {
        if exported_by("ingest") && exported_by("processor") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        exported_by("ingest"),
        "no ingest span with the trace id was exported"
    );
    assert!(
        exported_by("processor"),
        "no processor span with the trace id was exported"
    );
}

#[tokio::test]
async fn metrics_stay_off_the_public_port_and_made_up_methods_add_no_series() {
    let config = InProcessIngest::config(&fresh_database_uri(), "http://127.0.0.1:9");
    let ingest = InProcessIngest::start_with(config).await;
    let metrics = ingest.metrics_url.clone().expect("a metrics listener");
    let public = reqwest::get(format!("{}/metrics", ingest.url))
        .await
        .unwrap();
    assert_eq!(public.status(), reqwest::StatusCode::NOT_FOUND);

    // Unauthenticated requests with invented methods: one series, "other".
    let client = reqwest::Client::new();
    for n in 0..50 {
        let method = reqwest::Method::from_bytes(format!("BREW{n}").as_bytes()).unwrap();
        client
            .request(method, format!("{}/health", ingest.url))
            .send()
            .await
            .unwrap();
    }
    let text = scrape(&metrics).await;
    assert!(
        !text.contains("BREW"),
        "a client-chosen method became a label"
    );
    let series = text
        .lines()
        .filter(|l| l.starts_with("http_requests_total{") && l.contains("method=\"other\""))
        .count();
    assert_eq!(series, 1, "{text}");
}
