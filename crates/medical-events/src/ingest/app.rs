//! Building and running ingest: the store, intake, the nudges to the
//! processor, the outcome feed, the guards, and the HTTP router.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::mllp::MllpListeners;
use super::notify::ProcessorNotifier;
use super::routes::{self as ingest, IngestGuards, IngestState};
use crate::auth::{Access, Guard};
use crate::config::{ConfigError, IngestConfig};
use crate::http::limits::KeyedLimiter;
use crate::http::openapi;
use crate::intake::Intake;
use crate::server::{
    StartupError, bind, bind_metrics, open_store, port_of, serve_both, tls_acceptor,
};
use crate::service_main::Service;
use crate::shutdown;
use crate::telemetry::LogFormat;

pub struct IngestApp {
    listener: TcpListener,
    mllp: MllpListeners,
    state: IngestState,
    metrics: Option<TcpListener>,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    connections: crate::http::listener::ConnectionLimits,
}

impl IngestApp {
    pub async fn build(config: IngestConfig) -> Result<Self, StartupError> {
        crate::config::check_request_budget(&config.limits, &config.mongo)?;
        if config.dev_mode {
            warn!(
                "DEV_MODE=true: the published development credentials are accepted; never in production"
            );
        }
        if matches!(config.access, Access::Disabled) {
            warn!("AUTH_DISABLED=true: ingest accepts requests without an API key");
        }
        let store = open_store(&config.mongo, "ingest", &config.patient_logging).await?;
        let state = IngestState {
            outcomes: Arc::new(crate::ingest::stream::OutcomeFeed::new(
                store.clone(),
                config.streams,
            )),
            intake: Arc::new(Intake::new(store, config.intake)),
            notifier: ProcessorNotifier::spawn(
                &config.processor_url,
                config.processor_token.clone(),
                config.processor_ca.as_deref(),
            )
            .map_err(StartupError::Client)?,
        };
        Ok(Self {
            listener: bind(config.port).await?,
            mllp: MllpListeners::bind(&config.mllp).await?,
            state: state.clone(),
            metrics: bind_metrics(config.metrics_port, config.metrics_bind).await?,
            tls: tls_acceptor(config.tls.as_ref())?,
            connections: config.limits.connections,
            router: ingest::router(
                state,
                IngestGuards {
                    guard: Arc::new(Guard::new(&config.access, &config.admins)),
                    limiter: Arc::new(KeyedLimiter::new(config.rate_limit)),
                    limits: config.limits,
                },
            ),
        })
    }

    pub fn port(&self) -> u16 {
        port_of(&self.listener)
    }

    /// Each MLLP listener's name and bound address.
    pub fn mllp_addresses(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.mllp.addresses()
    }

    /// The port `/metrics` is served on, if any.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(port_of)
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let stopping = CancellationToken::new();
        let connections = TaskTracker::new();
        self.mllp.spawn(
            Arc::clone(&self.state.intake),
            self.state.notifier.clone(),
            stopping.clone(),
            connections.clone(),
        );
        let served = serve_both(
            self.listener,
            self.router,
            self.tls,
            self.metrics,
            self.connections,
            "ingest",
            shutdown,
            &stopping,
        )
        .await;
        // HTTP is drained; MLLP connections finish the message in hand.
        connections.close();
        connections.wait().await;
        served?;
        info!("ingest stopped");
        Ok(())
    }
}

impl Service for IngestApp {
    const NAME: &'static str = "ingest";
    const ABOUT: &'static str = "The ingest service: POST /events, stored durably before the 202.";
    const DEFAULT_PORT: u16 = 3000;
    type Config = IngestConfig;

    fn config_from_env() -> Result<IngestConfig, ConfigError> {
        IngestConfig::from_env()
    }
    fn log_format(config: &IngestConfig) -> LogFormat {
        config.log_format
    }
    async fn build(config: IngestConfig) -> Result<Self, StartupError> {
        IngestApp::build(config).await
    }
    async fn run(self) -> Result<(), StartupError> {
        IngestApp::run(self, shutdown::signal()).await
    }
    fn openapi() -> String {
        openapi::render(&super::routes::openapi())
    }
}
