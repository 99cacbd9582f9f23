//! HL7 v2 over MLLP, the pure core: no sockets, no database. The ingest
//! listener and the processor's delivery wire these together.

pub mod mllp;

pub use mllp::{DEFAULT_MAX_MESSAGE_BYTES, Frame, MllpCodec, MllpError};
