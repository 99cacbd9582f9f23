//! Settings from the environment, with the original service's names. A
//! missing or invalid setting stops start-up with one line saying which.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{Access, Credential, MIN_SECRET_CHARS, Secret};
use crate::privacy::PatientLogging;
use crate::store::IntakePolicy;
use crate::telemetry::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is required (e.g. {example})")]
    Missing {
        name: &'static str,
        example: &'static str,
    },
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("{name} is required: {hint}")]
    Insecure {
        name: &'static str,
        hint: &'static str,
    },
    #[error("{name}={path:?} cannot be read: {reason}")]
    Unreadable {
        name: &'static str,
        path: String,
        reason: String,
    },
}

/// Where settings come from; the process environment in production, a map in tests.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl<const N: usize> Source for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    }
}

#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub uri: String,
    /// Server selection and connect timeout (`MONGO_TIMEOUT_MS`).
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub port: u16,
    pub mongo: MongoSettings,
    pub processor_url: String,
    pub log_format: LogFormat,
    /// API keys clients must present, with their client names (`INGEST_API_KEYS`).
    pub access: Access,
    /// Operator credentials (`ADMIN_API_KEYS`); may be empty.
    pub admins: Vec<Credential>,
    /// Sent to the processor (`PROCESSOR_TOKEN`); `None` only with auth disabled.
    pub processor_token: Option<Secret>,
    pub rate_limit: RateLimit,
    pub limits: HttpLimits,
    pub tls: Option<TlsFiles>,
    /// Extra CA certificate (PEM) to trust for an https `PROCESSOR_URL`.
    pub processor_ca: Option<PathBuf>,
    /// How long retries and duplicates are recognised.
    pub intake: IntakePolicy,
    /// The separate listener for `/metrics` (`METRICS_PORT`).
    pub metrics_port: u16,
    pub patient_logging: PatientLoggingSetting,
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

/// What happens to a patient whose event failed `MAX_ATTEMPTS` times (`ON_FAILURE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Record it failed and go on with the patient's next events.
    Continue,
    /// Park the patient at that event until an operator retries or skips it.
    Park,
}

/// Delivery downstream (`DELIVERY_URL`, `DELIVERY_AUTH_HEADER`).
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub url: String,
    /// `Name: value`, sent with every delivery; never logged.
    pub auth_header: Option<(String, Secret)>,
}

/// What the pruner keeps (`RETENTION_DAYS`, `OUTCOME_RETENTION_DAYS`).
#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    /// Finished events older than this lose their payload and lifecycle
    /// record; `None` keeps everything.
    pub events: Option<Duration>,
    /// `processed_events` older than this are removed; `None` keeps them.
    pub outcomes: Option<Duration>,
    /// Idempotency records are honoured this long; events keep them at least as long.
    pub idempotency_ttl: Duration,
}

/// Token bucket per API key: `per_second` refill, `burst` capacity.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// Bounds on HTTP work: requests in flight (beyond: 503) and time per request.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_in_flight: usize,
    pub request_timeout: Duration,
}

/// PEM certificate chain and private key for HTTPS (`TLS_CERT_PATH`, `TLS_KEY_PATH`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub port: u16,
    pub mongo: MongoSettings,
    pub processing_min: Duration,
    pub processing_max: Duration,
    pub retry: RetryPolicy,
    pub sweep_interval: Duration,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// The token `POST /queue` requires (`PROCESSOR_TOKEN`).
    pub access: Access,
    pub limits: HttpLimits,
    /// Patients with a lane in memory at most; past it `/queue` answers 503
    /// and the sweep starts the rest as lanes free up.
    pub max_active_lanes: usize,
    pub tls: Option<TlsFiles>,
    /// `LEASE_MS`: how long a bucket lease lasts without renewal.
    pub lease: Duration,
    /// `ATTEMPT_TIMEOUT_MS`: a handler running longer is a failed attempt.
    pub attempt_timeout: Duration,
    pub on_failure: FailurePolicy,
    pub delivery: Option<DeliverySettings>,
    pub retention: RetentionSettings,
    pub metrics_port: u16,
    pub patient_logging: PatientLoggingSetting,
}

