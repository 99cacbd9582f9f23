//! Claims whose fate was still unknown when the lane had to stop waiting
//! (its time to claim ran out after a lost reply). A copy may have applied,
//! or may still apply until the database's clock passes the claim's bound,
//! so the lane must not count the attempt again under a new token: the next
//! read that finds this token on the event adopts that claim instead.

use std::collections::HashMap;
use std::sync::Mutex;

use super::documents::QueuedEvent;

/// Entries at most. One lane has at most one claim in flight, and an entry
/// goes once its event is read again; only events whose bucket moved to
/// another instance meanwhile stay. Past the bound all are forgotten: the
/// cost is an attempt counted twice, not a second owner (the revision
/// guard still lets one copy apply).
const MAX_REMEMBERED: usize = 10_000;

#[derive(Default)]
pub(crate) struct ClaimsInDoubt(Mutex<HashMap<String, InDoubt>>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InDoubt {
    pub token: String,
    pub epoch: i64,
}

impl ClaimsInDoubt {
    pub fn remember(&self, event_id: &str, token: &str, epoch: i64) {
        let mut claims = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if claims.len() >= MAX_REMEMBERED {
            claims.clear();
        }
        claims.insert(
            event_id.to_owned(),
            InDoubt {
                token: token.to_owned(),
                epoch,
            },
        );
    }

    /// A later claim of the event was settled: no older copy can apply
    /// any more (each needs the revision it moved).
    pub fn forget(&self, event_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(event_id);
    }

    /// The claim in doubt that `event`, as just read, shows applied (then
    /// forgotten).
    pub fn applied(&self, event: &QueuedEvent) -> Option<InDoubt> {
        let stored = event.claim.as_ref()?;
        let mut claims = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let ours = claims.get(&event.id)?;
        if ours.token != stored.token || ours.epoch != event.epoch {
            return None;
        }
        claims.remove(&event.id)
    }
}
