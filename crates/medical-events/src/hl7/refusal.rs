//! Why a message is not accepted, in the terms an ACK needs: an HL7 table
//! 0357 code, the location it names (ERR), and whether it is an error in
//! the content (`AE`/`CE`) or a refusal of the message as such (`AR`/`CR`).
//!
//! Refusal texts never quote field values: they end up in logs and ACKs,
//! and a value may be a patient identifier.

use std::fmt;

use super::charset::Charset;

/// The HL7 table 0357 codes this module answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    SegmentSequenceError,
    RequiredFieldMissing,
    DataTypeError,
    TableValueNotFound,
    UnsupportedMessageType,
    UnsupportedEventCode,
    UnsupportedProcessingId,
    UnsupportedVersionId,
    ApplicationInternalError,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            Self::SegmentSequenceError => 100,
            Self::RequiredFieldMissing => 101,
            Self::DataTypeError => 102,
            Self::TableValueNotFound => 103,
            Self::UnsupportedMessageType => 200,
            Self::UnsupportedEventCode => 201,
            Self::UnsupportedProcessingId => 202,
            Self::UnsupportedVersionId => 203,
            Self::ApplicationInternalError => 207,
        }
    }

    /// The table's text for the code, as ERR-3.2 carries it.
    pub fn text(self) -> &'static str {
        match self {
            Self::SegmentSequenceError => "Segment sequence error",
            Self::RequiredFieldMissing => "Required field missing",
            Self::DataTypeError => "Data type error",
            Self::TableValueNotFound => "Table value not found",
            Self::UnsupportedMessageType => "Unsupported message type",
            Self::UnsupportedEventCode => "Unsupported event code",
            Self::UnsupportedProcessingId => "Unsupported processing id",
            Self::UnsupportedVersionId => "Unsupported version id",
            Self::ApplicationInternalError => "Application internal error",
        }
    }
}

/// Where a problem is, as ERR names it: a segment (and which occurrence of
/// it), optionally a field, its repetition and component. All 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub segment: String,
    pub sequence: usize,
    pub field: Option<usize>,
    pub repetition: Option<usize>,
    pub component: Option<usize>,
}

impl Location {
    /// A field of the first occurrence of a segment, e.g. `PID-3`.
    pub fn field(segment: &str, field: usize) -> Self {
        Self {
            segment: segment.to_owned(),
            sequence: 1,
            field: Some(field),
            repetition: None,
            component: None,
        }
    }

    /// A whole segment, e.g. the second `PID`.
    pub fn segment(segment: &str, sequence: usize) -> Self {
        Self {
            segment: segment.to_owned(),
            sequence,
            field: None,
            repetition: None,
            component: None,
        }
    }

    pub fn in_sequence(mut self, sequence: usize) -> Self {
        self.sequence = sequence;
        self
    }

    pub fn with_repetition(mut self, repetition: usize) -> Self {
        self.repetition = Some(repetition);
        self
    }

    pub fn with_component(mut self, component: usize) -> Self {
        self.component = Some(component);
        self
    }
}

/// `PID-3`, `PID[2]-3`, `PID-3(2).1`: the usual way to write a location.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segment)?;
        if self.sequence > 1 {
            write!(f, "[{}]", self.sequence)?;
        }
        if let Some(field) = self.field {
            write!(f, "-{field}")?;
            if let Some(repetition) = self.repetition.filter(|r| *r > 1) {
                write!(f, "({repetition})")?;
            }
            if let Some(component) = self.component {
                write!(f, ".{component}")?;
            }
        }
        Ok(())
    }
}

/// How the refusal is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The content is wrong: `AE` (original mode) or `CE` (enhanced mode).
    Error,
    /// The message is not one this receiver takes (type, version,
    /// processing id, character set): `AR` or `CR`.
    Reject,
}

