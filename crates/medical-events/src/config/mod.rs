//! Settings from the environment, with the original service's names. A
//! missing or invalid setting stops start-up with one line saying which.
//!
//! Here: where settings come from ([`Source`]), the one error type, and the
//! parsing helpers every setting uses. Each settings type lives with the
//! module that uses it and reads itself (`HttpLimits` in `http::limits`,
//! `TlsFiles` in `tls`, `RetryPolicy` in `retry`, the failure policy in the
//! scheduler, delivery in `processor::processing`, retention in
//! `store::retention`); [`ingest`] and [`processor`] put each service's
//! settings together, [`shared`] holds what both read. Every setting
//! declares its name and default as it reads them, so [`catalog`] can check
//! them against the README's table.

pub mod catalog;
mod ingest;
mod processor;
mod shared;
#[cfg(test)]
mod tests;
mod uri;

use std::time::Duration;

pub use ingest::IngestConfig;
pub use processor::ProcessorConfig;
pub use shared::{MongoSettings, PatientLoggingSetting, check_request_budget};
pub use uri::{invalid_mongo_uri, mask_uri_password};

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

/// A setting's default, as it is declared when read (and as the README's
/// configuration table must show it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Default {
    /// Start-up fails without it (unless another setting makes it optional).
    Required,
    /// Unset means "off" or "not used".
    None,
    /// This value.
    Value(String),
}

/// Where settings come from; the process environment in production, a map
/// in tests, a [`catalog::Catalog`] to list them.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;

    /// Called by every setting's parser with its name and default before it
    /// reads it; only a catalog records it.
    fn declare(&self, _name: &'static str, _default: Default) {}
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

/// An optional setting without a default.
pub(crate) fn optional(source: &impl Source, name: &'static str) -> Option<String> {
    source.declare(name, Default::None);
    source.get(name)
}

/// An optional setting whose default `shown` is not a plain value (it is
/// decided elsewhere: e.g. "the deployment's" key).
pub(crate) fn optional_shown(
    source: &impl Source,
    name: &'static str,
    shown: &str,
) -> Option<String> {
    source.declare(name, Default::Value(shown.to_owned()));
    source.get(name)
}

/// One of a fixed set of words, the first being the default.
pub(crate) fn choice(
    source: &impl Source,
    name: &'static str,
    words: &[&'static str],
) -> Result<&'static str, ConfigError> {
    source.declare(name, Default::Value(words[0].to_owned()));
    match source.get(name).as_deref().map(str::trim) {
        None => Ok(words[0]),
        Some(value) => words
            .iter()
            .find(|w| **w == value)
            .copied()
            .ok_or_else(|| invalid(name, value, &format!("must be {}", words.join(" or ")))),
    }
}

pub(crate) fn required(
    source: &impl Source,
    name: &'static str,
    example: &'static str,
) -> Result<String, ConfigError> {
    source.declare(name, Default::Required);
    source
        .get(name)
        .map(|v| v.trim().to_owned())
        .ok_or(ConfigError::Missing { name, example })
}

pub(crate) fn number<T: std::str::FromStr + std::fmt::Display>(
    source: &impl Source,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    source.declare(name, Default::Value(default.to_string()));
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

pub(crate) fn positive(
    source: &impl Source,
    name: &'static str,
    default: u32,
) -> Result<u32, ConfigError> {
    let value = number(source, name, default)?;
    if value == 0 {
        return Err(invalid(name, "0", "must be greater than 0"));
    }
    Ok(value)
}

pub(crate) fn millis(
    source: &impl Source,
    name: &'static str,
    default: u64,
) -> Result<Duration, ConfigError> {
    number(source, name, default).map(Duration::from_millis)
}

pub(crate) fn positive_millis(
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

/// Whole days; 0 means "keep forever" (`None`).
pub(crate) fn days(
    source: &impl Source,
    name: &'static str,
    default: u64,
) -> Result<Option<Duration>, ConfigError> {
    let days: u64 = number(source, name, default)?;
    Ok((days > 0).then(|| Duration::from_secs(days * 86_400)))
}

/// A path that must be readable now.
pub(crate) fn readable_path(
    name: &'static str,
    path: &str,
) -> Result<std::path::PathBuf, ConfigError> {
    std::fs::metadata(path.trim()).map_err(|e| ConfigError::Unreadable {
        name,
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(std::path::PathBuf::from(path.trim()))
}

pub(crate) fn invalid(name: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}
