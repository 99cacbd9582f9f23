//! What both services do to start and serve: connect to the store (and wait
//! for its indexes), bind the listeners, serve HTTP(S) and `/metrics` until
//! shutdown. Each service's own wiring is its `app.rs`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{MongoSettings, PatientLoggingSetting};
use crate::http::listener::ConnectionLimits;
use crate::store::{Store, StoreError};
use crate::tls::TlsFiles;

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

/// Serves the public router and, on its own listener, `/metrics`, until
/// `shutdown` resolves; both under the connection limits of `limits`.
/// Cancels `stopping` when `shutdown` resolves (what else the service stops
/// then runs during the HTTP drain) and when serving ends for any reason.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_both(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    metrics: Option<TcpListener>,
    limits: ConnectionLimits,
    service: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopping: &CancellationToken,
) -> Result<(), StartupError> {
    let signal = stopping.clone();
    let shutdown = async move {
        shutdown.await;
        signal.cancel();
    };
    let (stop, stopped) = watch::channel(false);
    let metrics_task = metrics.map(|listener| {
        let mut stopped = stopped.clone();
        info!(port = port_of(&listener), "metrics listening");
        tokio::spawn(crate::http::listener::serve(
            listener,
            crate::http::metrics_router(),
            None,
            limits,
            "metrics",
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ))
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(port = port_of(&listener), "{service} listening ({scheme})");
    crate::http::listener::serve(listener, router, tls, limits, service, shutdown).await;
    stopping.cancel();
    let _ = stop.send(true);
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    Ok(())
}

pub(crate) fn tls_acceptor(files: Option<&TlsFiles>) -> Result<Option<TlsAcceptor>, StartupError> {
    files
        .map(crate::tls::acceptor)
        .transpose()
        .map_err(StartupError::Tls)
}

pub(crate) async fn bind(port: u16) -> Result<TcpListener, StartupError> {
    listen(SocketAddr::from(([0, 0, 0, 0], port)))
        .map_err(|source| StartupError::Bind { port, source })
}

/// A listener with a deeper accept queue than tokio's 1,024 (the kernel
/// caps it at `net.core.somaxconn`): a burst of connections waits there
/// instead of being dropped by the kernel, which the caller sees as a
/// connection that hangs.
fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

const LISTEN_BACKLOG: u32 = 4_096;

/// The metrics listener (port 0: any free port, as for `PORT`). With TLS on
/// the public port, `/metrics` (plain HTTP) answers on loopback only, unless
/// `METRICS_BIND` says otherwise.
pub(crate) async fn bind_metrics(
    port: u16,
    address: std::net::IpAddr,
) -> Result<Option<TcpListener>, StartupError> {
    listen(SocketAddr::from((address, port)))
        .map(Some)
        .map_err(|source| StartupError::Bind { port, source })
}

pub(crate) fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or_default()
}