/// How failed attempts are retried: capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: i32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl IngestConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let processor_url = required(source, "PROCESSOR_URL", "http://localhost:3001")?;
        if !(processor_url.starts_with("http://") || processor_url.starts_with("https://"))
            || reqwest::Url::parse(&processor_url).is_err()
        {
            return Err(invalid(
                "PROCESSOR_URL",
                &mask_uri_password(&processor_url),
                "must be an http(s) URL",
            ));
        }
        let disabled = auth_disabled(source)?;
        let access = match credentials(source, "INGEST_API_KEYS", "INGEST_API_KEYS_FILE")? {
            Some(keys) => Access::Required(keys),
            None if disabled => Access::Disabled,
            None => {
                return Err(ConfigError::Insecure {
                    name: "INGEST_API_KEYS",
                    hint: "comma-separated API keys (or INGEST_API_KEYS_FILE), or AUTH_DISABLED=true to run without authentication",
                });
            }
        };
        let processor_token = match secrets(source, "PROCESSOR_TOKEN", "PROCESSOR_TOKEN_FILE")? {
            Some(mut tokens) => Some(Secret::new(tokens.remove(0))),
            None if disabled => None,
            None => {
                return Err(ConfigError::Insecure {
                    name: "PROCESSOR_TOKEN",
                    hint: "the token the processor requires (or PROCESSOR_TOKEN_FILE), or AUTH_DISABLED=true",
                });
            }
        };
        let admins =
            credentials(source, "ADMIN_API_KEYS", "ADMIN_API_KEYS_FILE")?.unwrap_or_default();
        let config = Self {
            port: number(source, "PORT", 3000)?,
            mongo: mongo(source)?,
            processor_url: processor_url.trim_end_matches('/').to_owned(),
            log_format: log_format(source)?,
            access,
            admins,
            processor_token,
            rate_limit: RateLimit {
                per_second: positive(source, "RATE_LIMIT_PER_SEC", 1_000)?,
                burst: positive(source, "RATE_LIMIT_BURST", 2_000)?,
            },
            limits: http_limits(source)?,
            tls: tls(source)?,
            processor_ca: match source.get("PROCESSOR_CA_PATH") {
                None => None,
                Some(path) => {
                    std::fs::metadata(path.trim()).map_err(|e| ConfigError::Unreadable {
                        name: "PROCESSOR_CA_PATH",
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                    Some(PathBuf::from(path.trim()))
                }
            },
            intake: IntakePolicy {
                idempotency_ttl: idempotency_ttl(source)?,
                dedup_window: Duration::from_secs(number(source, "DEDUP_WINDOW_S", 300)?),
            },
            metrics_port: number(source, "METRICS_PORT", 9464)?,
            patient_logging: patient_logging(source)?,
        };
        check_request_budget(&config.limits, &config.mongo)?;
        Ok(config)
    }
}

