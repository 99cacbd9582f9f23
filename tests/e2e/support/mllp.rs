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

pub struct MllpClient {
    stream: TcpStream,
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
