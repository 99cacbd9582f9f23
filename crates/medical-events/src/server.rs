//! What both services do to start and serve: connect to the store (and wait
//! for its indexes), bind the listeners, serve HTTP(S) and `/metrics` until
//! shutdown. Each service's own wiring is its `app.rs`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::config::{MongoSettings, PatientLoggingSetting};
use crate::store::{Store, StoreError};
use crate::tls::TlsFiles;
use crate::tls::TlsListener;

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
pub(crate) async fn open_store(
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
pub(crate) async fn serve_both(
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

pub(crate) fn tls_acceptor(files: Option<&TlsFiles>) -> Result<Option<TlsAcceptor>, StartupError> {
    files
        .map(crate::tls::acceptor)
        .transpose()
        .map_err(StartupError::Tls)
}

pub(crate) async fn bind(port: u16) -> Result<TcpListener, StartupError> {
    TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .map_err(|source| StartupError::Bind { port, source })
}

/// The metrics listener (port 0: any free port, as for `PORT`).
pub(crate) async fn bind_metrics(port: u16) -> Result<Option<TcpListener>, StartupError> {
    bind(port).await.map(Some)
}

pub(crate) fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or_default()
}
