//! The work done for one event. The real system's work is simulated: a
//! non-blocking pause of a random duration within the configured range.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::store::QueuedEvent;

/// What the processor runs for each event; `Err` carries a reason that is
/// recorded (never the event's data) and triggers a retry.
pub trait EventHandler: Send + Sync + 'static {
    fn handle(&self, event: &QueuedEvent) -> impl Future<Output = Result<(), String>> + Send;
}

#[derive(Debug, Clone, Copy)]
pub struct SimulatedProcessing {
    pub min: Duration,
    pub max: Duration,
}

impl EventHandler for SimulatedProcessing {
    async fn handle(&self, _event: &QueuedEvent) -> Result<(), String> {
        let millis = rand::rng().random_range(self.min.as_millis()..=self.max.as_millis());
        tokio::time::sleep(Duration::from_millis(millis as u64)).await;
        Ok(())
    }
}
