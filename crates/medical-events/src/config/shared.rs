//! What both services read: the database, authentication on or off and the
//! credentials, logging, the idempotency window, and the rule tying the
//! request time limit to the store's bounds.

use std::net::IpAddr;
use std::time::Duration;

use super::{
    ConfigError, Default, Source, choice, invalid, invalid_mongo_uri, mask_uri_password, number,
    optional, optional_shown, positive_millis, required,
};
use crate::auth::{Credential, MIN_SECRET_CHARS, Secret};
use crate::http::limits::HttpLimits;
use crate::privacy::PatientLogging;
use crate::telemetry::LogFormat;

#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub uri: String,
    /// Server selection and connect timeout (`MONGO_TIMEOUT_MS`).
    pub timeout: Duration,
}

impl MongoSettings {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let uri = required(
            source,
            "MONGO_URI",
            "mongodb://localhost:27017/medical_events",
        )?;
        if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
            return Err(invalid(
                "MONGO_URI",
                &mask_uri_password(&uri),
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        // The driver's own parser (no I/O: a mongodb+srv name is resolved at
        // start-up), so that a malformed URI is a configuration error here.
        if let Err(error) = mongodb::options::ConnectionString::parse(&uri) {
            return Err(invalid_mongo_uri(&uri, &error));
        }
        Ok(Self {
            uri,
            timeout: positive_millis(source, "MONGO_TIMEOUT_MS", 5_000)?,
        })
    }
}

/// `LOG_PATIENT_ID` and `LOG_PSEUDONYM_KEY`: the key may also come from the
/// database (shared by all instances), so it is resolved at start-up.
#[derive(Debug, Clone)]
pub enum PatientLoggingSetting {
    /// Pseudonyms with the configured key, or the deployment's if `None`.
    Pseudonym(Option<Secret>),
    Plain,
}

impl PatientLoggingSetting {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        match choice(source, "LOG_PATIENT_ID", &["pseudonym", "plain"])? {
            "plain" => {
                optional_shown(source, "LOG_PSEUDONYM_KEY", "the deployment's");
                Ok(Self::Plain)
            }
            _ => {
                let key = optional_shown(source, "LOG_PSEUDONYM_KEY", "the deployment's");
                if key
                    .as_ref()
                    .is_some_and(|k| k.chars().count() < MIN_PSEUDONYM_KEY_CHARS)
                {
                    // A short key lets anyone who sees the logs try every MRN.
                    return Err(ConfigError::Invalid {
                        name: "LOG_PSEUDONYM_KEY",
                        value: "***".to_owned(),
                        reason: format!("must be at least {MIN_PSEUDONYM_KEY_CHARS} characters"),
                    });
                }
                Ok(Self::Pseudonym(key.map(Secret::new)))
            }
        }
    }

    pub fn resolve(&self, deployment_key: impl FnOnce() -> Vec<u8>) -> PatientLogging {
        match self {
            Self::Plain => PatientLogging::Plain,
            Self::Pseudonym(Some(key)) => PatientLogging::Pseudonym {
                key: key.expose().as_bytes().to_vec(),
            },
            Self::Pseudonym(None) => PatientLogging::Pseudonym {
                key: deployment_key(),
            },
        }
    }
}

const MIN_PSEUDONYM_KEY_CHARS: usize = 32;

pub(super) fn log_format(source: &impl Source) -> Result<LogFormat, ConfigError> {
    Ok(match choice(source, "LOG_FORMAT", &["json", "pretty"])? {
        "pretty" => LogFormat::Pretty,
        _ => LogFormat::Json,
    })
}

pub(super) fn auth_disabled(source: &impl Source) -> Result<bool, ConfigError> {
    Ok(choice(source, "AUTH_DISABLED", &["false", "true"])? == "true")
}

pub(super) fn idempotency_ttl(source: &impl Source) -> Result<Duration, ConfigError> {
    let hours: u64 = number(source, "IDEMPOTENCY_TTL_HOURS", 168)?;
    if hours == 0 {
        return Err(invalid("IDEMPOTENCY_TTL_HOURS", "0", "must be at least 1"));
    }
    Ok(Duration::from_secs(hours * 3600))
}

/// How every published development credential ends (`dev-ingest-key-change-me`...).
const DEV_SUFFIX: &str = "-change-me";

/// `DEV_MODE=true`: the published development credentials are accepted
/// (`make run`, the k6 smoke, the bench); each service warns at start.
pub(super) fn dev_mode(source: &impl Source) -> Result<bool, ConfigError> {
    Ok(choice(source, "DEV_MODE", &["false", "true"])? == "true")
}

