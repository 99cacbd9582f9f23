//! Ingest's settings, put together from what its modules read.

use std::path::PathBuf;
use std::time::Duration;

use super::shared::{
    auth_disabled, credentials, declare_read_elsewhere, dev_mode, distinct_keys, idempotency_ttl,
    log_format, secrets,
};
use super::{
    ConfigError, Default, MongoSettings, PatientLoggingSetting, ProcessEnv, Source,
    check_request_budget, invalid, mask_uri_password, number, optional, positive, readable_path,
    required,
};
use crate::auth::{Access, Credential, Secret};
use crate::http::limits::{HttpLimits, RateLimit};
use crate::ingest::mllp::MllpSettings;
use crate::store::IntakePolicy;
use crate::telemetry::LogFormat;
use crate::tls::TlsFiles;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub port: u16,
    pub mongo: MongoSettings,
    pub processor_url: String,
    pub log_format: LogFormat,
    /// `DEV_MODE=true`: development credentials accepted; warned at start.
    pub dev_mode: bool,
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
    /// The address `/metrics` listens on (`METRICS_BIND`).
    pub metrics_bind: std::net::IpAddr,
    pub patient_logging: PatientLoggingSetting,
    /// Bounds on open outcome streams (`STREAM_MAX_PER_CLIENT`, `STREAM_MAX`).
    pub streams: crate::ingest::stream::StreamLimits,
    /// HL7 v2 over MLLP listeners (`MLLP_LISTENERS`) and their limits.
    pub mllp: MllpSettings,
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
        let keys = ("INGEST_API_KEYS", "INGEST_API_KEYS_FILE");
        let access = match credentials(source, keys, Default::Required)? {
            Some(keys) => Access::Required(keys),
            None if disabled => Access::Disabled,
            None => {
                return Err(ConfigError::Insecure {
                    name: "INGEST_API_KEYS",
                    hint: "comma-separated API keys (or INGEST_API_KEYS_FILE), or AUTH_DISABLED=true to run without authentication",
                });
            }
        };
        let token = ("PROCESSOR_TOKEN", "PROCESSOR_TOKEN_FILE");
        let processor_token = match secrets(source, token, Default::Required)? {
            // The first is sent; the processor accepts them all (rotation).
            Some(mut tokens) => Some(Secret::new(tokens.remove(0))),
            None if disabled => None,
            None => {
                return Err(ConfigError::Insecure {
                    name: "PROCESSOR_TOKEN",
                    hint: "the token the processor requires (or PROCESSOR_TOKEN_FILE), or AUTH_DISABLED=true",
                });
            }
        };
        let admin_keys = ("ADMIN_API_KEYS", "ADMIN_API_KEYS_FILE");
        let admins: Vec<Credential> =
            credentials(source, admin_keys, Default::None)?.unwrap_or_default();
        let clients = match &access {
            Access::Required(keys) => keys.as_slice(),
            Access::Disabled => &[],
        };
        distinct_keys("INGEST_API_KEYS", clients.iter().chain(&admins))?;
        declare_read_elsewhere(source);
        let config = Self {
            port: number(source, "PORT", 3000)?,
            mongo: MongoSettings::from_source(source)?,
            processor_url: processor_url.trim_end_matches('/').to_owned(),
            log_format: log_format(source)?,
            dev_mode: dev_mode(source)?,
            access: access.clone(),
            admins,
            processor_token,
            rate_limit: RateLimit::from_source(source)?,
            limits: HttpLimits::from_source(source)?,
            tls: TlsFiles::from_source(source)?,
            processor_ca: optional(source, "PROCESSOR_CA_PATH")
                .map(|path| readable_path("PROCESSOR_CA_PATH", &path))
                .transpose()?,
            intake: IntakePolicy {
                idempotency_ttl: idempotency_ttl(source)?,
                dedup_window: Duration::from_secs(number(source, "DEDUP_WINDOW_S", 300)?),
                max_unfinished_per_client_patient: positive(
                    source,
                    "MAX_UNFINISHED_PER_CLIENT_PATIENT",
                    1_000,
                )? as usize,
            },
            metrics_port: number(source, "METRICS_PORT", 9464)?,
            metrics_bind: super::shared::metrics_bind(
                source,
                source.get("TLS_CERT_PATH").is_some(),
            )?,
            patient_logging: PatientLoggingSetting::from_source(source)?,
            streams: crate::ingest::stream::StreamLimits::from_source(source)?,
            mllp: MllpSettings::from_source(source, &access)?,
        };
        check_request_budget(&config.limits, &config.mongo)?;
        Ok(config)
    }
}
