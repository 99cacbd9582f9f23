//! HL7 v2 over MLLP, the pure core: no sockets, no database. The ingest
//! listener and the processor's delivery wire these together:
//!
//! 1. `mllp::MllpCodec` cuts the byte stream into frames.
//! 2. `batch::split_batch` splits a frame's payload into messages.
//! 3. `message::Hl7Message::read` reads a message's header, decodes it in
//!    its MSH-18 character set and normalizes its segment ends.
//! 4. `mapping::map_message` makes it the service's event (or a `Refusal`
//!    with an HL7 table 0357 code and the field it names), with the key and
//!    fingerprint that recognise a resend (`fingerprint`).
//! 5. `ack::build_ack` answers it, after the durable write for a positive
//!    ACK; `ack::parse_ack` reads the answer to a message we send.
//!
//! Every frame gets an answer the sender can match (MSA-2 = its MSH-10):
//! - `Frame::Message`: `ReadError::NotHl7` → `build_unreadable_ack` (AR);
//!   `ReadError::Refused { header, refusal }` and a `Refusal` from the
//!   mapping → `build_ack(header, &Outcome::refused(refusal), ..)`; stored
//!   → `Outcome::Accepted`. In enhanced mode `ack_wanted` says whether to
//!   answer; a message that is itself an ACK (`Header::is_ack`) is not.
//! - `Frame::Oversized { first_segment }`: `Header::read` of the first
//!   segment, answered with `Refusal::TooLarge` (without one: AR by
//!   `build_unreadable_ack`).
//! - `Frame::Interrupted`: the sender abandoned that frame; no answer.

pub mod ack;
pub mod batch;
pub mod charset;
pub mod fingerprint;
pub mod mapping;
pub mod message;
pub mod mllp;
pub mod refusal;
pub mod separators;
mod timestamp;

#[cfg(test)]
mod tests;

pub use ack::{
    Ack, AckCode, AckCondition, AckParseError, Outcome, ReceivedAck, ack_code, ack_wanted,
    build_ack, build_unreadable_ack, new_control_id, parse_ack,
};
pub use batch::{Batch, BatchError, split_batch};
pub use charset::Charset;
pub use fingerprint::{MessageKey, content_fingerprint, message_key};
pub use mapping::{MappedMessage, MappingConfig, map_message, version_supported};
pub use message::{Header, Hl7Message, NotHl7, Parsed, ReadError, ReadOptions};
pub use mllp::{DEFAULT_MAX_MESSAGE_BYTES, Frame, MllpCodec, MllpError};
pub use refusal::{ErrorCode, Location, Refusal, Severity};
pub use separators::Separators;