impl ProcessorConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let min: u64 = number(source, "PROCESSING_MIN_MS", 5000)?;
        let max: u64 = number(source, "PROCESSING_MAX_MS", 6000)?;
        if max < min {
            return Err(invalid(
                "PROCESSING_MAX_MS",
                &max.to_string(),
                &format!("must not be below PROCESSING_MIN_MS ({min})"),
            ));
        }
        let lease = positive_millis(source, "LEASE_MS", 10_000)?;
        if lease < Duration::from_millis(1_000) {
            return Err(invalid(
                "LEASE_MS",
                &lease.as_millis().to_string(),
                "must be at least 1000 (renewals happen every third of it)",
            ));
        }
        let max_attempts: i32 = number(source, "MAX_ATTEMPTS", 5)?;
        if max_attempts < 1 {
            return Err(invalid(
                "MAX_ATTEMPTS",
                &max_attempts.to_string(),
                "must be at least 1",
            ));
        }
        let config = Self {
            port: number(source, "PORT", 3001)?,
            mongo: mongo(source)?,
            processing_min: Duration::from_millis(min),
            processing_max: Duration::from_millis(max),
            retry: RetryPolicy {
                max_attempts,
                base_delay: millis(source, "RETRY_BASE_MS", 500)?,
                max_delay: millis(source, "RETRY_MAX_MS", 30_000)?,
            },
            sweep_interval: positive_millis(source, "SWEEP_INTERVAL_MS", 5_000)?,
            shutdown_grace: millis(source, "SHUTDOWN_GRACE_MS", 25_000)?,
            log_format: log_format(source)?,
            access: match secrets(source, "PROCESSOR_TOKEN", "PROCESSOR_TOKEN_FILE")? {
                Some(mut tokens) => {
                    Access::Required(vec![Credential::named("ingest", tokens.remove(0))])
                }
                None if auth_disabled(source)? => Access::Disabled,
                None => {
                    return Err(ConfigError::Insecure {
                        name: "PROCESSOR_TOKEN",
                        hint: "the token ingest sends (or PROCESSOR_TOKEN_FILE), or AUTH_DISABLED=true to run without authentication",
                    });
                }
            },
            limits: http_limits(source)?,
            max_active_lanes: positive(source, "MAX_ACTIVE_LANES", 50_000)? as usize,
            tls: tls(source)?,
            lease,
            attempt_timeout: positive_millis(source, "ATTEMPT_TIMEOUT_MS", 60_000)?,
            on_failure: match source.get("ON_FAILURE").as_deref().map(str::trim) {
                None | Some("continue") => FailurePolicy::Continue,
                Some("park") => FailurePolicy::Park,
                Some(other) => {
                    return Err(invalid("ON_FAILURE", other, "must be continue or park"));
                }
            },
            delivery: delivery(source)?,
            retention: RetentionSettings {
                events: days(source, "RETENTION_DAYS", 30)?,
                outcomes: days(source, "OUTCOME_RETENTION_DAYS", 0)?,
                idempotency_ttl: idempotency_ttl(source)?,
            },
            metrics_port: number(source, "METRICS_PORT", 9465)?,
            patient_logging: patient_logging(source)?,
        };
        check_request_budget(&config.limits, &config.mongo)?;
        Ok(config)
    }
}

fn mongo(source: &impl Source) -> Result<MongoSettings, ConfigError> {
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
    Ok(MongoSettings {
        uri,
        timeout: positive_millis(source, "MONGO_TIMEOUT_MS", 5_000)?,
    })
}

fn auth_disabled(source: &impl Source) -> Result<bool, ConfigError> {
    match source.get("AUTH_DISABLED").as_deref().map(str::trim) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(invalid("AUTH_DISABLED", other, "must be true or false")),
    }
}

/// Entries of `name` (comma-separated) or of the file named by `file_name`
/// (comma- or newline-separated; for secrets mounted by an orchestrator).
fn entries(
    source: &impl Source,
    name: &'static str,
    file_name: &'static str,
) -> Result<Option<(Vec<String>, &'static str)>, ConfigError> {
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
    Ok(Some((values, origin)))
}

/// Tokens (no client names), e.g. `PROCESSOR_TOKEN`.
fn secrets(
    source: &impl Source,
    name: &'static str,
    file_name: &'static str,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some((values, origin)) = entries(source, name, file_name)? else {
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

/// API keys with their client names (`name:KEY` or a bare `KEY`).
fn credentials(
    source: &impl Source,
    name: &'static str,
    file_name: &'static str,
) -> Result<Option<Vec<Credential>>, ConfigError> {
    let Some((values, origin)) = entries(source, name, file_name)? else {
        return Ok(None);
    };
    let credentials = values
        .iter()
        .map(|entry| Credential::parse(entry))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| ConfigError::Invalid {
            name: origin,
            value: "***".to_owned(),
            reason,
        })?;
    Ok(Some(credentials))
}

