//! Building and running each service, shared by `main` and the tests so the
//! tests exercise the real wiring.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::auth::{Access, Guard};
use crate::config::{
    DeliverySettings, IngestConfig, MongoSettings, PatientLoggingSetting, ProcessorConfig, TlsFiles,
};
use crate::http::ingest::{self, IngestGuards, IngestState};
use crate::http::limits::KeyedLimiter;
use crate::http::processor::{self, ProcessorState};
use crate::intake::Intake;
use crate::notify::ProcessorNotifier;
use crate::processing::{Delivery, Handler, SimulatedProcessing};
use crate::scheduler::LaneConfig;
use crate::store::{MIN_AGE, Retention, Store, StoreError};
use crate::tls::TlsListener;
use crate::worker::{Worker, WorkerConfig};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting found wrong only at start-up (a `mongodb+srv` name that
    /// does not resolve): exit code 2, as for the other settings.
    #[error("configuration error: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on port {port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot set up an HTTP client: {0}")]
    Client(String),
}

/// Connects and creates the indexes, waiting for MongoDB as long as it takes:
/// no event may be accepted before the unique indexes exist. A database of
/// an incompatible layout stops start-up instead.
async fn open_store(
    settings: &MongoSettings,
    app_name: &str,
    logging: &PatientLoggingSetting,
) -> Result<Store, StartupError> {
    // Install the metrics recorder before anything records.
    crate::metrics::handle();
    let store = match Store::connect(&settings.uri, settings.timeout, app_name).await {
        Ok(store) => store,
        Err(StoreError::InvalidUri(e)) => {
            return Err(crate::config::invalid_mongo_uri(&settings.uri, &e).into());
        }
        Err(e) => return Err(e.into()),
    };
    let mut delay = Duration::from_millis(250);
    loop {
        match store.ensure_indexes().await {
            Ok(()) => break,
            Err(e @ StoreError::Incompatible(_)) => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, "MongoDB not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    let key = match logging {
        PatientLoggingSetting::Pseudonym(None) => store.log_pseudonym_key().await?,
        _ => Vec::new(),
    };
    crate::privacy::init(logging.resolve(|| key));
    info!(
        database = store.database_name(),
        "connected to MongoDB; indexes in place"
    );
    Ok(store)
}

/// Serves `router` until `shutdown` resolves, then finishes in-flight
/// requests; over HTTPS when `tls` is set.
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    service: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    match tls {
        Some(acceptor) => {
            info!(port, "{service} listening (https)");
            let listener = TlsListener::new(listener, acceptor).map_err(StartupError::Serve)?;
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(StartupError::Serve)
        }
        None => {
            info!(port, "{service} listening");
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(StartupError::Serve)
        }
    }
}

/// Serves the public router and, on its own listener, `/metrics`, until
/// `shutdown` resolves.
async fn serve_both(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    metrics: Option<TcpListener>,
    service: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let (stop, stopped) = watch::channel(false);
    let metrics_task = metrics.map(|listener| {
        let mut stopped = stopped.clone();
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        info!(port, "metrics listening");
        tokio::spawn(async move {
            let router = crate::http::metrics_router();
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        })
    });
    let result = serve(listener, router, tls, service, shutdown).await;
    let _ = stop.send(true);
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    result
}

fn tls_acceptor(files: Option<&TlsFiles>) -> Result<Option<TlsAcceptor>, StartupError> {
    files
        .map(crate::tls::acceptor)
        .transpose()
        .map_err(StartupError::Tls)
}

async fn bind(port: u16) -> Result<TcpListener, StartupError> {
    TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .map_err(|source| StartupError::Bind { port, source })
}

/// The metrics listener (port 0: any free port, as for `PORT`).
async fn bind_metrics(port: u16) -> Result<Option<TcpListener>, StartupError> {
    bind(port).await.map(Some)
}

fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or_default()
}

pub struct IngestApp {
    listener: TcpListener,
    metrics: Option<TcpListener>,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
}

impl IngestApp {
    pub async fn build(config: IngestConfig) -> Result<Self, StartupError> {
        crate::config::check_request_budget(&config.limits, &config.mongo)?;
        if matches!(config.access, Access::Disabled) {
            warn!("AUTH_DISABLED=true: ingest accepts requests without an API key");
        }
        let store = open_store(&config.mongo, "ingest", &config.patient_logging).await?;
        let state = IngestState {
            outcomes: crate::http::stream::OutcomeFeed::new(store.clone()),
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
            metrics: bind_metrics(config.metrics_port).await?,
            tls: tls_acceptor(config.tls.as_ref())?,
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

    /// The port `/metrics` is served on, if any.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(port_of)
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        serve_both(
            self.listener,
            self.router,
            self.tls,
            self.metrics,
            "ingest",
            shutdown,
        )
        .await?;
        info!("ingest stopped");
        Ok(())
    }
}

pub struct ProcessorApp {
    listener: TcpListener,
    metrics: Option<TcpListener>,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    worker: Worker<Handler>,
    shutdown_grace: Duration,
}

impl ProcessorApp {
    pub async fn build(config: ProcessorConfig) -> Result<Self, StartupError> {
        crate::config::check_request_budget(&config.limits, &config.mongo)?;
        if matches!(config.access, Access::Disabled) {
            warn!("AUTH_DISABLED=true: the processor accepts /queue without a token");
        }
        let store = open_store(&config.mongo, "processor", &config.patient_logging).await?;
        let handler = handler(&config)?;
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
                retention: (config.retention.events.is_some()
                    || config.retention.outcomes.is_some())
                .then_some(Retention {
                    events: config.retention.events,
                    idempotency_ttl: config.retention.idempotency_ttl,
                    outcomes: config.retention.outcomes,
                    min_age: MIN_AGE,
                }),
            },
        )
        .await?;
        let state = ProcessorState {
            intake: Arc::new(Intake::new(store, Default::default())),
            scheduler: worker.scheduler().clone(),
        };
        Ok(Self {
            listener: bind(config.port).await?,
            metrics: bind_metrics(config.metrics_port).await?,
            tls: tls_acceptor(config.tls.as_ref())?,
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

    /// Serves until `shutdown` resolves; then stops taking requests, lets
    /// the lanes finish or hand back their events within the grace period,
    /// and releases its bucket leases.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        serve_both(
            self.listener,
            self.router,
            self.tls,
            self.metrics,
            "processor",
            shutdown,
        )
        .await?;
        self.worker.shutdown(self.shutdown_grace).await;
        info!("processor stopped");
        Ok(())
    }
}

fn handler(config: &ProcessorConfig) -> Result<Handler, StartupError> {
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
