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
}

impl StoreError {
    pub(crate) fn mongo(operation: &'static str) -> impl FnOnce(mongodb::error::Error) -> Self {
        move |source| Self::Mongo { operation, source }
    }
}

/// MongoDB's duplicate key error code: the unique index said "already there".
const DUPLICATE_KEY: i32 = 11000;

pub(crate) fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|e| e.code == DUPLICATE_KEY)),
        _ => false,
    }
}
