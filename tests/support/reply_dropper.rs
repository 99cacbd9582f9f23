//! A TCP proxy in front of the database that, when armed, lets one command
//! through to the server and then drops the server's reply and the
//! connection: the write happened, the client never hears of it. This is the
//! "lost reply" of a committed write (a network cut, a failover).
//!
//! It reads the MongoDB wire protocol just enough to find message
//! boundaries and the command name of an `OP_MSG`.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const OP_MSG: i32 = 2013;

pub struct ReplyDropper {
    pub port: u16,
    armed: Arc<Mutex<Option<String>>>,
    dropped: watch::Receiver<usize>,
}

impl ReplyDropper {
    /// Forwards `127.0.0.1:<port>` to `upstream` (host:port).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let armed: Arc<Mutex<Option<String>>> = Arc::default();
        let (dropped_tx, dropped) = watch::channel(0usize);
        let dropped_tx = Arc::new(dropped_tx);
        let shared = Arc::clone(&armed);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let (drop_tx, drop_rx) = watch::channel(false);
                tokio::spawn(requests(
                    client_read,
                    server_write,
                    Arc::clone(&shared),
                    drop_tx,
                ));
                tokio::spawn(replies(
                    server_read,
                    client_write,
                    drop_rx,
                    Arc::clone(&dropped_tx),
                ));
            }
        });
        Self {
            port,
            armed,
            dropped,
        }
    }

    /// The next `command` (e.g. "update") reaches the server; its reply does not.
    pub fn drop_reply_to(&self, command: &str) {
        *self.armed.lock().unwrap() = Some(command.to_owned());
    }

    /// How many replies were dropped so far.
    pub fn dropped(&self) -> usize {
        *self.dropped.borrow()
    }
}

/// Reads one whole wire-protocol message.
async fn message(from: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    from.read_exact(&mut length).await.ok()?;
    let total = i32::from_le_bytes(length) as usize;
    let mut message = length.to_vec();
    message.resize(total.max(4), 0);
    from.read_exact(&mut message[4..]).await.ok()?;
    Some(message)
}

/// The command name of an `OP_MSG` (the first key of its body document).
fn command_name(message: &[u8]) -> Option<String> {
    let op_code = i32::from_le_bytes(message.get(12..16)?.try_into().ok()?);
    if op_code != OP_MSG || *message.get(20)? != 0 {
        return None;
    }
    // header 16, flags 4, section kind 1, document length 4, element type 1
    let key = message.get(26..)?;
    let end = key.iter().position(|b| *b == 0)?;
    Some(String::from_utf8_lossy(&key[..end]).into_owned())
}

async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    armed: Arc<Mutex<Option<String>>>,
    drop_reply: watch::Sender<bool>,
) {
    while let Some(message) = message(&mut from).await {
        let name = command_name(&message);
        let hit = {
            let mut armed = armed.lock().unwrap();
            if armed.is_some() && armed.as_deref() == name.as_deref() {
                *armed = None;
                true
            } else {
                false
            }
        };
        if hit {
            let _ = drop_reply.send(true);
        }
        if to.write_all(&message).await.is_err() {
            return;
        }
    }
}

async fn replies(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    drop_reply: watch::Receiver<bool>,
    dropped: Arc<watch::Sender<usize>>,
) {
    while let Some(message) = message(&mut from).await {
        if *drop_reply.borrow() {
            // The server answered; the client will never know: cut it off.
            dropped.send_modify(|n| *n += 1);
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&message).await.is_err() {
            return;
        }
    }
}