/// Entries of `name` (comma-separated) or of the file named by `file_name`
/// (comma- or newline-separated; for secrets mounted by an orchestrator).
/// `default`: how the README shows them (required, or none).
fn entries(
    source: &impl Source,
    (name, file_name): (&'static str, &'static str),
    default: Default,
) -> Result<Option<(Vec<String>, &'static str)>, ConfigError> {
    source.declare(name, default.clone());
    source.declare(file_name, default);
    let (raw, origin) = match (source.get(name), source.get(file_name)) {
        (Some(value), _) => (value, name),
        (None, Some(path)) => {
            let content =
                std::fs::read_to_string(path.trim()).map_err(|e| ConfigError::Unreadable {
                    name: file_name,
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            (content, file_name)
        }
        (None, None) => return Ok(None),
    };
    let values: Vec<String> = raw
        .split([',', '\n'])
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    if values.is_empty() {
        return Err(invalid(origin, "", "lists no credential"));
    }
    if values.iter().any(|v| v.ends_with(DEV_SUFFIX)) && !dev_mode(source)? {
        return Err(ConfigError::Insecure {
            name: origin,
            hint: "it holds a published development credential (ending in -change-me); set your \
                   own (openssl rand -hex 24), or DEV_MODE=true on a development machine",
        });
    }
    Ok(Some((values, origin)))
}

/// Tokens (no client names), e.g. `PROCESSOR_TOKEN`.
pub(super) fn secrets(
    source: &impl Source,
    names: (&'static str, &'static str),
    default: Default,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some((values, origin)) = entries(source, names, default)? else {
        return Ok(None);
    };
    for value in &values {
        if value.chars().count() < MIN_SECRET_CHARS || !value.chars().all(|c| c.is_ascii_graphic())
        {
            // Never echo the secret itself.
            return Err(ConfigError::Invalid {
                name: origin,
                value: "***".to_owned(),
                reason: format!(
                    "each entry must be at least {MIN_SECRET_CHARS} visible ASCII characters"
                ),
            });
        }
    }
    Ok(Some(values))
}

/// One key, one caller: with a key listed twice (for two clients, or a
/// client and an operator) which one it names would be an accident of order.
pub(super) fn distinct_keys<'a>(
    name: &'static str,
    credentials: impl IntoIterator<Item = &'a Credential>,
) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for credential in credentials {
        if !seen.insert(credential.secret.expose()) {
            return Err(ConfigError::Invalid {
                name,
                value: "***".to_owned(),
                reason: format!(
                    "one key is listed twice (for client {:?} and another); each key must name \
                     one client or operator",
                    &*credential.client
                ),
            });
        }
    }
    Ok(())
}

/// Names the services give callers themselves: a configured client of
/// that name would see their events.
const RESERVED_CLIENTS: [&str; 2] = [crate::auth::PROCESSOR_CALLER, crate::auth::ANONYMOUS];

/// API keys with their client names (`name:KEY` or a bare `KEY`).
pub(super) fn credentials(
    source: &impl Source,
    names: (&'static str, &'static str),
    default: Default,
) -> Result<Option<Vec<Credential>>, ConfigError> {
    let Some((values, origin)) = entries(source, names, default)? else {
        return Ok(None);
    };
    let invalid_entry = |reason: String| ConfigError::Invalid {
        name: origin,
        value: "***".to_owned(),
        reason,
    };
    let credentials = values
        .iter()
        .map(|entry| Credential::parse(entry))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid_entry)?;
    for credential in &credentials {
        if RESERVED_CLIENTS.contains(&&*credential.client) {
            return Err(invalid_entry(format!(
                "the client name {:?} is reserved (events the processor takes directly are \
                 stored under it)",
                &*credential.client
            )));
        }
    }
    Ok(Some(credentials))
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` is read by the trace exporter itself; it is
/// declared here so that the catalog knows every variable a service reads.
pub(super) fn declare_read_elsewhere(source: &impl Source) {
    optional(source, "OTEL_EXPORTER_OTLP_ENDPOINT");
    source.declare("RUST_LOG", Default::Value("info".to_owned()));
}

/// A request that stores an event waits for its write once it is sent, so
/// its time limit must cover the longest intake write: a read of the
/// patient's last number, the insert and the read that settles it, each
/// bounded by twice `MONGO_TIMEOUT_MS`.
pub fn check_request_budget(limits: &HttpLimits, mongo: &MongoSettings) -> Result<(), ConfigError> {
    let budget = crate::store::intake_budget(mongo.timeout);
    if limits.request_timeout <= budget {
        return Err(invalid(
            "REQUEST_TIMEOUT_MS",
            &limits.request_timeout.as_millis().to_string(),
            &format!(
                "must be above {} ms: a write of an event may take a read, the insert and a read \
                 that settles it, each bounded by 2 x MONGO_TIMEOUT_MS ({} ms); raise it or lower \
                 MONGO_TIMEOUT_MS",
                budget.as_millis(),
                mongo.timeout.as_millis()
            ),
        ));
    }
    Ok(())
}

/// Where `/metrics` listens (`METRICS_BIND`). It is plain HTTP, so with TLS
/// on the public port it defaults to loopback: the scraper runs beside the
/// service or is let in on purpose.
pub(crate) fn metrics_bind(source: &impl Source, tls: bool) -> Result<IpAddr, ConfigError> {
    source.declare("METRICS_BIND", Default::Value("0.0.0.0".to_owned()));
    match source.get("METRICS_BIND") {
        None if tls => Ok(IpAddr::from([127, 0, 0, 1])),
        None => Ok(IpAddr::from([0, 0, 0, 0])),
        Some(value) => value.trim().parse().map_err(|_| {
            invalid(
                "METRICS_BIND",
                &value,
                "must be an IP address, such as 127.0.0.1 or 0.0.0.0",
            )
        }),
    }
}
