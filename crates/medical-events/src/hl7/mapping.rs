//! A message as the service's event. The event is built by `NewEvent::parse`
//! of the same JSON an HTTP client would send, so an HL7 event obeys exactly
//! the rules of an HTTP one (patientId, type, ts, data).
//!
//! - patientId: CX.1 of the first PID-3 repetition whose CX.5 is `MR` (and
//!   whose CX.4.1 is the configured assigning authority, if one is), else of
//!   the first repetition; escapes decoded, trailing blanks dropped (HL7's ST
//!   makes them optional), nothing added.
//! - type: MSH-9.1 `^` MSH-9.2 (`ADT^A01`), whatever the sender's delimiters.
//! - ts: when the event happened: EVN-2 for ADT, the first OBR-7 for ORU,
//!   MSH-7 otherwise or when that field is empty.
//! - data: `{"hl7": {...}}` with `message` (the decoded text, segments
//!   ended by CR), `controlId`, `sendingApplication`, `sendingFacility`,
//!   `messageType` (all of MSH-9), `version`, `processingId`, `charset`,
//!   `eventTimeField` (where ts came from), and when present
//!   `patientIdAuthority` (CX.4.1), `patientIdType` (CX.5) and
//!   `mergedPatientId` (MRG-1). Patient fields (name, birth date...) stay
//!   in the text: copying them out would put identifying data in a second
//!   place for no rule that needs it.
//!
//! One event belongs to one patient: a message with several PID segments
//! (A17 swaps, repeated patient groups) is refused, not split. A merge
//! (A40) is the event of the surviving patient (PID-3); the merged-away id
//! (MRG-1) is recorded in `data` and nothing moves between patients.

use chrono::SecondsFormat;
use chrono_tz::Tz;
use hl7_parser::message::{Field, Segment};
use serde_json::{Map, Value, json};

use super::fingerprint::{MessageKey, content_fingerprint, message_key};
use super::message::{Hl7Message, Parsed};
use super::refusal::{Location, Refusal};
use super::timestamp;
use crate::event::{FieldError, NewEvent};

/// Per-listener mapping settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingConfig {
    /// The CX.4.1 an `MR` identifier must carry to be chosen, if set.
    pub assigning_authority: Option<String>,
    /// The zone of timestamps sent without an offset.
    pub time_zone: Tz,
    /// MSH-11.1 values accepted; production (`P`) only by default.
    pub processing_ids: Vec<String>,
    /// Message types accepted, as `ADT^A01` or `ADT` (all its events);
    /// `None` accepts every type but ACK.
    pub message_types: Option<Vec<String>>,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            assigning_authority: None,
            time_zone: Tz::UTC,
            processing_ids: vec!["P".to_owned()],
            message_types: None,
        }
    }
}

/// A message mapped to an event, with what the caller needs to store it
/// idempotently.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedMessage {
    pub event: NewEvent,
    /// MSH-3, MSH-4, MSH-10: the sender's id of the message.
    pub key: MessageKey,
    /// The content apart from MSH-7 (see `fingerprint`).
    pub fingerprint: String,
}

/// The HL7 versions accepted: 2.1 to 2.8 and their point releases
/// (`2.3.1`, `2.5.1`, `2.8.2`). The fields read here mean the same in all.
pub fn version_supported(version: &str) -> bool {
    let minor_ok = |minor: &str| matches!(minor, "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8");
    let point_ok = |point: &str| !point.is_empty() && point.bytes().all(|b| b.is_ascii_digit());
    match version.split('.').collect::<Vec<_>>().as_slice() {
        ["2", minor] => minor_ok(minor),
        ["2", minor, point] => minor_ok(minor) && point_ok(point),
        _ => false,
    }
}

