//! Shared core of the medical event services (`ingest` and `processor`).
//!
//! Accepted events are stored durably with a per-patient sequence number
//! ([`intake`], [`store`]); a fleet of processors walks each patient's events
//! in that order ([`processor`]) and records exactly one outcome per event.
//!
//! # Module map
//!
//! | module | service | what |
//! |---|---|---|
//! | [`ingest`] | ingest | its routes (events, timelines, the outcome stream, the operator API), the HL7 v2 over MLLP listeners, the nudges to the processor, building and running it |
//! | [`processor`] | processor | its routes (`/queue`), the fleet (sessions, leases, epochs, balancing, the change stream), the per-patient lanes, the worker, the handlers (simulated work, delivery as JSON or over MLLP), building and running it |
//! | [`event`] | both | an event and its validation |
//! | [`hl7`] | both | HL7 v2 over MLLP: framing, reading (charsets, escapes), mapping a message to an event, duplicate keys, ACKs |
//! | [`store`] | both | MongoDB: indexes, query shapes, intake writes, the fenced lifecycle, sweeps, operator actions, retention, outcomes |
//! | [`intake`] | both | accepting an event: the per-patient lock, the write within the request's time limit (ingest's `POST /events`, the processor's `POST /queue`) |
//! | [`http`] | both | problem+json, body extraction, limits, connection hygiene, health, OpenAPI roots |
//! | [`config`] | both | settings from the environment: the source, errors, parsing helpers, each service's settings |
//! | [`server`], [`service_main`] | both | connecting, binding, serving; what each binary's `main` does |
//! | [`bucket`], [`auth`], [`privacy`], [`retry`], [`tls`], [`trace_context`], [`telemetry`], [`metrics`], [`shutdown`] | both | the small shared pieces |
//!
//! A service module never imports from the other service's module.

pub mod auth;
pub mod bucket;
pub mod config;
pub mod event;
pub mod hl7;
pub mod http;
pub mod ingest;
pub mod intake;
pub mod metrics;
pub mod privacy;
pub mod processor;
pub mod retry;
pub mod server;
pub mod service_main;
pub mod shutdown;
mod slots;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
