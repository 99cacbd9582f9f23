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
/// of its cursor each within `limit`.
pub(crate) trait BoundedAll<T>:
    IntoFuture<Output = mongodb::error::Result<mongodb::Cursor<T>>> + Sized
where
    T: serde::de::DeserializeOwned + Send + Sync + Unpin,
{
    async fn all(self, operation: &'static str, limit: Duration) -> Result<Vec<T>, StoreError> {
        use futures_util::TryStreamExt;
        self.bounded(operation, limit)
            .await?
            .try_collect::<Vec<T>>()
            .bounded_raw(operation, limit)
            .await?
            .map_err(StoreError::mongo(operation))
    }
}

impl<T, F> BoundedAll<T> for F
where
    T: serde::de::DeserializeOwned + Send + Sync + Unpin,
    F: IntoFuture<Output = mongodb::error::Result<mongodb::Cursor<T>>>,
{
}
