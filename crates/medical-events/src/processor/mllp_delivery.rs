//! Delivery out over MLLP (`DELIVERY_MLLP`): an event that arrived as an
//! HL7 v2 message is sent as stored, MSH-10 kept (the receiver can
//! deduplicate a redelivery by it), MSH-5/6 set to the configured receiver,
//! MSH-15/16 cleared (original mode: an ACK always comes back), and the
//! fencing token appended as `ZFT|<epoch>` unless turned off.
//!
//! Success is `AA` or `CA` whose MSA-2 is the MSH-10 sent. Anything else
//! (an error or reject code, another message's MSA-2, a garbled answer, a
//! closed connection, `DELIVERY_MLLP_TIMEOUT_MS`) is a failed attempt
//! under the usual retry, park and fencing rules, and the connection is
//! dropped: a late ACK on it can never be taken for the next message's.
//! Connections are pooled (one exchange at a time on each); a pooled one
//! the receiver closed while idle is replaced once, at once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Decoder;

use super::processing::HandlerError;
use crate::config::{ConfigError, Source, invalid, optional, positive_millis, readable_path};
use crate::hl7::mllp::{CARRIAGE_RETURN, END_BLOCK, START_BLOCK};
use crate::hl7::{Charset, Frame, Header, MllpCodec, ReadOptions, parse_ack};
use crate::store::QueuedEvent;

/// Idle connections kept for reuse.
const POOL_SIZE: usize = 32;

/// `DELIVERY_MLLP` and its options.
#[derive(Debug, Clone)]
pub struct MllpDeliverySettings {
    /// `HOST:PORT`.
    pub address: String,
    pub timeout: Duration,
    /// MSH-5 of what is sent; unset: as received.
    pub receiving_application: Option<String>,
    /// MSH-6 of what is sent; unset: as received.
    pub receiving_facility: Option<String>,
    /// Append `ZFT|<fencing token>` (some receivers refuse Z segments).
    pub fencing_segment: bool,
    /// Speak TLS, trusting this CA (PEM) for the receiver's certificate.
    pub ca: Option<PathBuf>,
}

impl MllpDeliverySettings {
    pub fn from_source(source: &impl Source) -> Result<Option<Self>, ConfigError> {
        let address = optional(source, "DELIVERY_MLLP");
        let timeout = positive_millis(source, "DELIVERY_MLLP_TIMEOUT_MS", 30_000)?;
        let hd = |name: &'static str| -> Result<Option<String>, ConfigError> {
            match optional(source, name) {
                Some(value) if value.contains(['|', '^', '~', '\\', '&', '\r', '\n']) => Err(
                    invalid(name, &value, "must not contain HL7 delimiters (| ^ ~ \\ &)"),
                ),
                other => Ok(other.map(|v| v.trim().to_owned())),
            }
        };
        let receiving_application = hd("DELIVERY_MLLP_RECEIVING_APPLICATION")?;
        let receiving_facility = hd("DELIVERY_MLLP_RECEIVING_FACILITY")?;
        let fencing_segment =
            crate::config::choice(source, "DELIVERY_MLLP_FENCING_SEGMENT", &["true", "false"])?
                == "true";
        let ca = optional(source, "DELIVERY_MLLP_CA_PATH")
            .map(|path| readable_path("DELIVERY_MLLP_CA_PATH", &path))
            .transpose()?;
        let Some(address) = address.map(|a| a.trim().to_owned()) else {
            return Ok(None);
        };
        let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(invalid("DELIVERY_MLLP", &address, "must be HOST:PORT"));
        }
        Ok(Some(Self {
            address,
            timeout,
            receiving_application,
            receiving_facility,
            fencing_segment,
            ca,
        }))
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

struct Connection {
    io: Box<dyn Io>,
    buffer: BytesMut,
    codec: MllpCodec,
}

#[derive(Clone)]
pub struct MllpDelivery {
    settings: Arc<MllpDeliverySettings>,
    tls: Option<TlsConnector>,
    pool: Arc<Mutex<Vec<Connection>>>,
}

