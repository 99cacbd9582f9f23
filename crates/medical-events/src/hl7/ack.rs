//! ACKs: the answer to a received message, and reading the answer to one we
//! sent (the processor's MLLP delivery).
//!
//! An ACK is addressed with the sender's own delimiters: MSH-3/4 and MSH-5/6
//! swapped, MSH-9 `ACK^<trigger>^ACK`, MSH-11/12 copied, MSA-2 the
//! message's MSH-10 as sent. A positive ACK says the message is stored: the
//! listener builds one only after the durable write.
//!
//! Original mode (MSH-15 and MSH-16 empty) answers `AA`, `AE` (content
//! errors) or `AR` (refused: type, version, processing id). Enhanced mode
//! answers with commit ACKs `CA`, `CE`, `CR`, when MSH-15 asks for one
//! (`ack_wanted`); the application ACK of that mode is a later message.
//! Errors carry an ERR segment in the form of the message's version: ELD in
//! ERR-1 up to 2.4, ERL/CWE in ERR-2/3 (with severity and text) from 2.5.

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;

use super::charset::Charset;
use super::message::{Header, Hl7Message, ReadError, ReadOptions, component};
use super::refusal::{ErrorCode, Location, Refusal, Severity};
use super::separators::Separators;

/// MSA-1, HL7 table 0008.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    ApplicationAccept,
    ApplicationError,
    ApplicationReject,
    CommitAccept,
    CommitError,
    CommitReject,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApplicationAccept => "AA",
            Self::ApplicationError => "AE",
            Self::ApplicationReject => "AR",
            Self::CommitAccept => "CA",
            Self::CommitError => "CE",
            Self::CommitReject => "CR",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        [
            Self::ApplicationAccept,
            Self::ApplicationError,
            Self::ApplicationReject,
            Self::CommitAccept,
            Self::CommitError,
            Self::CommitReject,
        ]
        .into_iter()
        .find(|candidate| candidate.as_str() == code)
    }

    /// `AA` or `CA`: the receiver has the message.
    pub fn is_accept(self) -> bool {
        matches!(self, Self::ApplicationAccept | Self::CommitAccept)
    }
}

/// What became of a message, as far as its ACK is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored durably.
    Accepted,
    /// Not stored, for this reason, answered as an error or a rejection.
    Refused {
        refusal: Refusal,
        severity: Severity,
    },
}

impl Outcome {
    /// Refused with the refusal's own severity.
    pub fn refused(refusal: Refusal) -> Self {
        let severity = refusal.severity();
        Self::Refused { refusal, severity }
    }
}

/// When the sender wants an ACK, HL7 table 0155 (MSH-15, MSH-16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCondition {
    /// `AL`
    Always,
    /// `NE`
    Never,
    /// `ER`: only for errors and rejections.
    OnError,
    /// `SU`: only when accepted.
    OnSuccess,
}

impl AckCondition {
    /// An empty or unknown value is read as `AL`: an unasked ACK costs the
    /// sender nothing, a missing one makes it resend.
    pub fn from_field(value: &str) -> Self {
        match value.trim() {
            "NE" => Self::Never,
            "ER" => Self::OnError,
            "SU" => Self::OnSuccess,
            _ => Self::Always,
        }
    }

    pub fn wants(self, outcome: &Outcome) -> bool {
        let accepted = matches!(outcome, Outcome::Accepted);
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::OnError => !accepted,
            Self::OnSuccess => accepted,
        }
    }
}

/// Whether the listener should answer at all: always in original mode; in
/// enhanced mode as MSH-15 (accept acknowledgment type) asks.
pub fn ack_wanted(header: &Header, outcome: &Outcome) -> bool {
    !header.enhanced_mode() || AckCondition::from_field(header.field(15)).wants(outcome)
}

/// MSA-1 for an outcome in the message's acknowledgment mode.
pub fn ack_code(header: &Header, outcome: &Outcome) -> AckCode {
    let enhanced = header.enhanced_mode();
    match (outcome, enhanced) {
        (Outcome::Accepted, false) => AckCode::ApplicationAccept,
        (Outcome::Accepted, true) => AckCode::CommitAccept,
        (Outcome::Refused { severity, .. }, false) => match severity {
            Severity::Error => AckCode::ApplicationError,
            Severity::Reject => AckCode::ApplicationReject,
        },
        (Outcome::Refused { severity, .. }, true) => match severity {
            Severity::Error => AckCode::CommitError,
            Severity::Reject => AckCode::CommitReject,
        },
    }
}

