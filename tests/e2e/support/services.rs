//! The services under test: real binaries spawned as processes, or the real
//! `IngestApp` running inside the test process (for fast API tests).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use medical_events::auth::{Access, Credential, Secret};
use medical_events::config::{IngestConfig, MongoSettings, PatientLoggingSetting};
use medical_events::http::limits::{HttpLimits, RateLimit};
use medical_events::ingest::IngestApp;
use medical_events::telemetry::LogFormat;

use super::repo_root;

/// A spawned `ingest` or `processor` binary.
pub struct Service {
    name: String,
    scheme: &'static str,
    binary: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
    metrics_port: u16,
    log: PathBuf,
    /// Where this run's lines start in the (appended) log.
    log_offset: usize,
    child: Option<Child>,
}

/// The path of a built workspace binary (`ingest`, `processor`).
pub fn binary_path(name: &str) -> PathBuf {
    // Test executables live in <target>/<profile>/deps; the binaries one level up.
    let exe = std::env::current_exe().expect("current exe");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

impl Service {
    /// Starts `name` (`ingest` or `processor`) with `env` plus PORT, waiting for `/health`.
    pub async fn start(name: &str, env: &[(&str, String)]) -> Self {
        let logs = repo_root().join("target/test-logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let tls = env.iter().any(|(k, _)| *k == "TLS_CERT_PATH");
        let mut service = Self {
            scheme: if tls { "https" } else { "http" },
            binary: binary_path(name),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            // Ports are chosen by the service (0) and read from its log: a
            // port picked here could be taken by anything before it binds.
            port: 0,
            metrics_port: 0,
            name: name.to_owned(),
            log_offset: 0,
            log: logs.join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple())),
            child: None,
        };
        service.spawn();
        service.learn_ports().await;
        service.wait_healthy().await;
        service
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where this service serves `/metrics` (its separate listener).
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics_port)
    }

    /// The process id (for SIGSTOP/SIGCONT and /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        self.log_offset = self.read_log().len();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open service log");
        let child = Command::new(&self.binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("PORT", self.port.to_string())
            .env("METRICS_PORT", self.metrics_port.to_string())
            // Unless a test pins them, the service picks free ports.
            .envs(
                self.env
                    .iter()
                    .filter(|(k, _)| k == "PORT" || k == "METRICS_PORT")
                    .map(|(k, v)| (k, v)),
            )
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn service");
        self.child = Some(child);
    }

    /// The ports this run of the service bound, from its log.
    async fn learn_ports(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.read_log();
            let run = log.get(self.log_offset..).unwrap_or("");
            let service = port_of(run, &format!("\"{} listening", self.name));
            let metrics = port_of(run, "\"metrics listening");
            if let (Some(service), Some(metrics)) = (service, metrics) {
                self.port = service;
                self.metrics_port = metrics;
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "service exited during start-up ({status}); log: {}",
                    self.log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "service did not say which port it listens on; log: {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_healthy(&mut self) {
        // Liveness only: certificate checks belong to the tests that make them.
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(format!("{}/health", self.url())).send().await
                && response.status().is_success()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "service exited during start-up ({status}); log: {}",
                    self.log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "service not healthy after 60 s; log: {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (panics after `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("service is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "service did not exit within {timeout:?} of SIGTERM; log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the same binary again, same ports and settings.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.learn_ports().await;
        self.wait_healthy().await;
    }

    pub fn read_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The real ingest app served from inside the test process on a random port.
pub struct InProcessIngest {
    pub url: String,
    /// `/metrics` on its own listener, when the config asked for one.
    pub metrics_url: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl InProcessIngest {
    /// `processor_url` may point nowhere: notifications are best-effort.
    pub async fn start(mongo_uri: &str, processor_url: &str) -> Self {
        Self::start_with(Self::config(mongo_uri, processor_url)).await
    }

    /// The test configuration: auth with [`super::API_KEY`], generous limits.
    pub fn config(mongo_uri: &str, processor_url: &str) -> IngestConfig {
        IngestConfig {
            port: 0,
            mongo: MongoSettings {
                uri: mongo_uri.to_owned(),
                timeout: Duration::from_secs(5),
            },
            processor_url: processor_url.to_owned(),
            log_format: LogFormat::Pretty,
            access: Access::Required(vec![Credential::named(super::CLIENT, super::API_KEY)]),
            admins: vec![Credential::named("test-operator", super::ADMIN_KEY)],
            processor_token: Some(Secret::new(super::PROCESSOR_TOKEN)),
            rate_limit: RateLimit {
                per_second: 100_000,
                burst: 100_000,
            },
            limits: HttpLimits {
                max_in_flight: 1024,
                request_timeout: Duration::from_secs(40),
            },
            tls: None,
            processor_ca: None,
            intake: Default::default(),
            metrics_port: 0,
            patient_logging: PatientLoggingSetting::Pseudonym(None),
        }
    }

    pub async fn start_with(config: IngestConfig) -> Self {
        let app = IngestApp::build(config).await.expect("build ingest");
        let url = format!("http://127.0.0.1:{}", app.port());
        let metrics_url = app
            .metrics_port()
            .map(|port| format!("http://127.0.0.1:{port}/metrics"));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        Self {
            url,
            metrics_url,
            stop: Some(stop),
        }
    }
}

impl Drop for InProcessIngest {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The port of the last `<what>...","port":N` line of a JSON log.
fn port_of(log: &str, what: &str) -> Option<u16> {
    log.lines()
        .filter(|line| line.contains(what))
        .filter_map(|line| {
            let rest = line.split("\"port\":").nth(1)?;
            rest.split([',', '}']).next()?.trim().parse().ok()
        })
        .next_back()
}