/// Why a message that has an HL7 header cannot become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("MSH-18 names a character set this listener does not read")]
    UnsupportedCharset { declared: String },
    #[error("the message is not valid {charset} text")]
    Undecodable { charset: Charset },
    #[error("segment {location} cannot be parsed: {detail}")]
    Malformed { location: Location, detail: String },
    #[error("{location} is required")]
    MissingField { location: Location },
    #[error("{location}: {detail}")]
    InvalidField { location: Location, detail: String },
    #[error("message type {message_type} is not accepted here")]
    UnsupportedMessageType { message_type: String },
    #[error("HL7 version {version} is not accepted (2.1 to 2.8 are)")]
    UnsupportedVersion { version: String },
    #[error("processing id {processing_id} is not accepted here")]
    UnsupportedProcessingId { processing_id: String },
    /// An event belongs to one patient: a message carrying several (ADT^A17
    /// swaps, repeated patient groups) cannot be split without guessing.
    #[error("the message names {pid_segments} patients (PID segments); an event has exactly one")]
    SeveralPatients { pid_segments: usize },
    /// A frame longer than the listener's limit (see `mllp`).
    #[error("the message is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// What the receiver could not do with a message that is not at fault
    /// (the listener's own failures may be answered with it too).
    #[error("the message cannot be stored: {detail}")]
    Internal { detail: String },
}

impl Refusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedCharset { .. } => ErrorCode::TableValueNotFound,
            Self::Undecodable { .. } | Self::InvalidField { .. } => ErrorCode::DataTypeError,
            Self::Malformed { .. } | Self::SeveralPatients { .. } => {
                ErrorCode::SegmentSequenceError
            }
            Self::MissingField { .. } => ErrorCode::RequiredFieldMissing,
            Self::UnsupportedMessageType { .. } => ErrorCode::UnsupportedMessageType,
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersionId,
            Self::UnsupportedProcessingId { .. } => ErrorCode::UnsupportedProcessingId,
            // Table 0357 has no code for an oversized message; the
            // catch-all misleads less than a field-level code would.
            Self::TooLarge { .. } | Self::Internal { .. } => ErrorCode::ApplicationInternalError,
        }
    }

    pub fn location(&self) -> Option<Location> {
        match self {
            Self::UnsupportedCharset { .. } | Self::Undecodable { .. } => {
                Some(Location::field("MSH", 18))
            }
            Self::Malformed { location, .. }
            | Self::MissingField { location }
            | Self::InvalidField { location, .. } => Some(location.clone()),
            Self::UnsupportedMessageType { .. } => Some(Location::field("MSH", 9)),
            Self::UnsupportedVersion { .. } => Some(Location::field("MSH", 12)),
            Self::UnsupportedProcessingId { .. } => Some(Location::field("MSH", 11)),
            Self::SeveralPatients { .. } => Some(Location::segment("PID", 2)),
            Self::TooLarge { .. } | Self::Internal { .. } => None,
        }
    }

    /// The default answer; the listener may choose otherwise.
    pub fn severity(&self) -> Severity {
        match self {
            Self::UnsupportedCharset { .. }
            | Self::UnsupportedMessageType { .. }
            | Self::UnsupportedVersion { .. }
            | Self::UnsupportedProcessingId { .. } => Severity::Reject,
            _ => Severity::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_read_the_usual_way() {
        assert_eq!(Location::field("PID", 3).to_string(), "PID-3");
        assert_eq!(
            Location::field("PID", 3)
                .in_sequence(2)
                .with_repetition(2)
                .with_component(1)
                .to_string(),
            "PID[2]-3(2).1"
        );
        assert_eq!(Location::segment("ZZZ", 1).to_string(), "ZZZ");
    }

    #[test]
    fn header_problems_are_rejections_and_content_problems_errors() {
        let missing = Refusal::MissingField {
            location: Location::field("PID", 3),
        };
        assert_eq!(missing.code().code(), 101);
        assert_eq!(missing.severity(), Severity::Error);
        assert_eq!(missing.to_string(), "PID-3 is required");
        let version = Refusal::UnsupportedVersion {
            version: "3.0".into(),
        };
        assert_eq!(version.code().code(), 203);
        assert_eq!(version.severity(), Severity::Reject);
    }
}
