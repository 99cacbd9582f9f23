//! Binding and accepting: each listener turns away addresses outside its
//! allowlist and connections beyond `MLLP_MAX_CONNECTIONS`, sets TCP
//! keepalive (senders keep one connection open for hours, and a peer that
//! vanished must not hold a slot forever), completes TLS when configured,
//! and runs each connection as its own task. At shutdown it stops
//! accepting; idle connections close and a message being stored is
//! finished and answered first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::answer::Answerer;
use super::labels::Labels;
use super::session;
use super::settings::{ListenerSettings, MllpSettings};
use crate::ingest::notify::ProcessorNotifier;
use crate::intake::Intake;
use crate::server::StartupError;
use crate::tls::TlsFiles;

const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound listeners, not yet accepting.
pub struct MllpListeners {
    bound: Vec<Bound>,
    settings: MllpSettings,
}

struct Bound {
    settings: Arc<ListenerSettings>,
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl MllpListeners {
    /// Binds every configured listener (start-up fails on any that cannot).
    pub async fn bind(settings: &MllpSettings) -> Result<Self, StartupError> {
        let mut bound = Vec::with_capacity(settings.listeners.len());
        for listener in &settings.listeners {
            let tcp = TcpListener::bind(listener.address)
                .await
                .map_err(|source| StartupError::Bind {
                    port: listener.address.port(),
                    source,
                })?;
            let tls = listener
                .tls
                .as_ref()
                .map(|tls| {
                    crate::tls::stream_acceptor(
                        &TlsFiles {
                            cert: tls.cert.clone(),
                            key: tls.key.clone(),
                        },
                        tls.client_ca.as_deref(),
                    )
                })
                .transpose()?;
            bound.push(Bound {
                settings: Arc::new(listener.clone()),
                tcp,
                tls,
            });
        }
        Ok(Self {
            bound,
            settings: settings.clone(),
        })
    }

    /// Each listener's name and the address it is bound to (port 0 in the
    /// settings: the port it got).
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.bound
            .iter()
            .filter_map(|b| Some((b.settings.name.clone(), b.tcp.local_addr().ok()?)))
            .collect()
    }

    /// Accepts on every listener until `shutdown`; the tracker holds every
    /// connection's task, to be waited for.
    pub fn spawn(
        self,
        intake: Arc<Intake>,
        notifier: ProcessorNotifier,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        for bound in self.bound {
            let address = bound.tcp.local_addr().ok();
            info!(listener = %bound.settings.name, ?address, tls = bound.tls.is_some(), "MLLP listening");
            let port = address.map(|a| a.port()).unwrap_or_default();
            let answerer = Arc::new(Answerer {
                intake: Arc::clone(&intake),
                notifier: notifier.clone(),
                labels: Labels::new(&bound.settings.client, port),
                settings: Arc::clone(&bound.settings),
                max_message_bytes: self.settings.max_message_bytes,
            });
            let limits = Limits {
                frame_timeout: self.settings.frame_timeout,
                connections: Arc::new(Semaphore::new(self.settings.max_connections)),
            };
            tracker.spawn(accept(
                bound,
                answerer,
                limits,
                shutdown.clone(),
                tracker.clone(),
            ));
        }
    }
}

struct Limits {
    frame_timeout: Duration,
    connections: Arc<Semaphore>,
}

async fn accept(
    bound: Bound,
    answerer: Arc<Answerer>,
    limits: Limits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let settings = &bound.settings;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = bound.tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: pause rather than spin.
                warn!(listener = %settings.name, %error, "MLLP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !settings.allows(peer.ip()) {
            warn!(listener = %settings.name, %peer, "MLLP connection from an address outside the listener's allowlist closed");
            answerer.labels.connection_refused("allowlist");
            continue;
        }
        let Ok(permit) = Arc::clone(&limits.connections).try_acquire_owned() else {
            warn!(listener = %settings.name, %peer, "MLLP connection refused: the listener has MLLP_MAX_CONNECTIONS open");
            answerer.labels.connection_refused("limit");
            continue;
        };
        keepalive(&stream);
        let _ = stream.set_nodelay(true);
        let answerer = Arc::clone(&answerer);
        let tls = bound.tls.clone();
        let shutdown = shutdown.clone();
        let frame_timeout = limits.frame_timeout;
        tracker.spawn(async move {
            let _permit = permit;
            answerer.labels.connection_opened();
            match tls {
                None => session::run(stream, peer, &answerer, frame_timeout, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            session::run(stream, peer, &answerer, frame_timeout, shutdown).await;
                        }
                        Ok(Err(error)) => {
                            warn!(listener = %answerer.settings.name, %peer, %error, "MLLP TLS handshake failed");
                            answerer.labels.connection_refused("tls");
                        }
                        Err(_) => {
                            warn!(listener = %answerer.settings.name, %peer, "MLLP TLS handshake timed out");
                            answerer.labels.connection_refused("tls");
                        }
                    }
                }
            }
            answerer.labels.connection_closed();
        });
    }
}

fn keepalive(stream: &TcpStream) {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(error) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        warn!(%error, "cannot set TCP keepalive on an MLLP connection");
    }
}
