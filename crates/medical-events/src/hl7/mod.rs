//! HL7 v2 over MLLP, the pure core: no sockets, no database. The ingest
//! listener and the processor's delivery wire these together.

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
