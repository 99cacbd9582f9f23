//! Settings from the environment, with the original service's names. A
//! missing or invalid setting stops start-up with one line saying which.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{Access, MIN_SECRET_CHARS, Secret};
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
    /// API keys clients must present (`INGEST_API_KEYS`).
    pub access: Access,
    /// Sent to the processor (`PROCESSOR_TOKEN`); `None` only with auth disabled.
    pub processor_token: Option<Secret>,
    pub rate_limit: RateLimit,
    pub limits: HttpLimits,
    pub tls: Option<TlsFiles>,
    /// Extra CA certificate (PEM) to trust for an https `PROCESSOR_URL`.
    pub processor_ca: Option<PathBuf>,
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
                &processor_url,
                "must be an http(s) URL",
            ));
        }
        let disabled = auth_disabled(source)?;
        let access = match secrets(source, "INGEST_API_KEYS", "INGEST_API_KEYS_FILE")? {
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
            Some(mut tokens) => Some(tokens.remove(0)),
            None if disabled => None,
            None => {
                return Err(ConfigError::Insecure {
                    name: "PROCESSOR_TOKEN",
                    hint: "the token the processor requires (or PROCESSOR_TOKEN_FILE), or AUTH_DISABLED=true",
                });
            }
        };
        Ok(Self {
            port: number(source, "PORT", 3000)?,
            mongo: mongo(source)?,
            processor_url: processor_url.trim_end_matches('/').to_owned(),
            log_format: log_format(source)?,
            access,
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
        })
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
        let max_attempts: i32 = number(source, "MAX_ATTEMPTS", 5)?;
        if max_attempts < 1 {
            return Err(invalid(
                "MAX_ATTEMPTS",
                &max_attempts.to_string(),
                "must be at least 1",
            ));
        }
        Ok(Self {
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
            shutdown_grace: millis(source, "SHUTDOWN_GRACE_MS", 8_000)?,
            log_format: log_format(source)?,
            access: match secrets(source, "PROCESSOR_TOKEN", "PROCESSOR_TOKEN_FILE")? {
                Some(mut tokens) => Access::Required(vec![tokens.remove(0)]),
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
        })
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
            &uri,
            "must start with mongodb:// or mongodb+srv://",
        ));
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

/// Credentials from `name` (comma-separated) or the file named by `file_name`
/// (comma- or newline-separated; for secrets mounted by an orchestrator).
fn secrets(
    source: &impl Source,
    name: &'static str,
    file_name: &'static str,
) -> Result<Option<Vec<Secret>>, ConfigError> {
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
    let mut values = Vec::new();
    for value in raw
        .split([',', '\n'])
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
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
        values.push(Secret::new(value));
    }
    if values.is_empty() {
        return Err(invalid(origin, "", "lists no credential"));
    }
    Ok(Some(values))
}

fn http_limits(source: &impl Source) -> Result<HttpLimits, ConfigError> {
    Ok(HttpLimits {
        max_in_flight: positive(source, "MAX_IN_FLIGHT", 1_024)? as usize,
        request_timeout: positive_millis(source, "REQUEST_TIMEOUT_MS", 30_000)?,
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

fn invalid(name: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_owned(),
        reason: reason.to_owned(),
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
}