/// Maps a message, or says why it cannot be: header problems first (they
/// are `AR`), then the content.
pub fn map_message(message: &Hl7Message, config: &MappingConfig) -> Result<MappedMessage, Refusal> {
    let header = message.header();
    check_header(message, config)?;

    let parsed = message.parse()?;
    let pids: Vec<&Segment> = parsed.segments("PID").collect();
    let pid = match pids.as_slice() {
        [] => {
            return Err(Refusal::MissingField {
                location: Location::field("PID", 3),
            });
        }
        [pid] => *pid,
        several => {
            return Err(Refusal::SeveralPatients {
                pid_segments: several.len(),
            });
        }
    };
    let pid_3 = Location::field("PID", 3);
    let patient = identifier(&parsed, Parsed::field(pid, 3), config, pid_3.clone())?
        .ok_or(Refusal::MissingField { location: pid_3 })?;
    let merged = match parsed.segments("MRG").next() {
        Some(mrg) => identifier(
            &parsed,
            Parsed::field(mrg, 1),
            config,
            Location::field("MRG", 1),
        )
        .unwrap_or(None),
        None => None,
    };
    let (ts_location, ts) = event_time(message, &parsed, config)?;

    let mut hl7 = Map::new();
    let mut put = |key: &str, value: String| {
        hl7.insert(key.to_owned(), Value::String(value));
    };
    put("message", message.text().to_owned());
    put("controlId", header.control_id());
    put("sendingApplication", header.canonical(3));
    put("sendingFacility", header.canonical(4));
    put("messageType", header.canonical(9));
    put("version", header.version());
    put("processingId", header.processing_id());
    put("charset", message.charset().hl7_name().to_owned());
    put("eventTimeField", ts_location.to_string());
    if !patient.authority.is_empty() {
        put("patientIdAuthority", patient.authority.clone());
    }
    if !patient.type_code.is_empty() {
        put("patientIdType", patient.type_code.clone());
    }
    if let Some(merged) = merged {
        put("mergedPatientId", merged.id);
    }

    let body = json!({
        "patientId": patient.id,
        "type": header.message_type(),
        "ts": ts,
        "data": { "hl7": hl7 },
    });
    let event = NewEvent::parse(&body)
        .map_err(|errors| refusal_for(errors, patient.location, ts_location))?;
    Ok(MappedMessage {
        event,
        key: message_key(header),
        fingerprint: content_fingerprint(message),
    })
}

/// MSH-12, MSH-11, MSH-9 and MSH-10: whether this receiver takes the
/// message at all.
fn check_header(message: &Hl7Message, config: &MappingConfig) -> Result<(), Refusal> {
    let header = message.header();
    let missing = |field| Refusal::MissingField {
        location: Location::field("MSH", field),
    };
    let version = header.version();
    if version.is_empty() {
        return Err(missing(12));
    }
    if !version_supported(&version) {
        return Err(Refusal::UnsupportedVersion { version });
    }
    let processing_id = header.processing_id();
    if processing_id.is_empty() {
        return Err(missing(11));
    }
    if !config.processing_ids.contains(&processing_id) {
        return Err(Refusal::UnsupportedProcessingId { processing_id });
    }
    let code = header.text(9, 1);
    if code.trim().is_empty() {
        return Err(missing(9));
    }
    let message_type = header.message_type();
    let listed = |types: &Vec<String>| {
        types
            .iter()
            .any(|accepted| *accepted == message_type || *accepted == code)
    };
    if header.is_ack() || config.message_types.as_ref().is_some_and(|t| !listed(t)) {
        return Err(Refusal::UnsupportedMessageType { message_type });
    }
    if header.control_id().trim().is_empty() {
        return Err(missing(10));
    }
    Ok(())
}

/// The identifier chosen from a CX field (PID-3, MRG-1).
#[derive(Debug, Clone)]
struct Identifier {
    id: String,
    authority: String,
    type_code: String,
    location: Location,
}

