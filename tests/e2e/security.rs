//! Who may call, and how much: API keys on ingest, the token between the
//! services, refusal to start without them, rate limits, backpressure.

use std::time::{Duration, Instant};

use crate::support::checks::Db;
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::{
    API_KEY, InProcessIngest, PROCESSOR_TOKEN, Service, event_body, fresh_database_uri, ingest_env,
    processor_env, wait_until,
};
use medical_events::auth::{Access, Credential};
use mongodb::bson::doc;
use reqwest::StatusCode;
use serde_json::Value;

async fn assert_problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], status.as_u16());
    problem
}

#[tokio::test]
async fn ingest_refuses_requests_without_a_valid_api_key_and_stores_nothing() {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let anonymous = reqwest::Client::new();
    let url = format!("{}/events", ingest.url);
    let body = event_body("p-auth", 1);

    let response = anonymous.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_problem(response, StatusCode::UNAUTHORIZED).await;
    for header in ["Bearer wrong-key-0123456789", "Basic dGVzdDp0ZXN0", API_KEY] {
        let response = anonymous
            .post(&url)
            .header("Authorization", header)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::UNAUTHORIZED).await;
    }
    // The processor's token is not an API key.
    let response = crate::support::processor_client()
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNAUTHORIZED).await;
    let status = anonymous
        .get(format!("{url}/{}", uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_problem(status, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        Db::connect(&uri)
            .await
            .count("queued_events", doc! {})
            .await,
        0
    );

    // Liveness and readiness stay open for orchestrators.
    assert!(
        anonymous
            .get(format!("{}/health", ingest.url))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert!(
        anonymous
            .get(format!("{}/ready", ingest.url))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );

    let response = crate::support::client()
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_processor_requires_the_shared_token_and_ingest_sends_it() {
    let uri = fresh_database_uri();
    let processor = Service::start("processor", &processor_env(&uri, 10, 20)).await;
    let mut body = event_body("p-token", 1);
    body["eventId"] = uuid::Uuid::new_v4().to_string().into();
    let url = format!("{}/queue", processor.url());
    let response = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNAUTHORIZED).await;
    let response = crate::support::client()
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        Db::connect(&uri)
            .await
            .count("queued_events", doc! {})
            .await,
        0
    );

    // Through ingest the token is sent, so the processor is woken at once.
    let ingest = Service::start("ingest", &ingest_env(&uri, &processor.url())).await;
    let response = crate::support::client()
        .post(format!("{}/events", ingest.url()))
        .json(&event_body("p-token", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(10), "the event processed", || async {
        db.processed_count().await == 1
    })
    .await;
    assert!(!ingest.read_log().contains("refused the notification"));
}

#[tokio::test]
async fn ingest_with_the_wrong_token_is_refused_by_the_processor_and_the_sweep_still_delivers() {
    let uri = fresh_database_uri();
    let processor = Service::start("processor", &processor_env(&uri, 10, 20)).await;
    let mut env = ingest_env(&uri, &processor.url());
    env.retain(|(name, _)| *name != "PROCESSOR_TOKEN");
    env.push(("PROCESSOR_TOKEN", "not-the-processor-token-0123".to_owned()));
    let ingest = Service::start("ingest", &env).await;
    let response = crate::support::client()
        .post(format!("{}/events", ingest.url()))
        .json(&event_body("p-wrong-token", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let db = Db::connect(&uri).await;
    wait_until(
        Duration::from_secs(10),
        "the sweep to process the event",
        || async { db.processed_count().await == 1 },
    )
    .await;
    wait_until(
        Duration::from_secs(5),
        "the refusal in ingest's log",
        || async { ingest.read_log().contains("\"status\":401") },
    )
    .await;
}

#[tokio::test]
async fn services_refuse_to_start_without_credentials_unless_auth_is_disabled_explicitly() {
    let binary_dir = crate::support::binary_path("ingest")
        .parent()
        .unwrap()
        .to_path_buf();
    let run = |binary: &str, env: &[(&str, &str)]| {
        std::process::Command::new(binary_dir.join(binary))
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let mongo = ("MONGO_URI", "mongodb://127.0.0.1:1/x");
    let processor_url = ("PROCESSOR_URL", "http://127.0.0.1:9");
    type Env<'a> = Vec<(&'a str, &'a str)>;
    let cases: [(&str, Env, &str); 5] = [
        (
            "ingest",
            vec![mongo, processor_url, ("PROCESSOR_TOKEN", PROCESSOR_TOKEN)],
            "INGEST_API_KEYS is required",
        ),
        (
            "ingest",
            vec![mongo, processor_url, ("INGEST_API_KEYS", API_KEY)],
            "PROCESSOR_TOKEN is required",
        ),
        (
            "ingest",
            vec![
                mongo,
                processor_url,
                ("INGEST_API_KEYS", "short"),
                ("PROCESSOR_TOKEN", PROCESSOR_TOKEN),
            ],
            "at least 16",
        ),
        ("processor", vec![mongo], "PROCESSOR_TOKEN is required"),
        (
            "processor",
            vec![mongo, ("AUTH_DISABLED", "yes")],
            "AUTH_DISABLED",
        ),
    ];
    for (binary, env, message) in cases {
        let output = run(binary, &env);
        assert_eq!(output.status.code(), Some(2), "{binary} {env:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(message), "{binary}: {stderr}");
        assert!(
            !stderr.contains(API_KEY) || message != "at least 16",
            "a secret was printed"
        );
    }

    // AUTH_DISABLED=true starts, and says so.
    let uri = fresh_database_uri();
    let mut processor = Service::start(
        "processor",
        &[
            ("MONGO_URI", uri.clone()),
            ("AUTH_DISABLED", "true".to_owned()),
        ],
    )
    .await;
    assert!(processor.read_log().contains("AUTH_DISABLED=true"));
    processor.kill9();
}

/// A credential as it might appear in any setting: URIs, files, headers.
const PASSWORD: &str = "S3cret-Passw0rd-x9";

/// Runs `binary` with exactly `env`; its exit code and everything it printed.
async fn start_briefly(binary: &str, env: &[(&str, String)]) -> (Option<i32>, String) {
    let binary = crate::support::binary_path(binary);
    let mut command = tokio::process::Command::new(binary);
    command
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .unwrap_or_else(|_| panic!("{env:?}: a configuration error stops start-up at once"))
        .unwrap();
    let mut printed = String::from_utf8_lossy(&output.stdout).into_owned();
    printed.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code(), printed)
}

#[tokio::test]
async fn no_configuration_error_prints_a_credential() {
    let dir = std::env::temp_dir().join(format!("creds-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, content: String| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.to_string_lossy().into_owned()
    };
    let ingest = |name: &'static str, value: String| {
        let mut env = vec![
            ("MONGO_URI", "mongodb://127.0.0.1:1/x".to_owned()),
            ("PROCESSOR_URL", "http://127.0.0.1:9".to_owned()),
            ("INGEST_API_KEYS", API_KEY.to_owned()),
            ("PROCESSOR_TOKEN", PROCESSOR_TOKEN.to_owned()),
        ];
        // `NAME_FILE` stands in for `NAME`.
        env.retain(|(k, _)| *k != name.trim_end_matches("_FILE"));
        env.push((name, value));
        ("ingest", name, env)
    };
    let processor = |settings: Vec<(&'static str, String)>| {
        let mut env = vec![
            ("MONGO_URI", "mongodb://127.0.0.1:1/x".to_owned()),
            ("PROCESSOR_TOKEN", PROCESSOR_TOKEN.to_owned()),
        ];
        let name = settings.last().unwrap().0;
        env.retain(|(k, _)| {
            settings
                .iter()
                .all(|(s, _)| s.trim_end_matches("_FILE") != *k)
        });
        env.extend(settings);
        ("processor", name, env)
    };
    let cases = [
        // The driver refuses the URI: a port, an option, its own rules.
        ingest(
            "MONGO_URI",
            format!("mongodb://admin:{PASSWORD}@db:notaport/x"),
        ),
        ingest(
            "MONGO_URI",
            format!("mongodb://admin:{PASSWORD}@db/x?tls=maybe"),
        ),
        ingest(
            "MONGO_URI",
            format!("mongodb+srv://admin:{PASSWORD}@db:27017/x"),
        ),
        // A password with an unencoded `?`, `/` or `@`: parsed as something else.
        ingest(
            "MONGO_URI",
            format!("mongodb://admin:{PASSWORD}?{PASSWORD}@db/x"),
        ),
        ingest(
            "MONGO_URI",
            format!("mongodb://admin:{PASSWORD}/{PASSWORD}@db/x"),
        ),
        ingest(
            "MONGO_URI",
            format!("mongodb://admin:{PASSWORD}@{PASSWORD}@db/x"),
        ),
        // Not a MongoDB URI at all, with and without a scheme.
        ingest("MONGO_URI", format!("postgres://admin:{PASSWORD}@db/x")),
        ingest("MONGO_URI", format!("admin:{PASSWORD}@db")),
        // Parsed, then refused by the driver at start-up.
        processor(vec![(
            "MONGO_URI",
            format!("mongodb://admin:{PASSWORD}@db1,db2/x?directConnection=true"),
        )]),
        ingest("PROCESSOR_URL", format!("ftp://user:{PASSWORD}@processor/")),
        ingest(
            "PROCESSOR_URL",
            format!("http://user:{PASSWORD}@processor:99999/"),
        ),
        processor(vec![(
            "DELIVERY_URL",
            format!("ftp://user:{PASSWORD}@sink/deliveries"),
        )]),
        processor(vec![(
            "DELIVERY_URL",
            format!("http://user:{PASSWORD}@sink:notaport/deliveries"),
        )]),
        processor(vec![
            ("DELIVERY_URL", "http://sink/deliveries".to_owned()),
            (
                "DELIVERY_AUTH_HEADER",
                format!("Authorization Bearer {PASSWORD}"),
            ),
        ]),
        processor(vec![
            ("DELIVERY_URL", "http://sink/deliveries".to_owned()),
            (
                "DELIVERY_AUTH_HEADER",
                format!("Authorization: Bearer {PASSWORD}\u{1}"),
            ),
        ]),
        // Mounted secrets whose content is refused.
        ingest(
            "INGEST_API_KEYS_FILE",
            file("keys", format!("lab a:{PASSWORD}\n")),
        ),
        ingest(
            "ADMIN_API_KEYS_FILE",
            file("admins", "Sh0rt-S3cret\n".to_owned()),
        ),
        processor(vec![(
            "PROCESSOR_TOKEN_FILE",
            file("token", format!("{PASSWORD}\u{1}\n")),
        )]),
    ];
    for (binary, name, env) in cases {
        let (code, printed) = start_briefly(binary, &env).await;
        let setting = &env.iter().find(|(k, _)| *k == name).unwrap().1;
        assert_eq!(code, Some(2), "{binary} {name}={setting:?}: {printed}");
        assert_eq!(
            printed.lines().count(),
            1,
            "{binary} {name}: one line, got {printed}"
        );
        assert!(printed.contains(name), "{binary}: {printed}");
        for secret in [PASSWORD, "Sh0rt-S3cret"] {
            assert!(
                !printed.contains(secret),
                "{binary} {name}={setting:?} printed a credential: {printed}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn each_client_has_its_own_rate_limit() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::config(&uri, "http://127.0.0.1:9");
    let other_key = "other-api-key-0123456789";
    config.access = Access::Required(vec![
        Credential::named(crate::support::CLIENT, API_KEY),
        Credential::named("other-client", other_key),
    ]);
    config.rate_limit.per_second = 1;
    config.rate_limit.burst = 3;
    let ingest = InProcessIngest::start_with(config).await;
    let url = format!("{}/events", ingest.url);
    let client = crate::support::client();
    for n in 0..3 {
        let response = client
            .post(&url)
            .json(&event_body("p-rate", n))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let response = client
        .post(&url)
        .json(&event_body("p-rate", 3))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after));
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(
        Db::connect(&uri)
            .await
            .count("queued_events", doc! {})
            .await,
        3
    );

    let other = crate::support::client_with_token(other_key)
        .build()
        .unwrap();
    let response = other
        .post(&url)
        .json(&event_body("p-rate", 4))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "another key is not throttled"
    );
}

#[tokio::test]
async fn past_the_in_flight_bound_requests_get_503_at_once_and_slow_ones_time_out() {
    let upstream = crate::support::shared_mongo()
        .trim_start_matches("mongodb://")
        .to_owned();
    let proxy = FaultProxy::start(upstream).await;
    let uri = format!(
        "mongodb://127.0.0.1:{}/t_{}?directConnection=true",
        proxy.port,
        uuid::Uuid::new_v4().simple()
    );
    let mut config = InProcessIngest::config(&uri, "http://127.0.0.1:9");
    config.limits.max_in_flight = 1;
    config.limits.request_timeout = Duration::from_millis(800);
    // Each store operation bounded by 200 ms: the write and its settling
    // read fit in the request's 800 ms.
    config.mongo.timeout = Duration::from_millis(100);
    let ingest = InProcessIngest::start_with(config).await;
    let url = format!("{}/events", ingest.url);
    let client = crate::support::client();
    assert_eq!(
        client
            .post(&url)
            .json(&event_body("p-busy", 0))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );

    proxy.freeze(true);
    // Matches (and passes on, into the frozen connection) the slow one's insert.
    let insert = proxy.on_next(
        "insert",
        "queued_events",
        Fault::DelayRequest(Duration::ZERO),
        1,
    );
    let slow = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .post(&url)
                .json(&event_body("p-busy", 1))
                .send()
                .await
                .unwrap()
        }
    });
    // Its insert is on the wire: it holds the one in-flight slot.
    proxy.wait_hits(insert, 1, Duration::from_secs(5)).await;
    let started = Instant::now();
    let shed = client
        .post(&url)
        .json(&event_body("p-busy", 2))
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shedding must not wait"
    );
    assert!(shed.headers().contains_key("retry-after"));
    let problem = assert_problem(shed, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(problem["detail"].as_str().unwrap().contains("capacity"));

    // The slow one's insert went into the frozen connection: it may still
    // land, so the answer says so (never "nothing stored"), in time.
    let slow = slow.await.unwrap();
    let problem = assert_problem(slow, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(problem["type"], "/problems/outcome-unknown", "{problem}");
    proxy.freeze(false);
}

#[tokio::test]
async fn the_processor_bounds_its_lanes_and_says_503_past_the_bound() {
    let uri = fresh_database_uri();
    let mut env = processor_env(&uri, 1500, 1500);
    env.push(("MAX_ACTIVE_LANES", "1".to_owned()));
    let processor = Service::start("processor", &env).await;
    crate::support::wait_for_leases(&processor.url(), 256).await;
    let client = crate::support::processor_client();
    let post = |patient: &str| {
        let mut body = event_body(patient, 1);
        body["eventId"] = uuid::Uuid::new_v4().to_string().into();
        client
            .post(format!("{}/queue", processor.url()))
            .json(&body)
            .send()
    };
    assert_eq!(post("lane-a").await.unwrap().status(), StatusCode::ACCEPTED);
    // The same patient still fits: it has the lane.
    assert_eq!(post("lane-a").await.unwrap().status(), StatusCode::ACCEPTED);
    let refused = post("lane-b").await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    let db = Db::connect(&uri).await;
    assert_eq!(
        db.count("queued_events", doc! { "patientId": "lane-b" })
            .await,
        0,
        "refused means not stored"
    );

    wait_until(Duration::from_secs(15), "lane a to finish", || async {
        db.processed_count().await == 2
    })
    .await;
    let mut accepted = false;
    for _ in 0..40 {
        if post("lane-b").await.unwrap().status() == StatusCode::ACCEPTED {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "room again once lane a is done");
}

/// A CA and a certificate for localhost/127.0.0.1 signed by it, as PEM files.
fn tls_files() -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = crate::support::repo_root()
        .join("target/test-tls")
        .join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

#[tokio::test]
async fn both_services_can_speak_https_including_to_each_other() {
    let (ca, cert, key) = tls_files();
    let tls_env = [
        ("TLS_CERT_PATH", cert.to_string_lossy().into_owned()),
        ("TLS_KEY_PATH", key.to_string_lossy().into_owned()),
    ];
    let uri = fresh_database_uri();
    let mut env = processor_env(&uri, 10, 20);
    // No sweep during the test: processing must come from the https notification.
    env.retain(|(name, _)| *name != "SWEEP_INTERVAL_MS");
    env.push(("SWEEP_INTERVAL_MS", "600000".to_owned()));
    env.extend(tls_env.clone());
    let processor = Service::start("processor", &env).await;
    let mut env = ingest_env(&uri, &format!("https://localhost:{}", processor.port()));
    env.push(("PROCESSOR_CA_PATH", ca.to_string_lossy().into_owned()));
    env.extend(tls_env.clone());
    let ingest = Service::start("ingest", &env).await;
    assert!(ingest.url().starts_with("https://"));

    let trusted = crate::support::client_with_token(API_KEY)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let response = trusted
        .post(format!("https://localhost:{}/events", ingest.port()))
        .json(&event_body("p-tls", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let db = Db::connect(&uri).await;
    wait_until(
        Duration::from_secs(10),
        "processing after an https notification",
        || async { db.processed_count().await == 1 },
    )
    .await;
    assert!(
        !ingest.read_log().contains("the sweep will pick"),
        "{}",
        ingest.read_log()
    );

    // Plain HTTP to the HTTPS port gets no answer; an untrusted client refuses the certificate.
    let plain = crate::support::client()
        .post(format!("http://127.0.0.1:{}/events", ingest.port()))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    assert!(
        crate::support::client()
            .get(format!("https://localhost:{}/health", ingest.port()))
            .send()
            .await
            .is_err()
    );

    // The container health probe works over https.
    let binary_dir = crate::support::binary_path("ingest")
        .parent()
        .unwrap()
        .to_path_buf();
    let status = std::process::Command::new(binary_dir.join("ingest"))
        .arg("healthcheck")
        .env("PORT", ingest.port().to_string())
        .env("TLS_CERT_PATH", &cert)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Issue 16, finding 4: one client's slow uploads take only its own share
/// of the requests in flight. Client A holds 40 POSTs whose bodies arrive a
/// byte a second; past `MAX_IN_FLIGHT_PER_CLIENT` A gets `429` naming the
/// limit, and client B is still served (on main, B got `503`).
#[tokio::test]
async fn one_clients_slow_uploads_do_not_take_other_clients_capacity() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::config(&uri, "http://127.0.0.1:9");
    let other_key = "other-api-key-0123456789";
    config.access = Access::Required(vec![
        Credential::named(crate::support::CLIENT, API_KEY),
        Credential::named("other-client", other_key),
    ]);
    config.limits.max_in_flight = 32;
    config.rate_limit.max_in_flight = 16;
    let ingest = InProcessIngest::start_with(config).await;
    let address = ingest.url.trim_start_matches("http://").to_owned();

    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /events HTTP/1.1\r\nHost: ingest\r\nAuthorization: Bearer {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The slow ones past A's bound were answered at once.
    let mut busy = 0;
    for stream in &mut slow {
        let mut answer = vec![0u8; 4096];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), stream.read(&mut answer)).await
        {
            let answer = String::from_utf8_lossy(&answer[..n]);
            assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
            assert!(answer.contains("MAX_IN_FLIGHT_PER_CLIENT"), "{answer}");
            assert!(answer.to_lowercase().contains("retry-after: 1"), "{answer}");
            busy += 1;
        }
    }
    assert_eq!(busy, 24, "A's requests past its 16");

    let other = crate::support::client_with_token(other_key)
        .build()
        .unwrap();
    let response = other
        .post(format!("{}/events", ingest.url))
        .json(&event_body("p-slow-other", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED, "B is served");
    drop(slow);
}

/// Issue 16, findings 7 and 10: the published development credentials,
/// a `name:short` entry, a key listed twice, the reserved client names and
/// a short pseudonym key are refused at start-up, saying which setting and
/// never the secret; `DEV_MODE=true` accepts the development credentials
/// and the service warns that it does.
#[tokio::test]
async fn development_credentials_and_ambiguous_keys_are_refused_at_start_up() {
    let mongo = ("MONGO_URI", "mongodb://127.0.0.1:1/x".to_owned());
    let processor_url = ("PROCESSOR_URL", "http://127.0.0.1:9".to_owned());
    let token = ("PROCESSOR_TOKEN", PROCESSOR_TOKEN.to_owned());
    let keys = |value: &str| ("INGEST_API_KEYS", value.to_owned());
    type Env<'a> = Vec<(&'a str, String)>;
    let cases: Vec<(&str, Env, &str)> = vec![
        (
            "ingest",
            vec![
                mongo.clone(),
                processor_url.clone(),
                token.clone(),
                keys("dev:dev-ingest-key-change-me"),
            ],
            "INGEST_API_KEYS is required: it holds a published development credential",
        ),
        (
            "ingest",
            vec![
                mongo.clone(),
                processor_url.clone(),
                token.clone(),
                keys(&format!("lab:{API_KEY}")),
                (
                    "ADMIN_API_KEYS",
                    "operator:dev-admin-key-change-me".to_owned(),
                ),
            ],
            "ADMIN_API_KEYS is required: it holds a published development credential",
        ),
        (
            "processor",
            vec![
                mongo.clone(),
                (
                    "PROCESSOR_TOKEN",
                    "dev-processor-token-change-me".to_owned(),
                ),
            ],
            "PROCESSOR_TOKEN is required: it holds a published development credential",
        ),
        (
            "ingest",
            vec![
                mongo.clone(),
                processor_url.clone(),
                token.clone(),
                keys("lab-a:tooshort"),
            ],
            "the key after the client name \"lab-a\"",
        ),
        (
            "ingest",
            vec![
                mongo.clone(),
                processor_url.clone(),
                token.clone(),
                keys(&format!("lab-a:{API_KEY},lab-b:{API_KEY}")),
            ],
            "one key is listed twice",
        ),
        (
            "ingest",
            vec![
                mongo.clone(),
                processor_url.clone(),
                token.clone(),
                keys(&format!("ingest:{API_KEY}")),
            ],
            "the client name \"ingest\" is reserved",
        ),
        (
            "ingest",
            vec![
                mongo.clone(),
                processor_url.clone(),
                token.clone(),
                keys(API_KEY),
                ("LOG_PSEUDONYM_KEY", "short-pseudonym-key".to_owned()),
            ],
            "LOG_PSEUDONYM_KEY=\"***\" is invalid: must be at least 32 characters",
        ),
    ];
    for (binary, env, message) in cases {
        let (code, printed) = start_briefly(binary, &env).await;
        assert_eq!(code, Some(2), "{binary} {env:?}: {printed}");
        assert!(printed.contains(message), "{binary}: {printed}");
        for secret in [API_KEY, "tooshort", "short-pseudonym-key"] {
            assert!(!printed.contains(secret), "a secret was printed: {printed}");
        }
    }

    // DEV_MODE=true: accepted, and the service says so at start.
    let uri = fresh_database_uri();
    let mut processor = Service::start(
        "processor",
        &[
            ("MONGO_URI", uri.clone()),
            (
                "PROCESSOR_TOKEN",
                "dev-processor-token-change-me".to_owned(),
            ),
            ("DEV_MODE", "true".to_owned()),
        ],
    )
    .await;
    assert!(processor.read_log().contains("DEV_MODE=true"));
    let mut ingest = Service::start(
        "ingest",
        &[
            ("MONGO_URI", uri.clone()),
            ("PROCESSOR_URL", processor.url()),
            (
                "PROCESSOR_TOKEN",
                "dev-processor-token-change-me".to_owned(),
            ),
            ("INGEST_API_KEYS", "dev:dev-ingest-key-change-me".to_owned()),
            ("DEV_MODE", "true".to_owned()),
        ],
    )
    .await;
    assert!(ingest.read_log().contains("DEV_MODE=true"));
    ingest.kill9();
    processor.kill9();
}

/// Issue 16, finding 10: the processor accepts every listed
/// `PROCESSOR_TOKEN` (a new one is rolled out before ingest sends it).
#[tokio::test]
async fn the_processor_accepts_every_listed_token_for_rotation() {
    let uri = fresh_database_uri();
    let new_token = "new-processor-token-0123456789";
    let mut env = processor_env(&uri, 10, 20);
    env.retain(|(k, _)| *k != "PROCESSOR_TOKEN");
    env.push(("PROCESSOR_TOKEN", format!("{new_token},{PROCESSOR_TOKEN}")));
    let processor = Service::start("processor", &env).await;
    for token in [new_token, PROCESSOR_TOKEN] {
        let mut body = event_body("p-rotate", 1);
        body["eventId"] = uuid::Uuid::new_v4().to_string().into();
        let response = crate::support::client_with_token(token)
            .build()
            .unwrap()
            .post(format!("{}/queue", processor.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{token}");
    }
}

/// Issue 16, finding 8: failed authentications are logged (never what was
/// presented), counted, and limited per source address: of 300 wrong keys
/// from one address most get `429`, and then so does a right key from it,
/// while the same right key from another address is served.
#[tokio::test]
async fn failed_authentication_is_logged_counted_and_limited_per_source() {
    let uri = fresh_database_uri();
    let ingest = Service::start("ingest", &ingest_env(&uri, "http://127.0.0.1:9")).await;
    let url = format!("{}/events", ingest.url());
    let wrong = "wrong-key-presented-0123456789";
    let mut answers = std::collections::BTreeMap::new();
    for n in 0..300 {
        let response = crate::support::client_with_token(wrong)
            .build()
            .unwrap()
            .post(&url)
            .json(&event_body("p-guess", n))
            .send()
            .await
            .unwrap();
        *answers.entry(response.status().as_u16()).or_insert(0) += 1;
    }
    let unauthorized = answers.get(&401).copied().unwrap_or(0);
    assert!((20..=40).contains(&unauthorized), "{answers:?}");
    assert_eq!(answers.get(&429).copied().unwrap_or(0), 300 - unauthorized);

    let right = crate::support::client()
        .post(&url)
        .json(&event_body("p-guess", 300))
        .send()
        .await
        .unwrap();
    assert_eq!(
        right.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the address waits"
    );
    assert!(right.headers().contains_key("retry-after"));
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    // A client key on an operator route: 403, logged with the client's name
    // and counted; more of them than the failures that block an address,
    // and its address is not held back for them.
    for _ in 0..30 {
        let forbidden = elsewhere
            .get(format!("{}/admin/stats", ingest.url()))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    }
    let elsewhere = elsewhere
        .post(&url)
        .bearer_auth(API_KEY)
        .json(&event_body("p-guess", 301))
        .send()
        .await
        .unwrap();
    assert_eq!(
        elsewhere.status(),
        StatusCode::ACCEPTED,
        "another address is served"
    );

    let log = ingest.read_log();
    assert!(log.contains("authentication failed"), "{log}");
    assert!(!log.contains(wrong), "the presented key was logged");
    assert!(
        log.lines().any(
            |line| line.contains("operator route refused to a client credential")
                && line.contains(crate::support::CLIENT)
        ),
        "{log}"
    );
    let metrics = crate::support::scrape(&ingest.metrics_url()).await;
    assert!(
        metrics.contains("auth_failures_total{reason=\"invalid\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("auth_failures_total{reason=\"forbidden\"}"),
        "{metrics}"
    );
    assert_eq!(
        Db::connect(&uri)
            .await
            .count("queued_events", doc! {})
            .await,
        1
    );
}

/// Issue 16, finding 6: every query a client's request makes the database
/// run carries a server-side time limit (`maxTimeMS`), so no request can
/// leave a scan running after it gave up.
#[tokio::test]
async fn every_read_a_client_triggers_carries_a_server_side_time_limit() {
    use crate::support::fault_proxy::{Command, Fault, Predicate};
    let proxy = FaultProxy::start_for_shared().await;
    let database = format!("t_{}", uuid::Uuid::new_v4().simple());
    let ingest = InProcessIngest::start(&proxy.uri(&database), "http://127.0.0.1:9").await;
    // Pass-through rules that only count: reads with and without a limit.
    // The live stream's change stream is not one of them: one per ingest,
    // shared by every listener, reading the oplog from now on, and the
    // driver offers no maxTimeMS for it (its waits are maxAwaitTimeMS).
    let limited: Predicate = std::sync::Arc::new(|c: &Command| c.body.contains_key("maxTimeMS"));
    let unlimited: Predicate = std::sync::Arc::new(|c: &Command| {
        !c.body.contains_key("maxTimeMS") && !format!("{:?}", c.body).contains("$changeStream")
    });
    let mut with_limit = Vec::new();
    let mut without_limit = Vec::new();
    for command in ["find", "aggregate", "count"] {
        for collection in ["queued_events", "processed_events"] {
            let pass = Fault::DelayRequest(Duration::ZERO);
            with_limit.push(proxy.on(command, collection, pass, usize::MAX, Some(limited.clone())));
            without_limit.push((
                command,
                collection,
                proxy.on(
                    command,
                    collection,
                    pass,
                    usize::MAX,
                    Some(unlimited.clone()),
                ),
            ));
        }
    }

    let client = crate::support::client();
    let mut ids = Vec::new();
    for n in 0..3 {
        let response = client
            .post(format!("{}/events", ingest.url))
            .json(&event_body("p-limits", n))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        ids.push(body["eventId"].as_str().unwrap().to_owned());
    }
    for path in [
        format!("/events/{}", ids[0]),
        "/patients/p-limits/events?limit=2".to_owned(),
        format!("/patients/p-limits/events?limit=2&after={}", ids[1]),
    ] {
        let response = client
            .get(format!("{}{path}", ingest.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    // The stream's replay from an old id: the first message is enough.
    let mut stream = client
        .get(format!("{}/events/stream", ingest.url))
        .header("Last-Event-ID", format!("0-{}", ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.chunk()).await;
    drop(stream);

    let counted: usize = with_limit.iter().map(|rule| proxy.hits(*rule)).sum();
    assert!(counted > 0, "no read was seen through the proxy");
    for (command, collection, rule) in without_limit {
        assert_eq!(
            proxy.hits(rule),
            0,
            "a {command} on {collection} without maxTimeMS"
        );
    }
}
