//! A plain MLLP client for the tests (the framing written out here, not
//! borrowed from the service: a test that used the service's codec to read
//! the service's answers could not catch a framing mistake both share),
//! and HL7 messages to send.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const START: u8 = 0x0B;
const END: u8 = 0x1C;
const CR: u8 = 0x0D;

/// A connection's byte stream: plain TCP or TLS.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

pub struct MllpClient {
    stream: Box<dyn Stream>,
    buffer: Vec<u8>,
}

/// What came back for one read.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Frame(String),
    /// The listener closed the connection.
    Closed,
    /// Nothing within the wait.
    Silent,
}

impl MllpClient {
    pub async fn connect(address: std::net::SocketAddr) -> Self {
        let stream = TcpStream::connect(address)
            .await
            .expect("connect to the MLLP listener");
        stream.set_nodelay(true).unwrap();
        Self::over(Box::new(stream))
    }

    /// A client over an established stream (a TLS session, say).
    pub fn over(stream: Box<dyn Stream>) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    pub fn frame(payload: &[u8]) -> Vec<u8> {
        let mut framed = vec![START];
        framed.extend_from_slice(payload);
        framed.extend_from_slice(&[END, CR]);
        framed
    }

    /// Writes bytes as they are (frames, noise, halves of frames).
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to the listener");
    }

    /// Sends a message to a peer that may already have closed the connection.
    pub async fn try_send(&mut self, message: &str) -> std::io::Result<()> {
        self.stream
            .write_all(&Self::frame(message.as_bytes()))
            .await
    }

    pub async fn send(&mut self, message: &str) {
        self.send_bytes(message.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, payload: &[u8]) {
        self.write(&Self::frame(payload)).await;
    }

    /// The next answer, waiting up to `wait`.
    pub async fn reply_within(&mut self, wait: Duration) -> Reply {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(start) = self.buffer.iter().position(|&b| b == START) {
                if let Some(end) = self.buffer[start..].iter().position(|&b| b == END) {
                    let end = start + end;
                    assert_eq!(
                        self.buffer.get(end + 1),
                        Some(&CR),
                        "an end block is followed by CR"
                    );
                    let payload = self.buffer[start + 1..end].to_vec();
                    self.buffer.drain(..end + 2);
                    return Reply::Frame(String::from_utf8_lossy(&payload).into_owned());
                }
            }
            let mut chunk = [0u8; 65536];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Reply::Silent,
                Ok(Ok(0)) | Ok(Err(_)) => return Reply::Closed,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next answer; fails the test if none comes within 20 s.
    pub async fn reply(&mut self) -> String {
        match self.reply_within(Duration::from_secs(20)).await {
            Reply::Frame(text) => text,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    /// Sends a message and returns its answer.
    pub async fn exchange(&mut self, message: &str) -> String {
        self.send(message).await;
        self.reply().await
    }
}

/// A segment of an answer by name, split into fields (`fields[0]` is the name).
pub fn segment(answer: &str, name: &str) -> Option<Vec<String>> {
    answer
        .split('\r')
        .find(|s| s.starts_with(name))
        .map(|s| s.split('|').map(str::to_owned).collect())
}

/// Every MSA of an answer as (MSA-1, MSA-2), in order.
pub fn acks(answer: &str) -> Vec<(String, String)> {
    answer
        .split('\r')
        .filter(|s| s.starts_with("MSA|"))
        .map(|s| {
            let fields: Vec<&str> = s.split('|').collect();
            (
                fields.get(1).unwrap_or(&"").to_string(),
                fields.get(2).unwrap_or(&"").to_string(),
            )
        })
        .collect()
}

/// The one MSA of an answer.
pub fn ack(answer: &str) -> (String, String) {
    let all = acks(answer);
    assert_eq!(all.len(), 1, "one MSA in {answer:?}");
    all.into_iter().next().unwrap()
}

/// An ORU^R01 lab result for `patient` (an MR identifier), control id `id`.
pub fn oru(id: &str, patient: &str, value: &str) -> String {
    format!(
        "MSH|^~\\&|LabSys|NORTHLAB|EventSvc|EVSVC|20240411070545||ORU^R01|{id}|P|2.5.1\r\
         PID|1||{patient}^^^NORTHLAB^MR||MOUSE^MINA||19540101|F\r\
         OBR|1||12376|cbc^CBC|||20240410160227\r\
         OBX|1|NM|wbc^Wbc||{value}|/nl|3.8-11.0||||F\r"
    )
}

/// An ADT^A01 admission for `patient`, event time EVN-2.
pub fn adt(id: &str, patient: &str) -> String {
    format!(
        "MSH|^~\\&|AdmitApp|GENHOSP|EventSvc|EVSVC|20240110045504||ADT^A01^ADT_A01|{id}|P|2.3\r\
         EVN|A01|20240110045502\r\
         PID|1||{patient}^^^GENHOSP^MR~40007716^^^GENHOSP^VN||DRAKE^DONNA||19641010|F\r\
         PV1|1|I|PREOP^101^1\r"
    )
}

/// One message a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub control_id: String,
    /// PID-3.1.
    pub patient: String,
    /// MSH-5 and MSH-15 as received.
    pub receiving_application: String,
    pub accept_ack_type: String,
    /// The `ZFT` segment's first field (the fencing token), if any.
    pub fencing_token: Option<String>,
    pub started: std::time::Instant,
    pub ended: std::time::Instant,
    /// What it answered: `AA`, `AE`, or `AA` with another message's MSA-2 (`wrong`).
    pub answer: &'static str,
}

/// How a [`Receiver`] answers a given control id the next time it arrives.
#[derive(Debug, Clone, Copy)]
pub enum Misbehave {
    Nak,
    /// `AA` naming the message received before this one (a late ACK).
    WrongControlId,
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    script: std::collections::HashMap<String, Misbehave>,
}

/// An MLLP receiving system for delivery tests: holds each message `hold`,
/// records it, answers `AA` (or as scripted, once per control id).
pub struct Receiver {
    pub address: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start(hold: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state: std::sync::Arc<std::sync::Mutex<ReceiverState>> = Default::default();
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let mut connection = MllpClient::over(Box::new(stream));
                    while let Reply::Frame(message) =
                        connection.reply_within(Duration::from_secs(3600)).await
                    {
                        let started = std::time::Instant::now();
                        tokio::time::sleep(hold).await;
                        let msh = segment(&message, "MSH").unwrap_or_default();
                        let pid = segment(&message, "PID").unwrap_or_default();
                        let field = |fields: &Vec<String>, n: usize| {
                            fields.get(n).cloned().unwrap_or_default()
                        };
                        let control_id = field(&msh, 9);
                        let misbehave = state.lock().unwrap().script.remove(&control_id);
                        let (code, msa_2, answer) = match misbehave {
                            None => ("AA", control_id.clone(), "AA"),
                            Some(Misbehave::Nak) => ("AE", control_id.clone(), "AE"),
                            // A late ACK: the one of the message before.
                            Some(Misbehave::WrongControlId) => {
                                let earlier = state.lock().unwrap().received.last().map_or_else(
                                    || "NOTHING-BEFORE".to_owned(),
                                    |r| r.control_id.clone(),
                                );
                                ("AA", earlier, "wrong")
                            }
                        };
                        state.lock().unwrap().received.push(Received {
                            control_id: control_id.clone(),
                            patient: field(&pid, 3)
                                .split('^')
                                .next()
                                .unwrap_or_default()
                                .to_owned(),
                            receiving_application: field(&msh, 4),
                            accept_ack_type: field(&msh, 14),
                            fencing_token: segment(&message, "ZFT").map(|z| field(&z, 1)),
                            started,
                            ended: std::time::Instant::now(),
                            answer,
                        });
                        let ack = format!(
                            "MSH|^~\\&|EHR|HOSP|EventSvc|EVSVC|20240101000000||ACK^R01^ACK|R{control_id}|P|2.5.1\rMSA|{code}|{msa_2}\r"
                        );
                        if connection
                            .stream
                            .write_all(&MllpClient::frame(ack.as_bytes()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Self { address, state }
    }

    pub fn misbehave_once(&self, control_id: &str, how: Misbehave) {
        self.state
            .lock()
            .unwrap()
            .script
            .insert(control_id.to_owned(), how);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }
}