/// An ACK ready to be framed (`mllp`) and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    code: AckCode,
    text: String,
    charset: Charset,
}

impl Ack {
    pub fn code(&self) -> AckCode {
        self.code
    }

    /// The ACK's segments, each ended by CR.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The set the ACK is written in: the message's, when it was readable.
    pub fn charset(&self) -> Charset {
        self.charset
    }

    /// The bytes to send, in the character set of the message answered.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.charset.encode(&self.text)
    }
}

/// A fresh MSH-10 for an ACK: 20 letters and digits (the ST length limit of
/// older versions; about 119 random bits).
pub fn new_control_id() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(20)
        .map(char::from)
        .collect()
}

/// The ACK of a message whose header could be read.
pub fn build_ack(header: &Header, outcome: &Outcome, control_id: &str, now: DateTime<Utc>) -> Ack {
    let separators = header.separators();
    let code = ack_code(header, outcome);
    let trigger = header.component(9, 2);
    let c = separators.component;
    let message_type = if trigger.is_empty() {
        "ACK".to_owned()
    } else {
        format!("ACK{c}{trigger}{c}ACK")
    };
    // MSH-18 is echoed only when it named a set the ACK is then written in.
    let (charset, msh_18) = match header.charset() {
        Ok(charset) => (charset, header.field(18)),
        Err(_) => (Charset::Ascii, ""),
    };
    let msh = [
        "MSH",
        &separators.encoding_characters(),
        header.field(5),
        header.field(6),
        header.field(3),
        header.field(4),
        &timestamp(now),
        "",
        &message_type,
        &separators.encode(control_id),
        header.field(11),
        header.field(12),
        "",
        "",
        "",
        "",
        "",
        msh_18,
    ];
    let legacy = legacy_err(&header.version());
    let mut text = segment(&msh, separators.field);
    let mut msa = vec![
        "MSA".to_owned(),
        code.as_str().to_owned(),
        header.field(10).to_owned(),
    ];
    if let Outcome::Refused { refusal, .. } = outcome {
        if legacy {
            msa.push(separators.encode(&refusal.to_string()));
        }
        text.push_str(&segment(&msa, separators.field));
        text.push_str(&err_segment(
            separators,
            legacy,
            refusal.code(),
            refusal.location().as_ref(),
            &refusal.to_string(),
        ));
    } else {
        text.push_str(&segment(&msa, separators.field));
    }
    Ack {
        code,
        text,
        charset,
    }
}

/// The answer to a frame that cannot be read (not HL7, or a batch whose
/// structure is broken): `AR` with `reason` in ERR-8, the default
/// delimiters, an empty MSA-2 (there is no control id to echo).
pub fn build_unreadable_ack(
    reason: &dyn std::fmt::Display,
    control_id: &str,
    now: DateTime<Utc>,
) -> Ack {
    let separators = Separators::default();
    let msh = [
        "MSH",
        &separators.encoding_characters(),
        "",
        "",
        "",
        "",
        &timestamp(now),
        "",
        "ACK",
        &separators.encode(control_id),
        "P",
        "2.5",
    ];
    let mut text = segment(&msh, separators.field);
    text.push_str("MSA|AR|\r");
    text.push_str(&err_segment(
        &separators,
        false,
        ErrorCode::SegmentSequenceError,
        Some(&Location::segment("MSH", 1)),
        &reason.to_string(),
    ));
    Ack {
        code: AckCode::ApplicationReject,
        text,
        charset: Charset::Ascii,
    }
}

