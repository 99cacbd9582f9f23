use mongodb::error::{ErrorKind, WriteFailure};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid MONGO_URI: {0}")]
    InvalidUri(#[source] mongodb::error::Error),
    #[error("MongoDB {operation} failed: {source}")]
    Mongo {
        operation: &'static str,
        #[source]
        source: mongodb::error::Error,
    },
    #[error("event data cannot be stored as BSON: {0}")]
    Encode(#[from] mongodb::bson::ser::Error),
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
            Self::Timeout { .. } => true,
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
