//! The ingest service: `POST /events` (validated, stored durably with the
//! patient's next sequence number, answered `202`), the event status and
//! timelines, the live outcome stream, the operator API, and the nudge that
//! tells a processor an event is waiting.

pub mod admin;
pub mod app;
pub mod mllp;
pub mod notify;
pub mod patients;
pub mod routes;
pub mod stream;

pub use app::IngestApp;
