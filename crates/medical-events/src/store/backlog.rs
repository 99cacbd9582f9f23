//! The reads behind the per-client bound on a patient's unfinished events
//! (`MAX_UNFINISHED_PER_CLIENT_PATIENT`, see `intake.rs`). Both walk the
//! `{status, bucket, patientId, seq}` index within one patient; the client
//! is filtered here, not in the query, so every server keeps that plan.

use futures_util::TryStreamExt;
use mongodb::bson::{DateTime, Document};
use mongodb::options::FindOptions;

use super::deadline::Bounded;
use super::enqueue::{IntakePolicy, KeyKind, Submission, intake_key};
use super::error::StoreError;
use super::{Store, shapes};

impl Store {
    /// The sequence number of the patient's oldest unfinished event, if any.
    pub async fn oldest_unfinished_seq(
        &self,
        bucket: i32,
        patient: &str,
    ) -> Result<Option<i64>, StoreError> {
        let shape = shapes::oldest_unfinished(bucket, patient);
        self.read_seq(shape, "reading a patient's oldest unfinished event")
            .await
    }

    /// How many of the patient's unfinished events `client` sent, counted
    /// up to `stop_at` (the walk ends there: the caller only needs to know
    /// whether the bound is reached).
    pub async fn unfinished_of_client(
        &self,
        bucket: i32,
        patient: &str,
        client: &str,
        stop_at: usize,
    ) -> Result<usize, StoreError> {
        let shape = shapes::unfinished_senders(bucket, patient);
        let operation = "counting a client's unfinished events of a patient";
        let walk = async {
            let mut cursor = self
                .queued
                .clone_with_type::<Document>()
                .find(shape.filter)
                .with_options(
                    FindOptions::builder()
                        .projection(shape.projection)
                        .batch_size(1_000)
                        .max_time(self.op_timeout)
                        .build(),
                )
                .await?;
            let mut own = 0;
            while own < stop_at {
                match cursor.try_next().await? {
                    Some(event) if event.get_str("client") == Ok(client) => own += 1,
                    Some(_) => {}
                    None => break,
                }
            }
            Ok::<usize, mongodb::error::Error>(own)
        };
        walk.bounded(operation, self.op_timeout).await
    }

    /// Whether the submission's intake key is held by a stored event within
    /// its window (then storing it again answers with that event, whatever
    /// its bound; an expired key would be freed and a new event stored).
    pub async fn intake_key_held(
        &self,
        submission: &Submission<'_>,
        policy: &IntakePolicy,
    ) -> Result<bool, StoreError> {
        let (key, kind) = intake_key(submission, policy);
        let window = match kind {
            KeyKind::Idempotency { .. } => policy.idempotency_ttl,
            KeyKind::Content => policy.dedup_window,
            KeyKind::None => return Ok(false),
        };
        let patient = submission.event.patient_id.as_str();
        let shape = shapes::intake_key(crate::bucket::of(patient), patient, &key);
        let holder = self
            .queued
            .clone_with_type::<Document>()
            .find_one(shape.filter)
            .projection(mongodb::bson::doc! { "acceptedAt": 1 })
            .max_time(self.op_timeout)
            .bounded("reading an intake key", self.op_timeout)
            .await?;
        let now = DateTime::now().timestamp_millis();
        Ok(holder
            .and_then(|holder| holder.get_datetime("acceptedAt").ok().copied())
            .is_some_and(|at| now - at.timestamp_millis() <= window.as_millis() as i64))
    }
}
