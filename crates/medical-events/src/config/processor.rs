//! A processor's settings, put together from what its modules read.

use std::time::Duration;

use super::shared::{
    auth_disabled, declare_read_elsewhere, dev_mode, idempotency_ttl, log_format, secrets,
};
use super::{
    ConfigError, Default, MongoSettings, PatientLoggingSetting, ProcessEnv, Source,
    check_request_budget, invalid, millis, number, positive, positive_millis,
};
use crate::auth::{Access, Credential};
use crate::http::limits::HttpLimits;
use crate::processor::mllp_delivery::MllpDeliverySettings;
use crate::processor::processing::DeliverySettings;
use crate::processor::scheduler::FailurePolicy;
use crate::retry::RetryPolicy;
use crate::store::Retention;
use crate::telemetry::LogFormat;
use crate::tls::TlsFiles;

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
    /// `DEV_MODE=true`: development credentials accepted; warned at start.
    pub dev_mode: bool,
    /// The token `POST /queue` requires (`PROCESSOR_TOKEN`).
    pub access: Access,
    pub limits: HttpLimits,
    /// Patients with a lane in memory at most; past it `/queue` answers 503
    /// and the sweep starts the rest as lanes free up.
    pub max_active_lanes: usize,
    /// `MERGED_WRITES_MAX`: events whose claims or fenced writes may share
    /// one multi-document statement (1: each alone). Merging saves commits
    /// on a server that syncs each statement, and costs expression
    /// evaluation on every document (BENCHMARKS.md has both).
    pub max_merged_writes: usize,
    pub tls: Option<TlsFiles>,
    /// `LEASE_MS`: how long a bucket lease lasts without renewal.
    pub lease: Duration,
    /// `ATTEMPT_TIMEOUT_MS`: a handler running longer is a failed attempt.
    pub attempt_timeout: Duration,
    pub on_failure: FailurePolicy,
    pub delivery: Option<DeliverySettings>,
    /// HL7 delivery out over MLLP (`DELIVERY_MLLP`).
    pub mllp_delivery: Option<MllpDeliverySettings>,
    pub retention: Retention,
    pub metrics_port: u16,
    /// The address `/metrics` listens on (`METRICS_BIND`).
    pub metrics_bind: std::net::IpAddr,
    pub patient_logging: PatientLoggingSetting,
}

impl ProcessorConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let port = number(source, "PORT", 3001)?;
        let mongo = MongoSettings::from_source(source)?;
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
        let token = ("PROCESSOR_TOKEN", "PROCESSOR_TOKEN_FILE");
        let access = match secrets(source, token, Default::Required)? {
            // Every listed token is accepted, so a new one can be rolled out
            // to the processors before ingest sends it.
            Some(tokens) => Access::Required(
                tokens
                    .into_iter()
                    .map(|token| Credential::named(crate::auth::PROCESSOR_CALLER, token))
                    .collect(),
            ),
            None if auth_disabled(source)? => Access::Disabled,
            None => {
                return Err(ConfigError::Insecure {
                    name: "PROCESSOR_TOKEN",
                    hint: "the token ingest sends (or PROCESSOR_TOKEN_FILE), or AUTH_DISABLED=true to run without authentication",
                });
            }
        };
        // Declared even when the token made it moot, so the catalog is complete.
        auth_disabled(source)?;
        declare_read_elsewhere(source);
        let config = Self {
            port,
            mongo,
            processing_min: Duration::from_millis(min),
            processing_max: Duration::from_millis(max),
            retry: RetryPolicy::from_source(source)?,
            sweep_interval: positive_millis(source, "SWEEP_INTERVAL_MS", 5_000)?,
            shutdown_grace: millis(source, "SHUTDOWN_GRACE_MS", 25_000)?,
            log_format: log_format(source)?,
            dev_mode: dev_mode(source)?,
            access,
            limits: HttpLimits::from_source(source)?,
            max_active_lanes: positive(source, "MAX_ACTIVE_LANES", 50_000)? as usize,
            max_merged_writes: max_merged_writes(source)?,
            tls: TlsFiles::from_source(source)?,
            lease,
            attempt_timeout: positive_millis(source, "ATTEMPT_TIMEOUT_MS", 60_000)?,
            on_failure: FailurePolicy::from_source(source)?,
            delivery: DeliverySettings::from_source(source)?,
            mllp_delivery: MllpDeliverySettings::from_source(source)?,
            retention: Retention::from_source(source, idempotency_ttl(source)?)?,
            metrics_port: number(source, "METRICS_PORT", 9465)?,
            metrics_bind: super::shared::metrics_bind(
                source,
                source.get("TLS_CERT_PATH").is_some(),
            )?,
            patient_logging: PatientLoggingSetting::from_source(source)?,
        };
        check_request_budget(&config.limits, &config.mongo)?;
        Ok(config)
    }
}

/// Beyond a few hundred, each document's lookup of its position in the id
/// list costs more than the commits merging saves (250 was slower than 100
/// when the choice by position was also a walk).
const MAX_MERGED_WRITES: u32 = 500;

fn max_merged_writes(source: &impl Source) -> Result<usize, ConfigError> {
    let name = "MERGED_WRITES_MAX";
    let value = positive(source, name, crate::store::DEFAULT_MAX_MERGED as u32)?;
    if value > MAX_MERGED_WRITES {
        return Err(super::invalid(
            name,
            &value.to_string(),
            &format!("must be at most {MAX_MERGED_WRITES}"),
        ));
    }
    Ok(value as usize)
}
