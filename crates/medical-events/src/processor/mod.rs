//! The processor service: a fleet of instances sharing the patients'
//! buckets by lease ([`fleet`]), one lane per patient with work walking its
//! events in order ([`scheduler`]), started and stopped by the [`worker`];
//! the work itself ([`processing`]: simulated, or a delivery downstream);
//! `POST /queue` ([`routes`]).

pub mod app;
pub mod fleet;
pub mod mllp_delivery;
pub mod processing;
pub mod routes;
pub mod scheduler;
pub mod worker;

pub use app::ProcessorApp;
