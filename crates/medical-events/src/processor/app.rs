//! Building and running a processor: the store, the worker (leases, lanes,
//! change stream, sweeps, pruner), the handler, and the HTTP router.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::mllp_delivery::MllpDelivery;
use super::processing::{Delivery, DeliverySettings, Handler, Routed, SimulatedProcessing};
use super::routes::{self as processor, ProcessorState};
use super::scheduler::LaneConfig;
use super::worker::{Worker, WorkerConfig};
use crate::auth::{Access, Guard};
use crate::config::{ConfigError, ProcessorConfig};
use crate::http::openapi;
use crate::intake::Intake;
use crate::server::{
    StartupError, bind, bind_metrics, open_store, port_of, serve_both, tls_acceptor,
};
use crate::service_main::Service;
use crate::shutdown;
use crate::telemetry::LogFormat;

pub struct ProcessorApp {
    listener: TcpListener,
    metrics: Option<TcpListener>,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    connections: crate::http::listener::ConnectionLimits,
    worker: Worker<Routed>,
    shutdown_grace: Duration,
}

impl ProcessorApp {
    pub async fn build(config: ProcessorConfig) -> Result<Self, StartupError> {
        crate::config::check_request_budget(&config.limits, &config.mongo)?;
        if config.dev_mode {
            warn!(
                "DEV_MODE=true: the published development credentials are accepted; never in production"
            );
        }
        if matches!(config.access, Access::Disabled) {
            warn!("AUTH_DISABLED=true: the processor accepts /queue without a token");
        }
        let store = open_store(&config.mongo, "processor", &config.patient_logging).await?;
        store.set_max_merged(config.max_merged_writes);
        let handler = handler(&config)?;
        // Everything that can refuse to start does so before the worker
        // joins the fleet: an instance that exits after joining leaves its
        // session to run out, and the buckets it took wait until it does.
        // (Connections made while it joins wait in the accept queue.)
        let listener = bind(config.port).await?;
        let metrics = bind_metrics(config.metrics_port, config.metrics_bind).await?;
        let tls = tls_acceptor(config.tls.as_ref())?;
        let worker = Worker::start(
            &store,
            handler,
            WorkerConfig {
                lanes: LaneConfig {
                    retry: config.retry,
                    max_lanes: config.max_active_lanes,
                    attempt_timeout: config.attempt_timeout,
                    on_failure: config.on_failure,
                },
                lease: config.lease,
                sweep_interval: config.sweep_interval,
                retention: config
                    .retention
                    .removes_anything()
                    .then_some(config.retention),
            },
        )
        .await?;
        let state = ProcessorState {
            intake: Arc::new(Intake::new(store, Default::default())),
            scheduler: worker.scheduler().clone(),
        };
        Ok(Self {
            listener,
            metrics,
            tls,
            connections: config.limits.connections,
            router: processor::router(
                state,
                Arc::new(Guard::new(&config.access, &[])),
                config.limits,
            ),
            worker,
            shutdown_grace: config.shutdown_grace,
        })
    }

    pub fn port(&self) -> u16 {
        port_of(&self.listener)
    }

    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(port_of)
    }

    /// Serves until `shutdown` resolves; then stops taking requests while
    /// the lanes finish or hand back their events within the grace period
    /// and the bucket leases are released. Both at once, so that the exit
    /// comes after the grace (plus `AFTER_GRACE`) or the HTTP drain,
    /// whichever is longer, not after the two added up.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let stopping = CancellationToken::new();
        let serving = serve_both(
            self.listener,
            self.router,
            self.tls,
            self.metrics,
            self.connections,
            "processor",
            shutdown,
            &stopping,
        );
        let worker = async {
            stopping.cancelled().await;
            self.worker.shutdown(self.shutdown_grace).await;
        };
        let (served, ()) = tokio::join!(serving, worker);
        served?;
        info!("processor stopped");
        Ok(())
    }
}

fn handler(config: &ProcessorConfig) -> Result<Routed, StartupError> {
    let rest = json_handler(config)?;
    let mllp = config
        .mllp_delivery
        .clone()
        .map(MllpDelivery::new)
        .transpose()
        .map_err(StartupError::Client)?;
    if let Some(mllp) = &mllp {
        info!(address = mllp.address(), "delivering HL7 events over MLLP");
    }
    Ok(Routed { mllp, rest })
}

/// What events that did not arrive as HL7 get (and all of them without
/// `DELIVERY_MLLP`): delivery as JSON, or the simulated work.
fn json_handler(config: &ProcessorConfig) -> Result<Handler, StartupError> {
    Ok(match &config.delivery {
        None => Handler::Simulated(SimulatedProcessing {
            min: config.processing_min,
            max: config.processing_max,
        }),
        Some(DeliverySettings { url, auth_header }) => {
            let auth = auth_header
                .as_ref()
                .map(|(name, value)| {
                    let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|e| e.to_string())?;
                    let mut value = reqwest::header::HeaderValue::from_str(value.expose())
                        .map_err(|e| e.to_string())?;
                    value.set_sensitive(true);
                    Ok::<_, String>((name, value))
                })
                .transpose()
                .map_err(StartupError::Client)?;
            info!(url = %crate::config::mask_uri_password(url), "delivering events downstream");
            Handler::Delivery(
                Delivery::new(url, auth, config.attempt_timeout).map_err(StartupError::Client)?,
            )
        }
    })
}

impl Service for ProcessorApp {
    const NAME: &'static str = "processor";
    const ABOUT: &'static str =
        "The processor service: works through each patient's events in order.";
    const DEFAULT_PORT: u16 = 3001;
    type Config = ProcessorConfig;

    fn config_from_env() -> Result<ProcessorConfig, ConfigError> {
        ProcessorConfig::from_env()
    }
    fn log_format(config: &ProcessorConfig) -> LogFormat {
        config.log_format
    }
    async fn build(config: ProcessorConfig) -> Result<Self, StartupError> {
        ProcessorApp::build(config).await
    }
    async fn run(self) -> Result<(), StartupError> {
        ProcessorApp::run(self, shutdown::signal()).await
    }
    fn openapi() -> String {
        openapi::render(&super::routes::openapi())
    }
}