/// How an exchange went wrong.
enum Exchange {
    /// A pooled connection the receiver had closed: nothing was answered.
    Stale(String),
    Failed(String),
}

impl MllpDelivery {
    pub fn new(settings: MllpDeliverySettings) -> Result<Self, String> {
        let tls = settings
            .ca
            .as_deref()
            .map(crate::tls::connector_trusting)
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            settings: Arc::new(settings),
            tls,
            pool: Arc::default(),
        })
    }

    pub fn address(&self) -> &str {
        &self.settings.address
    }

    /// Delivers one event that arrived as HL7.
    pub async fn handle(&self, event: &QueuedEvent) -> Result<(), HandlerError> {
        let sent = outbound(event, &self.settings).map_err(HandlerError::Failed)?;
        let deliver = async {
            let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            if let Some(connection) = pooled {
                match exchange(connection, &sent).await {
                    Ok(connection) => return Ok(connection),
                    Err(Exchange::Failed(reason)) => return Err(reason),
                    Err(Exchange::Stale(reason)) => {
                        tracing::debug!(%reason, "pooled MLLP connection was closed; reconnecting");
                    }
                }
            }
            let connection = self.connect().await?;
            exchange(connection, &sent)
                .await
                .map_err(|(Exchange::Stale(reason) | Exchange::Failed(reason))| reason)
        };
        let connection = tokio::time::timeout(self.settings.timeout, deliver)
            .await
            .map_err(|_| {
                HandlerError::Failed(format!(
                    "MLLP delivery: no ACK within {} ms",
                    self.settings.timeout.as_millis()
                ))
            })?
            .map_err(|reason| HandlerError::Failed(format!("MLLP delivery: {reason}")))?;
        // Bytes after the ACK (a receiver answering twice) would be read as
        // the next message's answer: such a connection is not kept.
        if !connection.buffer.is_empty() || connection.codec.in_frame() {
            return Ok(());
        }
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_SIZE {
            pool.push(connection);
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Connection, String> {
        let address = &self.settings.address;
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
                let host = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let name = rustls_pki_types::ServerName::try_from(host)
                    .map_err(|e| format!("{address}: {e}"))?;
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS with {address}: {e}"))?,
                )
            }
        };
        Ok(Connection {
            io,
            buffer: BytesMut::with_capacity(4096),
            codec: MllpCodec::default(),
        })
    }
}

/// Sends one framed message and reads its ACK. Any failure drops the
/// connection (it is not returned).
async fn exchange(mut connection: Connection, sent: &Outbound) -> Result<Connection, Exchange> {
    let Outbound {
        payload,
        control_id,
        charset,
    } = sent;
    let charset = *charset;
    let mut framed = Vec::with_capacity(payload.len() + 3);
    framed.push(START_BLOCK);
    framed.extend_from_slice(payload);
    framed.extend_from_slice(&[END_BLOCK, CARRIAGE_RETURN]);
    if let Err(error) = connection.io.write_all(&framed).await {
        return Err(Exchange::Stale(format!("cannot send: {error}")));
    }
    if let Err(error) = connection.io.flush().await {
        return Err(Exchange::Stale(format!("cannot send: {error}")));
    }
    let mut answered = false;
    let frame = loop {
        match connection.codec.decode(&mut connection.buffer) {
            Ok(Some(Frame::Message(payload))) => break payload,
            Ok(Some(_)) => return Err(Exchange::Failed("a garbled answer".to_owned())),
            Ok(None) => {}
            Err(error) => return Err(Exchange::Failed(error.to_string())),
        }
        connection.buffer.reserve(4096);
        match connection.io.read_buf(&mut connection.buffer).await {
            Ok(0) if !answered => {
                return Err(Exchange::Stale(
                    "the receiver closed the connection".to_owned(),
                ));
            }
            Ok(0) => {
                return Err(Exchange::Failed(
                    "the receiver closed the connection mid-answer".to_owned(),
                ));
            }
            Ok(_) => answered = true,
            Err(error) => return Err(Exchange::Failed(format!("reading the ACK: {error}"))),
        }
    };
    // Read in the message's character set, else as Latin-1 (which decodes
    // any bytes): MSA-1 and MSA-2 are what matter, and they are ASCII.
    let ack = parse_ack(
        &frame,
        &ReadOptions {
            default_charset: charset,
        },
    )
    .or_else(|_| {
        parse_ack(
            &frame,
            &ReadOptions {
                default_charset: Charset::Latin1,
            },
        )
    })
    .map_err(|e| Exchange::Failed(format!("an answer that is not an ACK: {e}")))?;
    if ack.control_id != *control_id {
        // Never taken for this message: a late ACK of another one, or a
        // confused receiver. The connection goes with it.
        return Err(Exchange::Failed(format!(
            "an ACK for another message (MSA-2 {:?}, sent {control_id:?})",
            truncated(&ack.control_id)
        )));
    }
    if !ack.code.is_accept() {
        return Err(Exchange::Failed(format!(
            "the receiver answered {}: {}",
            ack.code.as_str(),
            truncated(&ack.text)
        )));
    }
    Ok(connection)
}

