//! Serving an HTTP listener with connection-level limits: a connection is
//! admitted only under a cap on open connections overall and per source
//! address, and hyper's header timer ends one that sends its request head
//! too slowly or sits idle between requests. Without these, anyone who can
//! reach the port holds its connections (and file descriptors) for as long
//! as they like without ever presenting a credential.
//!
//! One setting bounds the slow head (hyper's header timer, which starts
//! with the head's first byte) and the idle connection (`idle`: no byte
//! read and nothing in hand for that long).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::idle::{Activity, HeldBody, Watched};
use crate::slots::{Full, Slots};
use tracing::{debug, warn};

use crate::config::{ConfigError, Source, positive, positive_millis};

/// Limits on the connections of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to send a request head, and to start the next one on an idle
    /// kept-alive connection (and the TLS handshake).
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_per_source: usize,
    /// After shutdown begins, how long open connections (an outcome stream,
    /// a slow upload) may take to finish before they are closed.
    pub drain: Duration,
}

impl ConnectionLimits {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            header_timeout: positive_millis(source, "HTTP_HEADER_TIMEOUT_MS", 20_000)?,
            max_connections: positive(source, "HTTP_MAX_CONNECTIONS", 10_000)? as usize,
            max_per_source: positive(source, "HTTP_MAX_CONNECTIONS_PER_SOURCE", 1_000)? as usize,
            drain: positive_millis(source, "HTTP_DRAIN_MS", 20_000)?,
        })
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is set) until
/// `shutdown` resolves; then stops accepting, asks each open connection to
/// finish its request in hand, and closes what is left after
/// [`ConnectionLimits::drain`]. Handlers see the peer as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // HTTP/1 only (TLS offers only http/1.1 too): the protocol sniffing of
    // an auto builder reads the first bytes with no timer, so a connection
    // that sends nothing (or an HTTP/2 preface a byte at a time) would never
    // be timed out, and an HTTP/2 connection is never closed for idling.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    let admission = Slots::new(limits.max_connections, limits.max_per_source);
    let stopping = CancellationToken::new();
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    warn!(error = %e, listener = name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = match admission.take(&peer.ip()) {
            Ok(admitted) => admitted,
            Err(full) => {
                let reason = match full {
                    Full::Overall => "listener_full",
                    Full::Key => "source_full",
                };
                // Closed at once: a refused connection holds nothing.
                metrics::counter!("http_connections_refused_total",
                    "listener" => name, "reason" => reason)
                .increment(1);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let seen = Arc::clone(&activity);
        let router = router.clone();
        let service = tower::service_fn(move |mut request: axum::extract::Request<Incoming>| {
            let router = router.clone();
            let in_hand = seen.begin();
            request.extensions_mut().insert(ConnectInfo(peer));
            async move {
                let response = router.oneshot(request).await?;
                Ok::<_, Infallible>(response.map(|body| HeldBody::wrap(body, in_hand)))
            }
        });
        let builder = Arc::clone(&builder);
        let stopping = stopping.clone();
        let closing = closing.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _admitted = admitted;
            metrics::gauge!("http_connections_open", "listener" => name).increment(1.0);
            let stream = Watched::new(stream, Arc::clone(&activity));
            tokio::select! {
                () = connection(stream, tls, &builder, service, &activity, limits, &stopping) => {}
                () = closing.cancelled() => {}
            }
            metrics::gauge!("http_connections_open", "listener" => name).decrement(1.0);
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(limits.drain, connections.wait())
        .await
        .is_err()
    {
        warn!(
            listener = name,
            open = connections.len(),
            "connections still open after the drain time; closing them"
        );
        closing.cancel();
        connections.wait().await;
    }
}

async fn connection<S>(
    stream: Watched<TcpStream>,
    tls: Option<TlsAcceptor>,
    builder: &auto::Builder<TokioExecutor>,
    service: S,
    activity: &Activity,
    limits: ConnectionLimits,
    stopping: &CancellationToken,
) where
    S: tower::Service<
            axum::extract::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let service = TowerToHyperService::new(service);
    match tls {
        None => {
            let idle = activity.idle_for(limits.header_timeout);
            serve_io(TokioIo::new(stream), builder, service, idle, stopping).await;
        }
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let idle = activity.idle_for(limits.header_timeout);
                    serve_io(TokioIo::new(stream), builder, service, idle, stopping).await;
                }
                Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                Err(_) => debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn serve_io<I, S>(
    io: TokioIo<I>,
    builder: &auto::Builder<TokioExecutor>,
    service: TowerToHyperService<S>,
    idle: impl Future<Output = ()>,
    stopping: &CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::extract::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    // Closing an idle connection and stopping are both a graceful shutdown:
    // nothing is in hand when it is idle.
    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = stopping.cancelled() => None,
        () = idle => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}
