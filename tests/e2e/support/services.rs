//! The services under test: real binaries spawned as processes (the `stack`
//! crate's [`Service`], shared with the benchmarks), or the real `IngestApp`
//! running inside the test process (for fast API tests).

use std::time::Duration;

use medical_events::auth::{Access, Credential, Secret};
use medical_events::config::{IngestConfig, MongoSettings, PatientLoggingSetting};
use medical_events::http::limits::{HttpLimits, RateLimit};
use medical_events::http::listener::ConnectionLimits;
use medical_events::ingest::IngestApp;
use medical_events::ingest::mllp::MllpSettings;
use medical_events::telemetry::LogFormat;

pub use stack::{Service, binary_path};

/// The real ingest app served from inside the test process on a random port.
pub struct InProcessIngest {
    pub url: String,
    /// `/metrics` on its own listener, when the config asked for one.
    pub metrics_url: Option<String>,
    /// Each MLLP listener's name and bound address (see `mllp_config`).
    pub mllp: Vec<(String, std::net::SocketAddr)>,
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
            dev_mode: false,
            access: Access::Required(vec![Credential::named(super::CLIENT, super::API_KEY)]),
            admins: vec![Credential::named("test-operator", super::ADMIN_KEY)],
            processor_token: Some(Secret::new(super::PROCESSOR_TOKEN)),
            rate_limit: RateLimit {
                per_second: 100_000,
                burst: 100_000,
                max_in_flight: 1024,
            },
            limits: HttpLimits {
                max_in_flight: 1024,
                request_timeout: Duration::from_secs(40),
                connections: ConnectionLimits::from_source(&[("HTTP_DRAIN_MS", "2000")])
                    .expect("connection limits"),
            },
            tls: None,
            processor_ca: None,
            intake: Default::default(),
            metrics_port: 0,
            metrics_bind: [127, 0, 0, 1].into(),
            patient_logging: PatientLoggingSetting::Pseudonym(None),
            streams: Default::default(),
            mllp: Default::default(),
        }
    }

    /// The test configuration with one MLLP listener of the test client on
    /// a free loopback port, its options as in `MLLP_LISTENERS` (`;...`).
    pub fn mllp_config(mongo_uri: &str, options: &str) -> IngestConfig {
        let mut config = Self::config(mongo_uri, "http://127.0.0.1:9");
        let source = [(
            "MLLP_LISTENERS",
            format!("{}@127.0.0.1:0{options}", super::CLIENT),
        )];
        let source = [(source[0].0, source[0].1.as_str())];
        config.mllp = MllpSettings::from_source(&source, &config.access).expect("MLLP settings");
        config
    }

    /// The address of the first MLLP listener.
    pub fn mllp_address(&self) -> std::net::SocketAddr {
        self.mllp.first().expect("an MLLP listener").1
    }

    pub async fn start_with(config: IngestConfig) -> Self {
        let app = IngestApp::build(config).await.expect("build ingest");
        let url = format!("http://127.0.0.1:{}", app.port());
        let mllp = app.mllp_addresses();
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
            mllp,
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