fn truncated(text: &str) -> String {
    text.chars().take(120).collect()
}

/// A stored HL7 event made ready to send: its bytes, the MSH-10 its ACK
/// must name, and the character set that ACK is read in when its MSH-18 is
/// empty.
struct Outbound {
    payload: Vec<u8>,
    control_id: String,
    charset: Charset,
}

/// The bytes to send for a stored HL7 event, in the character set it came
/// in, which MSH-18 names when the sender left it to the listener's default.
fn outbound(event: &QueuedEvent, settings: &MllpDeliverySettings) -> Result<Outbound, String> {
    let hl7 = event
        .data
        .get_document("hl7")
        .map_err(|_| "the event holds no HL7 message (its payload was pruned?)".to_owned())?;
    let text = hl7
        .get_str("message")
        .map_err(|_| "the event holds no HL7 message text".to_owned())?;
    let charset = hl7
        .get_str("charset")
        .ok()
        .and_then(|name| Charset::from_hl7_name(name).ok().flatten())
        .unwrap_or(Charset::Utf8);
    let (msh, rest) = text.split_once('\r').unwrap_or((text, ""));
    let header = Header::read(msh.as_bytes(), &ReadOptions::default())
        .map_err(|e| format!("the stored message's MSH cannot be read: {e}"))?;
    let separator = header.separators().field;
    let mut fields: Vec<String> = msh.split(separator).map(str::to_owned).collect();
    // fields[n - 1] is MSH-n (MSH-1 is the separator itself). ASCII and
    // UTF-8 (a superset) need no MSH-18; Latin-1 left to the listener's
    // default would otherwise reach the receiver unnamed.
    let undeclared_latin1 =
        charset == Charset::Latin1 && fields.get(17).is_none_or(|f| f.trim().is_empty());
    let mut set = |n: usize, value: &str| {
        if fields.len() < n {
            fields.resize(n, String::new());
        }
        fields[n - 1] = value.to_owned();
    };
    if let Some(application) = &settings.receiving_application {
        set(5, application);
    }
    if let Some(facility) = &settings.receiving_facility {
        set(6, facility);
    }
    set(15, "");
    set(16, "");
    if undeclared_latin1 {
        set(18, charset.hl7_name());
    }
    while fields.len() > 12 && fields.last().is_some_and(String::is_empty) {
        fields.pop();
    }
    let mut out = fields.join(&separator.to_string());
    out.push('\r');
    out.push_str(rest);
    if !out.ends_with('\r') {
        out.push('\r');
    }
    if settings.fencing_segment {
        out.push_str(&format!("ZFT{separator}{}\r", event.epoch));
    }
    Ok(Outbound {
        payload: charset.encode(&out),
        control_id: header.control_id(),
        charset,
    })
}