/// The ERR segment: ELD in ERR-1 up to 2.4; from 2.5 the location (ERL) in
/// ERR-2, the code (CWE) in ERR-3, severity E in ERR-4, the text in ERR-8.
fn err_segment(
    separators: &Separators,
    legacy: bool,
    code: ErrorCode,
    location: Option<&Location>,
    text: &str,
) -> String {
    let (c, s) = (separators.component, separators.subcomponent);
    let number = |n: Option<usize>| n.map(|n| n.to_string()).unwrap_or_default();
    let (segment_id, sequence, field) = match location {
        Some(location) => (
            separators.encode(&location.segment),
            location.sequence.to_string(),
            number(location.field),
        ),
        None => Default::default(),
    };
    let error = code.code();
    let error_text = code.text();
    if legacy {
        let eld = format!("{segment_id}{c}{sequence}{c}{field}{c}{error}{s}{error_text}{s}HL70357");
        return segment(&["ERR", &eld], separators.field);
    }
    let mut erl = [
        segment_id,
        sequence,
        field,
        number(location.and_then(|l| l.repetition.or(l.component.map(|_| 1)))),
        number(location.and_then(|l| l.component)),
    ]
    .to_vec();
    while erl.last().is_some_and(String::is_empty) {
        erl.pop();
    }
    let erl = erl.join(&c.to_string());
    let cwe = format!("{error}{c}{error_text}{c}HL70357");
    segment(
        &[
            "ERR",
            "",
            &erl,
            &cwe,
            "E",
            "",
            "",
            "",
            &separators.encode(text),
        ],
        separators.field,
    )
}

/// ERR-1 (ELD) was the form up to v2.4; an unreadable version gets the
/// current form.
fn legacy_err(version: &str) -> bool {
    matches!(
        version.split('.').take(2).collect::<Vec<_>>().as_slice(),
        ["2", "1" | "2" | "3" | "4"]
    )
}

/// A segment from its fields (`fields[0]` the name), trailing empty fields
/// left out, ended by CR. For MSH, `fields[1]` is MSH-2: MSH-1 is the
/// separator between them.
fn segment<S: AsRef<str>>(fields: &[S], field_separator: char) -> String {
    let used = fields
        .iter()
        .rposition(|field| !field.as_ref().is_empty())
        .map_or(0, |last| last + 1);
    let mut text = String::new();
    for (index, field) in fields[..used].iter().enumerate() {
        if index > 0 {
            text.push(field_separator);
        }
        text.push_str(field.as_ref());
    }
    text.push('\r');
    text
}

/// MSH-7 of an ACK: UTC with milliseconds and an explicit offset.
fn timestamp(now: DateTime<Utc>) -> String {
    now.format("%Y%m%d%H%M%S%.3f+0000").to_string()
}

/// An ACK as the delivery reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedAck {
    pub code: AckCode,
    /// MSA-2: the MSH-10 of the message acknowledged.
    pub control_id: String,
    /// MSA-3 or ERR-8, for the log; empty when there is none.
    pub text: String,
}

/// Why bytes received as an ACK are not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckParseError {
    #[error(transparent)]
    Unreadable(#[from] ReadError),
    #[error("the ACK cannot be parsed: {0}")]
    Malformed(Refusal),
    #[error("the ACK has no MSA segment")]
    NoMsa,
    #[error("the ACK has several MSA segments")]
    SeveralMsa,
    #[error("MSA-1 is not an acknowledgment code")]
    UnknownCode,
}

/// Reads an ACK's payload (after MLLP framing): its code and MSA-2.
pub fn parse_ack(bytes: &[u8], options: &ReadOptions) -> Result<ReceivedAck, AckParseError> {
    let message = Hl7Message::read(bytes, options)?;
    let parsed = message.parse().map_err(AckParseError::Malformed)?;
    let msa = {
        let mut segments = parsed.segments("MSA");
        let msa = segments.next().ok_or(AckParseError::NoMsa)?;
        if segments.next().is_some() {
            return Err(AckParseError::SeveralMsa);
        }
        msa
    };
    let separators = parsed.separators();
    let field = |n: usize| msa.field(n).map(|f| f.raw_value()).unwrap_or_default();
    let code = AckCode::parse(separators.decode(component(field(1), separators, 1)).trim())
        .ok_or(AckParseError::UnknownCode)?;
    let control_id = separators
        .decode(component(field(2), separators, 1))
        .into_owned();
    let mut text = separators.decode(field(3)).into_owned();
    if text.is_empty() {
        if let Some(err) = parsed.segments("ERR").next() {
            text = separators
                .decode(err.field(8).map(|f| f.raw_value()).unwrap_or_default())
                .into_owned();
        }
    }
    Ok(ReceivedAck {
        code,
        control_id,
        text,
    })
}
