//! A time limit on every store operation. The MongoDB driver has no socket
//! timeout: a request the server never answers would otherwise wait forever
//! while holding a patient's intake stripe or lane.

use std::future::IntoFuture;
use std::time::Duration;

use super::StoreError;

pub(crate) trait Bounded<T>: IntoFuture<Output = mongodb::error::Result<T>> + Sized {
    /// The operation's result, or [`StoreError::Timeout`] after `limit`.
    async fn bounded(self, operation: &'static str, limit: Duration) -> Result<T, StoreError> {
        self.bounded_raw(operation, limit)
            .await?
            .map_err(StoreError::mongo(operation))
    }

    /// Like [`Bounded::bounded`], leaving the driver's error to the caller.
    async fn bounded_raw(
        self,
        operation: &'static str,
        limit: Duration,
    ) -> Result<mongodb::error::Result<T>, StoreError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(limit, self)
            .await
            .map_err(|_| StoreError::Timeout { operation, limit });
        // Database time per operation kind (labels: a fixed set of names).
        metrics::histogram!("store_operation_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

impl<T, F: IntoFuture<Output = mongodb::error::Result<T>>> Bounded<T> for F {}

/// A bounded query whose whole answer is wanted: the query and the reading
/// of its cursor each within `limit`, timed as one operation (one sample of
/// `store_operation_seconds`: a small answer is one round trip).
pub(crate) trait BoundedAll<T>:
    IntoFuture<Output = mongodb::error::Result<mongodb::Cursor<T>>> + Sized
where
    T: serde::de::DeserializeOwned + Send + Sync + Unpin,
{
    async fn all(self, operation: &'static str, limit: Duration) -> Result<Vec<T>, StoreError> {
        use futures_util::TryStreamExt;
        let started = std::time::Instant::now();
        let result = async {
            let cursor = tokio::time::timeout(limit, self)
                .await
                .map_err(|_| StoreError::Timeout { operation, limit })?
                .map_err(StoreError::mongo(operation))?;
            tokio::time::timeout(limit, cursor.try_collect::<Vec<T>>())
                .await
                .map_err(|_| StoreError::Timeout { operation, limit })?
                .map_err(StoreError::mongo(operation))
        }
        .await;
        metrics::histogram!("store_operation_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

impl<T, F> BoundedAll<T> for F
where
    T: serde::de::DeserializeOwned + Send + Sync + Unpin,
    F: IntoFuture<Output = mongodb::error::Result<mongodb::Cursor<T>>>,
{
}

/// Times a cursor walk as round trips: one sample of
/// `store_operation_seconds` per `batch` documents read (the server sends
/// that many per reply), not one per document.
pub(crate) struct CursorTiming {
    operation: &'static str,
    batch: usize,
    read: usize,
    since: std::time::Instant,
}

impl CursorTiming {
    pub(crate) fn new(operation: &'static str, batch: u32) -> Self {
        Self {
            operation,
            batch: batch.max(1) as usize,
            read: 0,
            since: std::time::Instant::now(),
        }
    }

    /// After each document read.
    pub(crate) fn tick(&mut self) {
        self.read += 1;
        if self.read % self.batch == 0 {
            metrics::histogram!("store_operation_seconds", "operation" => self.operation)
                .record(self.since.elapsed().as_secs_f64());
            self.since = std::time::Instant::now();
        }
    }
}