fn http_limits(source: &impl Source) -> Result<HttpLimits, ConfigError> {
    Ok(HttpLimits {
        max_in_flight: positive(source, "MAX_IN_FLIGHT", 1_024)? as usize,
        request_timeout: positive_millis(source, "REQUEST_TIMEOUT_MS", 40_000)?,
    })
}

fn tls(source: &impl Source) -> Result<Option<TlsFiles>, ConfigError> {
    match (source.get("TLS_CERT_PATH"), source.get("TLS_KEY_PATH")) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            for (name, path) in [("TLS_CERT_PATH", &cert), ("TLS_KEY_PATH", &key)] {
                if let Err(e) = std::fs::metadata(path.trim()) {
                    return Err(ConfigError::Unreadable {
                        name,
                        path: path.clone(),
                        reason: e.to_string(),
                    });
                }
            }
            Ok(Some(TlsFiles {
                cert: PathBuf::from(cert.trim()),
                key: PathBuf::from(key.trim()),
            }))
        }
        (Some(_), None) => Err(ConfigError::Missing {
            name: "TLS_KEY_PATH",
            example: "set with TLS_CERT_PATH",
        }),
        (None, Some(_)) => Err(ConfigError::Missing {
            name: "TLS_CERT_PATH",
            example: "set with TLS_KEY_PATH",
        }),
    }
}

fn positive(source: &impl Source, name: &'static str, default: u32) -> Result<u32, ConfigError> {
    let value = number(source, name, default)?;
    if value == 0 {
        return Err(invalid(name, "0", "must be greater than 0"));
    }
    Ok(value)
}

fn log_format(source: &impl Source) -> Result<LogFormat, ConfigError> {
    match source.get("LOG_FORMAT").as_deref() {
        None | Some("json") => Ok(LogFormat::Json),
        Some("pretty") => Ok(LogFormat::Pretty),
        Some(other) => Err(invalid("LOG_FORMAT", other, "must be json or pretty")),
    }
}

fn required(
    source: &impl Source,
    name: &'static str,
    example: &'static str,
) -> Result<String, ConfigError> {
    source
        .get(name)
        .map(|v| v.trim().to_owned())
        .ok_or(ConfigError::Missing { name, example })
}

fn number<T: std::str::FromStr>(
    source: &impl Source,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match source.get(name) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|_| {
            invalid(
                name,
                &raw,
                &format!(
                    "must be a whole number in range for {}",
                    std::any::type_name::<T>()
                ),
            )
        }),
    }
}

fn millis(source: &impl Source, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
    number(source, name, default).map(Duration::from_millis)
}

