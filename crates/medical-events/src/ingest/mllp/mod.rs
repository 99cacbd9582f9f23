//! HL7 v2 over MLLP into ingest: listeners (one per configured client and
//! address), each connection answered one message at a time, every
//! positive ACK sent only after the message's durable write. The pure HL7
//! work (framing, reading, mapping, ACKs) is in [`crate::hl7`]; here are
//! the sockets, the store and the answers.
//!
//! - [`settings`]: `MLLP_LISTENERS` and the shared limits.
//! - [`listener`]: binding, accepting (allowlist, connection cap, TLS,
//!   keepalive), shutting down.
//! - [`session`]: one connection: frames in, answers out, in order.
//! - [`answer`]: one payload (a message or a batch) to its stored events
//!   and its answer.
//! - [`labels`]: the metrics of a listener.

mod answer;
mod labels;
pub mod listener;
mod session;
pub mod settings;

pub use listener::MllpListeners;
pub use settings::{ListenerSettings, MllpSettings};
