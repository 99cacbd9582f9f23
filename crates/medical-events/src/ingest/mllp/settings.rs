//! The MLLP listeners' settings: `MLLP_LISTENERS` names each listener and
//! its options; three limits apply to all.
//!
//! `MLLP_LISTENERS=CLIENT@HOST:PORT[;OPTION=VALUE...][,...]`, e.g.
//! `lab-a@0.0.0.0:2575;charset=8859/1;allow=10.1.0.0/16,adt-b@[::]:2576`.
//! Options (each may be left out; `allow` and `processing` may repeat):
//! `charset` (MSH-18 default: `ASCII`, `8859/1`, `UNICODE UTF-8`),
//! `authority` (the CX.4.1 a patient's MR identifier must carry),
//! `tz` (IANA zone of times sent without an offset), `processing` (an
//! MSH-11 value accepted besides `P`), `allow` (a CIDR that may connect;
//! without one, any address), `tls_cert` + `tls_key` (PEM: the listener
//! speaks TLS), `tls_client_ca` (PEM: clients must present a certificate
//! it signed).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;
use ipnet::IpNet;

use crate::auth::Access;
use crate::config::{
    ConfigError, Source, invalid, number, optional, positive, positive_millis, readable_path,
};
use crate::hl7::{Charset, MappingConfig, ReadOptions};

const LISTENERS: &str = "MLLP_LISTENERS";

/// Every MLLP listener of ingest, and the limits they share.
#[derive(Debug, Clone)]
pub struct MllpSettings {
    pub listeners: Vec<ListenerSettings>,
    /// A frame's payload above this is refused (`MLLP_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// A frame still incomplete this long after its first byte is dropped
    /// and the connection closed (`MLLP_FRAME_TIMEOUT_MS`).
    pub frame_timeout: Duration,
    /// Open connections per listener (`MLLP_MAX_CONNECTIONS`).
    pub max_connections: usize,
}

/// One listener: the client its messages belong to, where it listens, and
/// how it reads what arrives.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// `client@host:port` as configured: the listener's name in metrics,
    /// logs and the events' source.
    pub name: String,
    pub client: String,
    pub address: SocketAddr,
    pub read: ReadOptions,
    pub mapping: MappingConfig,
    /// Addresses that may connect; empty: any.
    pub allow: Vec<IpNet>,
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate this CA signed (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl ListenerSettings {
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&peer))
    }
}

impl Default for MllpSettings {
    /// No listeners; the documented limits.
    fn default() -> Self {
        Self {
            listeners: Vec::new(),
            max_message_bytes: crate::hl7::DEFAULT_MAX_MESSAGE_BYTES,
            frame_timeout: Duration::from_millis(30_000),
            max_connections: 64,
        }
    }
}

impl MllpSettings {
    /// Reads the settings; every listener's client must be one of
    /// `access`'s (unless authentication is disabled).
    pub fn from_source(source: &impl Source, access: &Access) -> Result<Self, ConfigError> {
        let listeners = match optional(source, LISTENERS) {
            Some(raw) => parse_listeners(&raw)?,
            None => Vec::new(),
        };
        if let Access::Required(credentials) = access {
            for listener in &listeners {
                if !credentials.iter().any(|c| *c.client == *listener.client) {
                    return Err(invalid(
                        LISTENERS,
                        &listener.name,
                        &format!(
                            "client {:?} has no API key in INGEST_API_KEYS (its events are read with that client's key)",
                            listener.client
                        ),
                    ));
                }
            }
        }
        let max_message_bytes: usize = number(
            source,
            "MLLP_MAX_MESSAGE_BYTES",
            crate::hl7::DEFAULT_MAX_MESSAGE_BYTES,
        )?;
        // The stored copy (the text decoded to UTF-8, which the listener
        // also holds to this limit, beside the rest of the event) must stay
        // below MongoDB's 16 MiB document limit.
        if !(1024..=MAX_STORABLE_MESSAGE).contains(&max_message_bytes) {
            return Err(invalid(
                "MLLP_MAX_MESSAGE_BYTES",
                &max_message_bytes.to_string(),
                &format!(
                    "must be 1024-{MAX_STORABLE_MESSAGE} (a stored message stays below MongoDB's 16 MiB document limit)"
                ),
            ));
        }
        Ok(Self {
            listeners,
            max_message_bytes,
            frame_timeout: positive_millis(source, "MLLP_FRAME_TIMEOUT_MS", 30_000)?,
            max_connections: positive(source, "MLLP_MAX_CONNECTIONS", 64)? as usize,
        })
    }
}

/// The largest message accepted whatever the setting: the event document
/// holds its text once, with room to spare below 16 MiB for the rest.
const MAX_STORABLE_MESSAGE: usize = 12 * 1024 * 1024;