fn positive_millis(
    source: &impl Source,
    name: &'static str,
    default: u64,
) -> Result<Duration, ConfigError> {
    let value = millis(source, name, default)?;
    if value.is_zero() {
        return Err(invalid(name, "0", "must be greater than 0"));
    }
    Ok(value)
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

fn invalid(name: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn idempotency_ttl(source: &impl Source) -> Result<Duration, ConfigError> {
    let hours: u64 = number(source, "IDEMPOTENCY_TTL_HOURS", 168)?;
    if hours == 0 {
        return Err(invalid("IDEMPOTENCY_TTL_HOURS", "0", "must be at least 1"));
    }
    Ok(Duration::from_secs(hours * 3600))
}

/// Whole days; 0 means "keep forever" (`None`).
fn days(
    source: &impl Source,
    name: &'static str,
    default: u64,
) -> Result<Option<Duration>, ConfigError> {
    let days: u64 = number(source, name, default)?;
    Ok((days > 0).then(|| Duration::from_secs(days * 86_400)))
}

fn delivery(source: &impl Source) -> Result<Option<DeliverySettings>, ConfigError> {
    let Some(url) = source.get("DELIVERY_URL").map(|u| u.trim().to_owned()) else {
        return Ok(None);
    };
    if !(url.starts_with("http://") || url.starts_with("https://"))
        || reqwest::Url::parse(&url).is_err()
    {
        return Err(invalid(
            "DELIVERY_URL",
            &mask_uri_password(&url),
            "must be an http(s) URL",
        ));
    }
    let auth_header = match source.get("DELIVERY_AUTH_HEADER") {
        None => None,
        Some(raw) => {
            let (name, value) = raw.split_once(':').ok_or_else(|| ConfigError::Invalid {
                name: "DELIVERY_AUTH_HEADER",
                value: "***".to_owned(),
                reason: "must be `Header-Name: value`, e.g. `Authorization: Bearer ...`".to_owned(),
            })?;
            let name = name.trim().to_owned();
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value.trim()).is_err()
            {
                return Err(ConfigError::Invalid {
                    name: "DELIVERY_AUTH_HEADER",
                    value: "***".to_owned(),
                    reason: "is not a valid HTTP header".to_owned(),
                });
            }
            Some((name, Secret::new(value.trim())))
        }
    };
    Ok(Some(DeliverySettings { url, auth_header }))
}

fn patient_logging(source: &impl Source) -> Result<PatientLoggingSetting, ConfigError> {
    match source.get("LOG_PATIENT_ID").as_deref().map(str::trim) {
        None | Some("pseudonym") => Ok(PatientLoggingSetting::Pseudonym(
            source.get("LOG_PSEUDONYM_KEY").map(Secret::new),
        )),
        Some("plain") => Ok(PatientLoggingSetting::Plain),
        Some(other) => Err(invalid(
            "LOG_PATIENT_ID",
            other,
            "must be pseudonym or plain",
        )),
    }
}

/// `mongodb://user:secret@host` -> `mongodb://user:***@host`, for messages.
///
/// Everything up to the last `@` counts as user information, whatever it
/// contains: a password with an unencoded `/`, `?` or `@` (the mistake that
/// makes a URI invalid in the first place) is masked whole. A URI whose
/// query holds an `@` loses more than its password; a message can afford that.
pub fn mask_uri_password(uri: &str) -> String {
    let (scheme, rest) = match uri.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, uri),
    };
    let Some((userinfo, after)) = rest.rsplit_once('@') else {
        return uri.to_owned();
    };
    let user = userinfo.split(':').next().unwrap_or("");
    match scheme {
        Some(scheme) => format!("{scheme}://{user}:***@{after}"),
        None => format!("{user}:***@{after}"),
    }
}

/// The password in `uri`, as written and percent-decoded (empty if none).
fn uri_password(uri: &str) -> Vec<String> {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let Some((_, password)) = rest
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
    else {
        return Vec::new();
    };
    let mut forms = vec![password.to_owned()];
    if let Some(decoded) = percent_decode(password)
        && decoded != password
    {
        forms.push(decoded);
    }
    forms
}

fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// `message` with the password of `uri` replaced by `***`.
fn redact_uri_password(uri: &str, message: &str) -> String {
    let mut message = message.to_owned();
    for password in uri_password(uri) {
        // Shorter ones would mask unrelated letters.
        if password.chars().count() >= 3 {
            message = message.replace(&password, "***");
        }
    }
    message
}

/// The driver refused `uri` (`error`): the setting's error, without the
/// password. The driver's reason is taken from parsing the URI with its
/// password masked, so it cannot quote it (a password with an unencoded
/// `?` would otherwise be quoted back as a port or an option); if only the
/// original fails to parse, the password itself is what is malformed.
pub fn invalid_mongo_uri(uri: &str, error: &mongodb::error::Error) -> ConfigError {
    use mongodb::options::ConnectionString;
    let masked = mask_uri_password(uri);
    let reason = match ConnectionString::parse(&masked) {
        Err(masked_error) if masked != uri => driver_reason(&masked_error),
        Ok(_) if ConnectionString::parse(uri).is_err() => {
            "the user name or password is malformed (percent-encode : / ? # [ ] @ % in them)"
                .to_owned()
        }
        // No password in the URI, or one refused only at start-up.
        _ => driver_reason(error),
    };
    ConfigError::Invalid {
        name: "MONGO_URI",
        value: masked,
        reason: redact_uri_password(uri, &reason),
    }
}

