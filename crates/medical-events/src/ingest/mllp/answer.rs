//! One MLLP payload to its answer: each message read, mapped, stored
//! durably, and only then answered. A payload with several messages (a
//! batch) is answered with one batch of ACKs, one per message, in order.

use std::sync::Arc;

use chrono::Utc;
use tracing::{info, warn};

use super::labels::Labels;
use super::settings::ListenerSettings;
use crate::event::EventId;
use crate::hl7::{
    Ack, BatchError, Header, Hl7Message, MappedMessage, NotHl7, Outcome, ReadError, ReadOptions,
    Refusal, ack_wanted, build_ack, build_unreadable_ack, map_message, new_control_id, split_batch,
};
use crate::ingest::notify::ProcessorNotifier;
use crate::intake::{Intake, IntakeRequest};
use crate::store::{ControlIdQuery, EnqueueOutcome, EventSource, Hl7Origin, StoreError};
use crate::trace_context::TraceContext;

/// The store did not confirm a message's write: the sender gets no ACK and
/// the connection is closed, so it resends (many senders take an error
/// ACK as final, so one is never sent for a write that may have failed).
#[derive(Debug, thiserror::Error)]
pub(super) enum Unconfirmed {
    #[error("the store did not confirm the write: {0}")]
    Store(#[from] StoreError),
    #[error("the store gave an unexpected answer: {0}")]
    Unexpected(&'static str),
}

/// What a listener needs to turn payloads into stored events and answers.
pub(super) struct Answerer {
    pub intake: Arc<Intake>,
    pub notifier: ProcessorNotifier,
    pub settings: Arc<ListenerSettings>,
    pub max_message_bytes: usize,
    pub labels: Labels,
}

impl Answerer {
    /// The answer to a payload (its bytes, to be framed), if one is due.
    pub(super) async fn payload(&self, payload: &[u8]) -> Result<Option<Vec<u8>>, Unconfirmed> {
        let batch = match split_batch(payload) {
            Ok(batch) => batch,
            Err(error) => {
                warn!(listener = %self.settings.name, %error, "batch refused");
                self.labels.refused();
                let reason = match error {
                    BatchError::OutsideMessage { .. } => format!("not an HL7 message: {error}"),
                    _ => format!("the batch cannot be read: {error}"),
                };
                return Ok(Some(
                    self.sent(build_unreadable_ack(&reason, &new_control_id(), Utc::now()))
                        .to_bytes(),
                ));
            }
        };
        let read = batch.read_options(&self.settings.read);
        if !batch.is_batch() {
            let Some(message) = batch.messages.first() else {
                let reason = NotHl7("the frame holds no MSH segment");
                self.labels.refused();
                return Ok(Some(
                    self.sent(build_unreadable_ack(&reason, &new_control_id(), Utc::now()))
                        .to_bytes(),
                ));
            };
            let ack = self.message(message, payload.len(), &read).await?;
            return Ok(ack.map(|ack| ack.to_bytes()));
        }
        // One message at a time, in order: a failed one is answered in its
        // place and the others go on; an unconfirmed write ends the batch
        // unanswered (the sender resends it; what was stored replays).
        let mut acks = Vec::with_capacity(batch.messages.len());
        for message in &batch.messages {
            if let Some(ack) = self.message(message, message.len(), &read).await? {
                acks.push(ack);
            }
        }
        Ok(Some(batch_answer(batch.file_header.is_some(), &acks)))
    }

    /// The answer to a frame longer than `MLLP_MAX_MESSAGE_BYTES`.
    pub(super) fn oversized(&self, first_segment: Option<&[u8]>) -> Vec<u8> {
        self.labels.refused();
        let header =
            first_segment.and_then(|segment| Header::read(segment, &self.settings.read).ok());
        let ack = match header {
            Some(header) => self.answer(
                &header,
                Outcome::refused(Refusal::TooLarge {
                    limit: self.max_message_bytes,
                }),
            ),
            None => Some(build_unreadable_ack(
                &NotHl7("the frame is larger than the listener accepts"),
                &new_control_id(),
                Utc::now(),
            )),
        };
        ack.map(|ack| self.sent(ack).to_bytes()).unwrap_or_default()
    }

    /// One message: read, mapped, stored, answered (if an answer is wanted).
    async fn message(
        &self,
        bytes: &[u8],
        size: usize,
        read: &ReadOptions,
    ) -> Result<Option<Ack>, Unconfirmed> {
        let message = match Hl7Message::read(bytes, read) {
            Ok(message) => message,
            Err(ReadError::NotHl7(reason)) => {
                self.labels.refused();
                return Ok(Some(self.sent(build_unreadable_ack(
                    &reason,
                    &new_control_id(),
                    Utc::now(),
                ))));
            }
            Err(ReadError::Refused { header, refusal }) => return Ok(self.refuse(&header, refusal)),
        };
        let header = message.header();
        // Decoded to UTF-8 (as stored), a Latin-1 message grows by up to a
        // byte per character: the limit holds for what is stored, so a
        // message can never be one the database refuses for its size.
        if message.text().len() > self.max_message_bytes {
            return Ok(self.refuse(
                header,
                Refusal::TooLarge {
                    limit: self.max_message_bytes,
                },
            ));
        }
        if header.is_ack() {
            // An ACK sent to a listener answers nothing here: never ACK an ACK.
            return Ok(None);
        }
        match map_message(&message, &self.settings.mapping) {
            Err(refusal) => Ok(self.refuse(header, refusal)),
            Ok(mapped) => {
                self.store(mapped, size).await?;
                Ok(self.answer(header, Outcome::Accepted))
            }
        }
    }

    fn refuse(&self, header: &Header, refusal: Refusal) -> Option<Ack> {
        info!(
            listener = %self.settings.name,
            controlId = %header.control_id(),
            reason = %refusal,
            "HL7 message refused; nothing stored"
        );
        self.labels.refused();
        self.answer(header, Outcome::refused(refusal))
    }

    fn answer(&self, header: &Header, outcome: Outcome) -> Option<Ack> {
        ack_wanted(header, &outcome)
            .then(|| self.sent(build_ack(header, &outcome, &new_control_id(), Utc::now())))
    }

    fn sent(&self, ack: Ack) -> Ack {
        self.labels.ack(ack.code().as_str());
        ack
    }

    /// Stores the message durably; returns once the store confirmed it (or
    /// that it was stored before: a resend).
    async fn store(&self, mapped: MappedMessage, size: usize) -> Result<(), Unconfirmed> {
        let MappedMessage {
            event,
            key,
            fingerprint,
        } = mapped;
        let client = &self.settings.client;
        // Another message of this sender under this id, with other content,
        // makes this one a reused id: stored all the same, and marked.
        let earlier = self
            .intake
            .store()
            .by_control_id(&ControlIdQuery {
                control_id: &key.control_id,
                client: Some(client),
                sending_application: Some(&key.sending_application),
                sending_facility: Some(&key.sending_facility),
            })
            .await?;
        let reused = !earlier.is_empty()
            && earlier
                .iter()
                .all(|e| e.request_hash.as_deref() != Some(fingerprint.as_str()));
        let source = EventSource {
            kind: "mllp".to_owned(),
            listener: self.settings.name.clone(),
            control_id: key.control_id,
            sending_application: key.sending_application,
            sending_facility: key.sending_facility,
            reused_control_id: reused,
        };
        let trace = TraceContext::new_root();
        let request = IntakeRequest {
            event,
            event_id: EventId::new_time_ordered(),
            client: Arc::from(client.as_str()),
            key: None,
            deduplicate: false,
            traceparent: Some(trace.header_value()),
            size_hint: size,
            origin: Some(Hl7Origin {
                source,
                fingerprint,
            }),
            bounded_share: false,
        };
        let (outcome, request) = self.intake.submit(request, None).await?;
        let control_id = request
            .origin
            .as_ref()
            .map(|o| o.source.control_id.as_str())
            .unwrap_or_default();
        let patient = crate::privacy::patient(request.event.patient_id.as_str());
        match outcome {
            EnqueueOutcome::Accepted { event_id, seq } => {
                info!(eventId = %event_id, %patient, seq, client = %client, listener = %self.settings.name, controlId = %control_id, reusedControlId = reused, "HL7 message stored");
                metrics::counter!("events_accepted_total").increment(1);
                self.labels.stored();
                if reused {
                    warn!(eventId = %event_id, listener = %self.settings.name, controlId = %control_id, "control id reused with other content; stored as a new event");
                    self.labels.reused_control_id();
                }
                self.notifier.notify(event_id, &request.event, &trace);
                Ok(())
            }
            EnqueueOutcome::Replayed { event_id } => {
                info!(eventId = %event_id, listener = %self.settings.name, controlId = %control_id, "HL7 resend of a stored message; nothing new stored");
                metrics::counter!("events_replayed_total").increment(1);
                self.labels.resend();
                Ok(())
            }
            EnqueueOutcome::KeyReused => Err(Unconfirmed::Unexpected("a message key reused")),
            EnqueueOutcome::AlreadyStored => {
                Err(Unconfirmed::Unexpected("a fresh eventId already stored"))
            }
            EnqueueOutcome::OverShare { .. } => {
                Err(Unconfirmed::Unexpected("an MLLP sender's share bounded"))
            }
        }
    }
}

/// The answer to a batch: its ACKs in a batch of their own (BHS ... BTS,
/// inside FHS ... FTS when the payload was a file), each in its message's
/// character set and delimiters.
fn batch_answer(file: bool, acks: &[Ack]) -> Vec<u8> {
    let mut out = Vec::new();
    if file {
        out.extend_from_slice(b"FHS|^~\\&\r");
    }
    out.extend_from_slice(b"BHS|^~\\&\r");
    for ack in acks {
        out.extend_from_slice(&ack.to_bytes());
    }
    out.extend_from_slice(format!("BTS|{}\r", acks.len()).as_bytes());
    if file {
        out.extend_from_slice(b"FTS|1\r");
    }
    out
}