/// Chooses from the repetitions of a CX `field` at `location`. `Ok(None)`
/// when the field is empty; a chosen repetition with an empty CX.1 is a
/// missing field.
fn identifier(
    parsed: &Parsed<'_>,
    field: Option<&Field<'_>>,
    config: &MappingConfig,
    location: Location,
) -> Result<Option<Identifier>, Refusal> {
    let Some(field) = field.filter(|field| !field.raw_value().is_empty()) else {
        return Ok(None);
    };
    let text = |raw: Option<&str>| parsed.text(raw.unwrap_or_default()).into_owned();
    let candidates: Vec<Identifier> = field
        .repeats()
        .enumerate()
        .map(|(index, repeat)| Identifier {
            // CX.1 is an ST: trailing blanks are optional (HL7 v2 2.A.74),
            // so a fixed-width sender's padding does not make another patient.
            id: text(repeat.component(1).map(|c| c.raw_value()))
                .trim_end()
                .to_owned(),
            authority: text(
                repeat
                    .component(4)
                    .and_then(|c| c.subcomponent(1))
                    .map(|s| s.raw_value()),
            )
            .trim()
            .to_owned(),
            type_code: text(repeat.component(5).map(|c| c.raw_value()))
                .trim()
                .to_owned(),
            location: location
                .clone()
                .with_repetition(index + 1)
                .with_component(1),
        })
        .collect();
    let wanted = |candidate: &&Identifier| {
        candidate.type_code == "MR"
            && config
                .assigning_authority
                .as_ref()
                .is_none_or(|wanted| *wanted == candidate.authority)
    };
    let Some(chosen) = candidates.iter().find(wanted).or(candidates.first()) else {
        return Ok(None);
    };
    // `""` is HL7's explicit null.
    if chosen.id.is_empty() || chosen.id == "\"\"" {
        return Err(Refusal::MissingField {
            location: chosen.location.clone(),
        });
    }
    Ok(Some(chosen.clone()))
}

/// The event's time as RFC 3339 (what `NewEvent` reads), and the field it
/// came from.
fn event_time(
    message: &Hl7Message,
    parsed: &Parsed<'_>,
    config: &MappingConfig,
) -> Result<(Location, String), Refusal> {
    let code = message.header().text(9, 1);
    let preferred = match code.trim() {
        "ADT" => Some(("EVN", 2)),
        "ORU" => Some(("OBR", 7)),
        _ => None,
    };
    let value_of = |segment: &str, field: usize| -> String {
        parsed
            .segments(segment)
            .next()
            .and_then(|s| Parsed::field(s, field))
            .and_then(|f| f.component(1))
            .map(|c| parsed.text(c.raw_value()).trim().to_owned())
            .filter(|value| !value.is_empty() && value != "\"\"")
            .unwrap_or_default()
    };
    let (location, value) = preferred
        .map(|(segment, field)| (Location::field(segment, field), value_of(segment, field)))
        .filter(|(_, value)| !value.is_empty())
        .unwrap_or_else(|| (Location::field("MSH", 7), value_of("MSH", 7)));
    if value.is_empty() {
        return Err(Refusal::MissingField { location });
    }
    let instant =
        timestamp::parse(&value, config.time_zone).map_err(|detail| Refusal::InvalidField {
            location: location.clone(),
            detail: detail.to_owned(),
        })?;
    Ok((
        location,
        instant.to_rfc3339_opts(SecondsFormat::Millis, true),
    ))
}

/// The event rules' verdict in HL7 terms: which field the rule is about.
fn refusal_for(errors: Vec<FieldError>, patient: Location, ts: Location) -> Refusal {
    let Some(FieldError { field, message }) = errors.into_iter().next() else {
        return Refusal::Internal {
            detail: "the event was refused without a reason".to_owned(),
        };
    };
    let location = match field.as_str() {
        "patientId" => patient,
        "type" => Location::field("MSH", 9),
        "ts" => ts,
        _ => {
            return Refusal::Internal {
                detail: format!("{field} {message}"),
            };
        }
    };
    Refusal::InvalidField {
        location,
        detail: message,
    }
}