fn parse_listeners(raw: &str) -> Result<Vec<ListenerSettings>, ConfigError> {
    let mut listeners: Vec<ListenerSettings> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let listener =
            parse_listener(entry).map_err(|reason| invalid(LISTENERS, entry, &reason))?;
        if listeners.iter().any(|l| l.address == listener.address) {
            return Err(invalid(LISTENERS, entry, "two listeners on one address"));
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

fn parse_listener(entry: &str) -> Result<ListenerSettings, String> {
    let mut parts = entry.split(';').map(str::trim);
    let head = parts.next().unwrap_or_default();
    let (client, address) = head
        .split_once('@')
        .ok_or("must be CLIENT@HOST:PORT (e.g. lab-a@0.0.0.0:2575)")?;
    if client.is_empty()
        || !client
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err("the client name must be letters, digits, '-', '_' or '.'".to_owned());
    }
    let address: SocketAddr = address.parse().map_err(|_| {
        format!("{address:?} is not HOST:PORT with an IP address (e.g. 0.0.0.0:2575 or [::]:2575)")
    })?;
    let mut listener = ListenerSettings {
        name: head.to_owned(),
        client: client.to_owned(),
        address,
        read: ReadOptions::default(),
        mapping: MappingConfig::default(),
        allow: Vec::new(),
        tls: None,
    };
    let (mut cert, mut key, mut client_ca) = (None, None, None);
    for option in parts.filter(|p| !p.is_empty()) {
        let (name, value) = option
            .split_once('=')
            .map(|(n, v)| (n.trim(), v.trim()))
            .ok_or_else(|| format!("option {option:?} must be NAME=VALUE"))?;
        match name {
            "charset" => {
                listener.read.default_charset = Charset::from_hl7_name(value)?
                    .ok_or("charset must be ASCII, 8859/1 or UNICODE UTF-8")?;
            }
            "authority" => listener.mapping.assigning_authority = Some(value.to_owned()),
            "tz" => {
                listener.mapping.time_zone = value
                    .parse::<Tz>()
                    .map_err(|_| format!("tz {value:?} is not an IANA time zone"))?;
            }
            "processing" => {
                if value.is_empty() {
                    return Err("processing must name an MSH-11 value (P, T, D)".to_owned());
                }
                listener.mapping.processing_ids.push(value.to_owned());
            }
            "allow" => listener.allow.push(
                value
                    .parse::<IpNet>()
                    .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("allow {value:?} is not a CIDR (e.g. 10.1.0.0/16)"))?,
            ),
            "tls_cert" => cert = Some(path(name, value)?),
            "tls_key" => key = Some(path(name, value)?),
            "tls_client_ca" => client_ca = Some(path(name, value)?),
            _ => {
                return Err(format!(
                    "unknown option {name:?} (charset, authority, tz, processing, allow, tls_cert, tls_key, tls_client_ca)"
                ));
            }
        }
    }
    listener.tls = match (cert, key, client_ca) {
        (None, None, None) => None,
        (Some(cert), Some(key), client_ca) => Some(ListenerTls {
            cert,
            key,
            client_ca,
        }),
        _ => return Err("tls_cert and tls_key go together (tls_client_ca needs both)".to_owned()),
    };
    Ok(listener)
}

fn path(name: &str, value: &str) -> Result<PathBuf, String> {
    readable_path("MLLP_LISTENERS", value).map_err(|error| format!("{name}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_with_options() {
        let listeners = parse_listeners(
            "lab-a@0.0.0.0:2575;charset=8859/1;tz=Europe/Berlin;allow=10.1.0.0/16;allow=192.168.1.7;processing=T, adt-b@[::1]:2576",
        )
        .unwrap();
        assert_eq!(listeners.len(), 2);
        let lab = &listeners[0];
        assert_eq!(lab.name, "lab-a@0.0.0.0:2575");
        assert_eq!(lab.client, "lab-a");
        assert_eq!(lab.read.default_charset, Charset::Latin1);
        assert_eq!(lab.mapping.time_zone, chrono_tz::Europe::Berlin);
        assert_eq!(lab.mapping.processing_ids, ["P", "T"]);
        assert!(lab.allows("10.1.200.3".parse().unwrap()));
        assert!(lab.allows("::ffff:192.168.1.7".parse().unwrap()));
        assert!(!lab.allows("10.2.0.1".parse().unwrap()));
        assert!(listeners[1].allows("::1".parse().unwrap()));
        assert_eq!(listeners[1].address.port(), 2576);
    }

    #[test]
    fn mistakes_are_named() {
        for (entry, says) in [
            ("lab-a:2575", "CLIENT@HOST:PORT"),
            ("lab-a@localhost:2575", "IP address"),
            ("lab-a@0.0.0.0:2575;charset=EBCDIC", "charset"),
            ("lab-a@0.0.0.0:2575;tz=Mars/Olympus", "IANA"),
            ("lab-a@0.0.0.0:2575;allow=10.0.0.0/33", "CIDR"),
            ("lab-a@0.0.0.0:2575;color=red", "unknown option"),
            ("lab-a@0.0.0.0:2575;tls_cert=/etc/hostname", "go together"),
            ("a@0.0.0.0:1,b@0.0.0.0:1", "two listeners"),
        ] {
            let error = parse_listeners(entry).unwrap_err().to_string();
            assert!(error.contains(says), "{entry}: {error}");
        }
    }
}
