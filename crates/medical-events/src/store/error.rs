use std::fmt;

use mongodb::error::{ErrorKind, WriteFailure};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid MONGO_URI: {0}")]
    InvalidUri(#[source] mongodb::error::Error),
    /// Shown (and so logged) without the values of a duplicate key.
    #[error("MongoDB {operation} failed: {}", Described(source))]
    Mongo {
        operation: &'static str,
        #[source]
        source: mongodb::error::Error,
    },
    #[error("event data cannot be stored as BSON: {0}")]
    Encode(#[from] mongodb::bson::ser::Error),
    /// A write the update batcher could not encode (nothing was sent).
    #[error("an update cannot be encoded as BSON: {0}")]
    Raw(#[from] mongodb::bson::raw::Error),
    #[error(
        "MongoDB {operation} kept conflicting with concurrent writes; gave up after {attempts} tries"
    )]
    Contention {
        operation: &'static str,
        attempts: u32,
    },
    #[error("MongoDB {operation} did not answer within {limit:?}")]
    Timeout {
        operation: &'static str,
        limit: std::time::Duration,
    },
    /// The write was sent but its fate is unknown, and a read could not
    /// settle it: the event may or may not be stored.
    #[error("the outcome of storing event {event_id} is unknown: {cause}")]
    OutcomeUnknown { event_id: String, cause: String },
    #[error("{0}")]
    Incompatible(String),
    /// The request's time ran out before the write was sent: nothing was
    /// stored by it (the answer may say so).
    #[error("no time was left to send {operation} within the request's time limit")]
    NoTimeLeft { operation: &'static str },
    /// Sent again alone after the merged statement it was part of was
    /// refused (some of whose writes may have applied), and that copy
    /// failed: whether the write applied is unknown.
    #[error(
        "MongoDB {operation}: a write of a refused merged statement, sent again alone, failed: {source}"
    )]
    InDoubt {
        operation: &'static str,
        #[source]
        source: Box<StoreError>,
    },
    /// Applied on the primary, not confirmed by a majority (a failover
    /// may roll it back): as ambiguous as a lost reply.
    #[error("MongoDB {operation} was not confirmed by a majority: {message}")]
    WriteConcern {
        operation: &'static str,
        message: String,
    },
}

impl StoreError {
    pub(crate) fn mongo(operation: &'static str) -> impl FnOnce(mongodb::error::Error) -> Self {
        move |source| Self::Mongo { operation, source }
    }

    /// Whether the server may have applied the write although we saw an
    /// error: a timeout or a connection lost after sending. A refusal by the
    /// server, or no server to send to, is not ambiguous.
    pub(crate) fn is_ambiguous(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::WriteConcern { .. } | Self::InDoubt { .. } => true,
            Self::Mongo { source, .. } => is_ambiguous(source),
            _ => false,
        }
    }
}

fn is_ambiguous(error: &mongodb::error::Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => true,
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::InsertMany(e) => e.write_concern_error.is_some(),
        _ => error.contains_label("RetryableWriteError") || error.contains_label("NetworkError"),
    }
}

/// MongoDB's duplicate key error code: the unique index said "already there".
pub(crate) const DUPLICATE_KEY: i32 = 11000;

/// A driver error as logs may show it. The server's duplicate-key message
/// quotes the key's values (`dup key: { bucket: 3, patientId: "...", seq: 2 }`),
/// and a patient id must not reach a log line: such an error is described
/// by its index alone.
struct Described<'a>(&'a mongodb::error::Error);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.kind.as_ref() {
            ErrorKind::Write(WriteFailure::WriteError(e)) if e.code == DUPLICATE_KEY => {
                duplicate(f, &e.message)
            }
            ErrorKind::Command(e) if e.code == DUPLICATE_KEY => duplicate(f, &e.message),
            ErrorKind::InsertMany(e) => {
                f.write_str("insert refused:")?;
                for w in e.write_errors.iter().flatten() {
                    write!(f, " [document {}] ", w.index)?;
                    if w.code == DUPLICATE_KEY {
                        duplicate(f, &w.message)?;
                    } else {
                        let name = w.code_name.as_deref().unwrap_or("");
                        write!(f, "error {} ({name}): {}", w.code, w.message)?;
                    }
                }
                if let Some(wc) = &e.write_concern_error {
                    write!(
                        f,
                        " [write concern] error {} ({}): {}",
                        wc.code, wc.code_name, wc.message
                    )?;
                }
                Ok(())
            }
            _ => {
                let text = self.0.to_string();
                if text.contains("dup key") {
                    // Quoted somewhere unexpected (a server reply in full).
                    f.write_str("a duplicate key error (its values withheld)")
                } else {
                    f.write_str(&text)
                }
            }
        }
    }
}

fn duplicate(f: &mut fmt::Formatter<'_>, message: &str) -> fmt::Result {
    let index = super::indexes::index_name(message).unwrap_or("?");
    write!(f, "duplicate key (E11000) on index {index}")
}

pub(crate) fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    duplicate_key_message(error).is_some()
}

/// The server's message of a duplicate-key error (it names the index).
pub(crate) fn duplicate_key_message(error: &mongodb::error::Error) -> Option<&str> {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) if e.code == DUPLICATE_KEY => {
            Some(&e.message)
        }
        ErrorKind::Command(e) if e.code == DUPLICATE_KEY => Some(&e.message),
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .and_then(|errors| errors.iter().find(|e| e.code == DUPLICATE_KEY))
            .map(|e| e.message.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, from_document};
    use mongodb::error::{Error, InsertManyError, WriteError};

    const MESSAGE: &str = "E11000 duplicate key error collection: t.queued_events index: \
        patient_seq dup key: { bucket: 3, patientId: \"MRN-SECRET-1234\", seq: 2 }";

    #[test]
    fn a_duplicate_key_error_is_shown_without_the_key() {
        let write: WriteError = from_document(doc! {
            "code": DUPLICATE_KEY, "codeName": "DuplicateKey", "errmsg": MESSAGE,
        })
        .unwrap();
        let many: InsertManyError = from_document(doc! {
            "writeErrors": [{ "index": 1, "code": DUPLICATE_KEY, "errmsg": MESSAGE }],
            "writeConcernError": {
                "code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out",
            },
        })
        .unwrap();
        for error in [
            Error::from(ErrorKind::Write(WriteFailure::WriteError(write))),
            Error::from(ErrorKind::InsertMany(many)),
        ] {
            assert!(error.to_string().contains("MRN-SECRET-1234"));
            let shown = StoreError::mongo("storing an event")(error).to_string();
            assert!(!shown.contains("MRN-SECRET"), "{shown}");
            assert!(
                shown.contains("duplicate key (E11000) on index patient_seq"),
                "{shown}"
            );
        }
    }
}
