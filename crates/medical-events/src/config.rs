//! Settings from the environment, with the original service's names. A
//! missing or invalid setting stops start-up with one line saying which.

use std::time::Duration;

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
        Ok(Self {
            port: number(source, "PORT", 3000)?,
            mongo: mongo(source)?,
            processor_url: processor_url.trim_end_matches('/').to_owned(),
            log_format: log_format(source)?,
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
        ])
        .unwrap();
        assert_eq!(config.port, 3000);
        assert_eq!(config.mongo.timeout, Duration::from_millis(5000));
        assert_eq!(config.processor_url, "http://processor:3001");
    }

    #[test]
    fn processor_defaults_are_the_real_timing() {
        let config = ProcessorConfig::from_source(&[("MONGO_URI", "mongodb://db:27017")]).unwrap();
        assert_eq!(config.port, 3001);
        assert_eq!(config.processing_min, Duration::from_millis(5000));
        assert_eq!(config.processing_max, Duration::from_millis(6000));
        assert_eq!(config.retry.max_attempts, 5);
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
