//! Shared core of the medical event services (`ingest` and `processor`).
//!
//! Accepted events are stored durably with a per-patient sequence number
//! ([`intake`], [`store`]); the processor walks each patient's events in that
//! order ([`scheduler`]) and records exactly one outcome per event.

pub mod auth;
pub mod bucket;
pub mod config;
pub mod event;
pub mod fleet;
pub mod hl7;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod notify;
pub mod privacy;
pub mod processing;
pub mod retry;
pub mod scheduler;
pub mod service_main;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod worker;
