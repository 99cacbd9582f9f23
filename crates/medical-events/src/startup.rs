//! Building and running each service, shared by `main` and the tests so the
//! tests exercise the real wiring.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::auth::{Access, Guard};
use crate::config::{IngestConfig, MongoSettings, ProcessorConfig, TlsFiles};
use crate::http::ingest::{self, IngestGuards, IngestState};
use crate::http::limits::KeyedLimiter;
use crate::http::processor::{self, ProcessorState};
use crate::intake::Intake;
use crate::notify::ProcessorNotifier;
use crate::processing::SimulatedProcessing;
use crate::scheduler::Scheduler;
use crate::store::{Store, StoreError};
use crate::tls::TlsListener;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
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
    #[error("cannot set up the client for PROCESSOR_URL: {0}")]
    Client(String),
}

/// Connects and creates the indexes, waiting for MongoDB as long as it takes:
/// no event may be accepted before the unique indexes exist.
async fn open_store(settings: &MongoSettings, app_name: &str) -> Result<Store, StartupError> {
    // Install the metrics recorder before anything records.
    crate::metrics::handle();
    let store = Store::connect(&settings.uri, settings.timeout, app_name).await?;
    let mut delay = Duration::from_millis(250);
    loop {
        match store.ensure_indexes().await {
            Ok(()) => break,
            Err(e) => {
                warn!(error = %e, "MongoDB not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
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

pub struct IngestApp {
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
}

impl IngestApp {
    pub async fn build(config: IngestConfig) -> Result<Self, StartupError> {
        if matches!(config.access, Access::Disabled) {
            warn!("AUTH_DISABLED=true: ingest accepts requests without an API key");
        }
        let store = open_store(&config.mongo, "ingest").await?;
        let state = IngestState {
            intake: Arc::new(Intake::new(store)),
            notifier: ProcessorNotifier::spawn(
                &config.processor_url,
                config.processor_token.clone(),
                config.processor_ca.as_deref(),
            )
            .map_err(StartupError::Client)?,
        };
        Ok(Self {
            listener: bind(config.port).await?,
            tls: tls_acceptor(config.tls.as_ref())?,
            router: ingest::router(
                state,
                IngestGuards {
                    guard: Arc::new(Guard::new(&config.access)),
                    limiter: Arc::new(KeyedLimiter::new(config.rate_limit)),
                    limits: config.limits,
                },
            ),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        serve(self.listener, self.router, self.tls, "ingest", shutdown).await?;
        info!("ingest stopped");
        Ok(())
    }
}

pub struct ProcessorApp {
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    scheduler: Scheduler<SimulatedProcessing>,
    shutdown_grace: Duration,
}

impl ProcessorApp {
    pub async fn build(config: ProcessorConfig) -> Result<Self, StartupError> {
        if matches!(config.access, Access::Disabled) {
            warn!("AUTH_DISABLED=true: the processor accepts /queue without a token");
        }
        let store = open_store(&config.mongo, "processor").await?;
        let handler = SimulatedProcessing {
            min: config.processing_min,
            max: config.processing_max,
        };
        let scheduler = Scheduler::with_lane_limit(
            store.clone(),
            handler,
            config.retry,
            config.max_active_lanes,
        );
        match scheduler.resume_unfinished().await {
            Ok(patients) => info!(patients, "resumed unfinished events"),
            Err(e) => {
                warn!(error = %e, "could not resume unfinished events now; the sweep will retry")
            }
        }
        scheduler.spawn_sweeper(config.sweep_interval);
        let state = ProcessorState {
            intake: Arc::new(Intake::new(store)),
            scheduler: scheduler.clone(),
        };
        Ok(Self {
            listener: bind(config.port).await?,
            tls: tls_acceptor(config.tls.as_ref())?,
            router: processor::router(state, Arc::new(Guard::new(&config.access)), config.limits),
            scheduler,
            shutdown_grace: config.shutdown_grace,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown` resolves; then stops taking requests and lets
    /// the lanes finish or hand back their events within the grace period.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        serve(self.listener, self.router, self.tls, "processor", shutdown).await?;
        self.scheduler.shutdown(self.shutdown_grace).await;
        info!("processor stopped");
        Ok(())
    }
}
