//! Claims whose fate was still unknown when the lane had to stop waiting
//! (its time to claim ran out after a lost reply). A copy may have applied,
//! or may still apply until the database's clock passes the claim's bound,
//! so the lane must not count the attempt again under a new token: the next
//! read that finds one of these tokens on the event adopts that claim instead.

use std::collections::HashMap;
use std::sync::Mutex;

use super::documents::QueuedEvent;

/// Events with claims in doubt at most. An event's entries go when a read
/// of it shows one of them applied, or shows the revision they needed moved
/// on (none can apply any more), or when a later claim of it settles. Only
/// events not read again here (their bucket moved to another instance, an
/// operator finished them) stay; past the bound one of them is forgotten:
/// the cost is an attempt counted twice, not a second owner (the revision
/// guard still lets one copy apply).
const MAX_REMEMBERED: usize = 10_000;

#[derive(Default)]
pub(crate) struct ClaimsInDoubt(Mutex<HashMap<String, Vec<InDoubt>>>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InDoubt {
    pub token: String,
    pub epoch: i64,
    /// The revision the claim applies to (and moves on by one).
    pub rev: i64,
}

impl InDoubt {
    /// A claim made on `event` as read.
    pub fn of(event: &QueuedEvent, token: &str, epoch: i64) -> Self {
        Self {
            token: token.to_owned(),
            epoch,
            rev: event.rev,
        }
    }
}

impl ClaimsInDoubt {
    /// Kept next to any earlier claim of the event still in doubt: two
    /// claims made on the same revision may both be in flight, and either
    /// may be the one that applies.
    pub fn remember(&self, event_id: &str, claim: InDoubt) {
        let mut claims = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if claims.len() >= MAX_REMEMBERED && !claims.contains_key(event_id) {
            let any = claims.keys().next().cloned();
            if let Some(any) = any {
                claims.remove(&any);
            }
        }
        claims.entry(event_id.to_owned()).or_default().push(claim);
    }

    /// A later claim of the event was settled: no older copy can apply
    /// any more (each needs the revision it moved).
    pub fn forget(&self, event_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(event_id);
    }

    /// The claim in doubt that `event`, as just read, shows applied, when it
    /// was made under `epoch` (the lease the lane holds now: a claim of an
    /// earlier lease is not adopted, its fencing token would be stale). The
    /// event's entries are then forgotten, as are those whose revision the
    /// event has passed without them.
    pub fn applied(&self, event: &QueuedEvent, epoch: i64) -> Option<InDoubt> {
        let mut claims = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let ours = claims.get_mut(&event.id)?;
        let stored = event.claim.as_ref();
        let found = ours.iter().position(|claim| {
            stored.is_some_and(|stored| stored.token == claim.token) && claim.epoch == event.epoch
        });
        if let Some(found) = found {
            let applied = ours.swap_remove(found);
            claims.remove(&event.id);
            return (applied.epoch == epoch).then_some(applied);
        }
        ours.retain(|claim| claim.rev >= event.rev);
        if ours.is_empty() {
            claims.remove(&event.id);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::documents::Claim;
    use mongodb::bson::DateTime;

    fn claim(token: &str, rev: i64) -> InDoubt {
        InDoubt {
            token: token.to_owned(),
            epoch: 1,
            rev,
        }
    }

    fn event_under(token: &str, epoch: i64, rev: i64) -> QueuedEvent {
        let mut event: QueuedEvent = mongodb::bson::from_document(mongodb::bson::doc! {
            "_id": "e1", "eventId": "e1", "client": "c", "patientId": "p", "bucket": 0,
            "seq": 1i64, "type": "t", "ts": "2026-01-01T00:00:00Z", "intakeKey": "e:e1",
            "status": "queued", "attempts": 1, "epoch": epoch, "run": 1,
            "acceptedAt": DateTime::now(), "updatedAt": DateTime::now(),
        })
        .expect("a queued event");
        event.rev = rev;
        event.claim = Some(Claim {
            token: token.to_owned(),
            owner: "instance".to_owned(),
            at: DateTime::now(),
        });
        event
    }

    #[test]
    fn an_earlier_claim_in_doubt_on_the_same_revision_is_still_adopted() {
        let doubts = ClaimsInDoubt::default();
        doubts.remember("e1", claim("first", 3));
        doubts.remember("e1", claim("second", 3));
        let applied = doubts.applied(&event_under("first", 1, 4), 1);
        assert_eq!(applied, Some(claim("first", 3)));
    }

    #[test]
    fn a_claim_of_an_earlier_lease_is_not_adopted() {
        let doubts = ClaimsInDoubt::default();
        doubts.remember("e1", claim("first", 3));
        assert_eq!(doubts.applied(&event_under("first", 1, 4), 2), None);
        assert!(doubts.0.lock().unwrap().is_empty(), "the entry stayed");
    }

    #[test]
    fn claims_the_event_has_passed_without_are_forgotten() {
        let doubts = ClaimsInDoubt::default();
        doubts.remember("e1", claim("lost", 3));
        assert_eq!(doubts.applied(&event_under("other", 1, 3), 1), None);
        assert_eq!(doubts.0.lock().unwrap()["e1"].len(), 1, "still may apply");
        assert_eq!(doubts.applied(&event_under("other", 1, 4), 1), None);
        assert!(doubts.0.lock().unwrap().is_empty(), "the entry stayed");
    }
}