fn driver_reason(error: &mongodb::error::Error) -> String {
    match error.kind.as_ref() {
        mongodb::error::ErrorKind::InvalidArgument { message, .. }
        | mongodb::error::ErrorKind::DnsResolve { message, .. } => message.clone(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_defaults_match_the_original() {
        let config = IngestConfig::from_source(&[
            ("MONGO_URI", "mongodb://db:27017/medical_events"),
            ("PROCESSOR_URL", "http://processor:3001/"),
            ("INGEST_API_KEYS", "key-one-0123456789, key-two-0123456789"),
            ("PROCESSOR_TOKEN", "token-0123456789abcdef"),
        ])
        .unwrap();
        assert!(matches!(&config.access, Access::Required(keys) if keys.len() == 2));
        assert_eq!(config.rate_limit.per_second, 1000);
        assert!(config.tls.is_none());
        assert_eq!(config.port, 3000);
        assert_eq!(config.mongo.timeout, Duration::from_millis(5000));
        assert_eq!(config.processor_url, "http://processor:3001");
    }

    /// Issue 13, hole 2: a request that stores an event must be able to
    /// wait for its write; a time limit shorter than the store's bounds is
    /// refused at start-up, naming both settings.
    #[test]
    fn a_request_timeout_shorter_than_a_write_and_its_settling_read_is_refused() {
        let base = [
            ("MONGO_URI", "mongodb://db:27017/medical_events"),
            ("PROCESSOR_URL", "http://processor:3001/"),
            ("AUTH_DISABLED", "true"),
            ("MONGO_TIMEOUT_MS", "5000"),
            ("REQUEST_TIMEOUT_MS", "30000"),
        ];
        let refused = IngestConfig::from_source(&base).unwrap_err().to_string();
        assert!(refused.contains("REQUEST_TIMEOUT_MS"), "{refused}");
        assert!(refused.contains("MONGO_TIMEOUT_MS"), "{refused}");
        let processor = ProcessorConfig::from_source(&base).unwrap_err().to_string();
        assert!(processor.contains("REQUEST_TIMEOUT_MS"), "{processor}");
        let defaults = IngestConfig::from_source(&[
            ("MONGO_URI", "mongodb://db:27017/medical_events"),
            ("PROCESSOR_URL", "http://processor:3001/"),
            ("AUTH_DISABLED", "true"),
        ])
        .unwrap();
        assert!(
            defaults.limits.request_timeout > crate::store::intake_budget(defaults.mongo.timeout),
            "the defaults must fit"
        );
    }

    #[test]
    fn processor_defaults_are_the_real_timing() {
        let config = ProcessorConfig::from_source(&[
            ("MONGO_URI", "mongodb://db:27017"),
            ("AUTH_DISABLED", "true"),
        ])
        .unwrap();
        assert!(matches!(config.access, Access::Disabled));
        assert_eq!(config.port, 3001);
        assert_eq!(config.processing_min, Duration::from_millis(5000));
        assert_eq!(config.processing_max, Duration::from_millis(6000));
        assert_eq!(config.retry.max_attempts, 5);
    }

    #[test]
    fn keys_can_come_from_a_mounted_file() {
        let path = std::env::temp_dir().join(format!("keys-{}", std::process::id()));
        std::fs::write(&path, "file-key-0123456789\nsecond-file-key-0123\n").unwrap();
        let path = path.to_string_lossy().into_owned();
        let config = IngestConfig::from_source(&[
            ("MONGO_URI", "mongodb://db"),
            ("PROCESSOR_URL", "http://p:3001"),
            ("INGEST_API_KEYS_FILE", path.as_str()),
            ("PROCESSOR_TOKEN", "token-0123456789abcdef"),
        ])
        .unwrap();
        assert!(matches!(&config.access, Access::Required(keys) if keys.len() == 2));
        let missing = IngestConfig::from_source(&[
            ("MONGO_URI", "mongodb://db"),
            ("PROCESSOR_URL", "http://p:3001"),
            ("INGEST_API_KEYS_FILE", "/nonexistent/keys"),
        ])
        .unwrap_err();
        assert!(missing.to_string().starts_with("INGEST_API_KEYS_FILE="));
    }

    #[test]
    fn missing_and_invalid_settings_name_the_variable() {
        let missing = IngestConfig::from_source(&[("MONGO_URI", "mongodb://db")]).unwrap_err();
        assert!(missing.to_string().starts_with("PROCESSOR_URL is required"));
        let bad_port =
            ProcessorConfig::from_source(&[("MONGO_URI", "mongodb://db"), ("PORT", "70000")])
                .unwrap_err();
        assert!(
            bad_port
                .to_string()
                .starts_with("PORT=\"70000\" is invalid")
        );
        let bad_uri = ProcessorConfig::from_source(&[("MONGO_URI", "postgres://db")]).unwrap_err();
        assert!(bad_uri.to_string().contains("MONGO_URI"));
        let inverted = ProcessorConfig::from_source(&[
            ("MONGO_URI", "mongodb://db"),
            ("AUTH_DISABLED", "true"),
            ("PROCESSING_MIN_MS", "10"),
            ("PROCESSING_MAX_MS", "5"),
        ])
        .unwrap_err();
        assert!(inverted.to_string().contains("PROCESSING_MAX_MS"));
        let zero_timeout = ProcessorConfig::from_source(&[
            ("MONGO_URI", "mongodb://db"),
            ("MONGO_TIMEOUT_MS", "0"),
        ])
        .unwrap_err();
        assert!(zero_timeout.to_string().contains("MONGO_TIMEOUT_MS"));
    }

    #[test]
    fn uri_passwords_are_masked_whole_whatever_they_contain() {
        for (uri, masked) in [
            ("mongodb://u:pw@db/x", "mongodb://u:***@db/x"),
            ("mongodb://u:p/w?x@db/x?w=1", "mongodb://u:***@db/x?w=1"),
            ("mongodb://u:p@w@db", "mongodb://u:***@db"),
            ("u:pw@db", "u:***@db"),
            ("http://u:pw@processor:3001", "http://u:***@processor:3001"),
            ("mongodb://db/x?w=1", "mongodb://db/x?w=1"),
        ] {
            assert_eq!(mask_uri_password(uri), masked, "{uri}");
        }
    }

    #[test]
    fn a_refused_mongo_uri_is_explained_without_its_password() {
        for uri in [
            "mongodb://admin:pa?ss-w0rd@db/x",
            "mongodb://admin:pa%zzss-w0rd@db/x",
            "mongodb://admin:pass-w0rd@db:port/x",
            "mongodb://admin:pass%2Dw0rd@db/x?tls=maybe",
        ] {
            let error = mongodb::options::ConnectionString::parse(uri).unwrap_err();
            let text = invalid_mongo_uri(uri, &error).to_string();
            assert!(text.starts_with("MONGO_URI="), "{text}");
            for secret in ["pa?ss", "pass-w0rd", "pass%2Dw0rd", "zzss"] {
                assert!(!text.contains(secret), "{text}");
            }
        }
        let error = IngestConfig::from_source(&[
            ("MONGO_URI", "mongodb://admin:pass-w0rd@db:port/x"),
            ("PROCESSOR_URL", "http://p:3001"),
            ("AUTH_DISABLED", "true"),
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("port must be an integer"), "{error}");
    }
}
