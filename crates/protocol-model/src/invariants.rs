//! The properties the checker verifies: the spec's invariants (`always`)
//! and a few `sometimes` ones showing that the interesting behaviours are
//! reached (so the invariants are not vacuous).

use stateright::Property;

use crate::database::{Status, Verdict};
use crate::downstream::DeliveryState;
use crate::model::{ProtocolModel, State};

pub const ONE_OUTCOME: &str = "1 one outcome per event, a finished one's agreeing with its record, \
     a success only if a delivery committed; no run after a record or an outcome";
pub const IN_ORDER: &str = "2 the downstream commits a patient's events in sequence order";
pub const NO_LOW_TOKEN: &str = "3 the downstream never commits a token below one it saw";
pub const NO_OVERLAP: &str = "4 no two deliveries of a patient committed while open together";
pub const NO_ORPHAN: &str =
    "5 no orphan: the named live owner holds the bucket; queued events claimable";
pub const STALE_REFUSED: &str = "6 no event write of a session applied after it was killed";
pub const ATTEMPTS: &str = "7 attempts counted only for runs started or interrupted by a fault";
pub const NO_REDELIVERY: &str = "8 without a fault no redelivery and no two open deliveries";
pub const EXCLUSIVE: &str = "9 at most one process trusts the lease for work in hand";

pub const BOTH_PROCESSED: &str = "both events processed";
pub const TAKEOVER: &str = "a takeover happened";
pub const STALE_DELIVERY_REFUSED: &str = "a stale delivery was refused";
pub const HANDED_OVER: &str = "a hand-over released the lease";
pub const CUT: &str = "SIGTERM cut work in hand";
pub const DELIVERED_TWICE: &str = "an event was delivered twice (after a fault)";
pub const CLAIM_RECOVERED: &str = "a claim whose reply was lost was recognised by its token";
pub const CLAIMED_AFTER_RESEED: &str = "an event was claimed after a bucket count change";
pub const KILLED_LEASE_WRITE: &str = "a lease write of a killed session was applied";
pub const CLOSED_FROM_OUTCOME: &str =
    "a claim closed an event from the outcome an earlier claim stored, without a run";
pub const LATE_SUCCESS_TAKEN: &str =
    "a recorded failure was closed with the success an earlier claim stored late";

/// Every `always` property.
pub const INVARIANTS: [&str; 9] = [
    ONE_OUTCOME,
    IN_ORDER,
    NO_LOW_TOKEN,
    NO_OVERLAP,
    NO_ORPHAN,
    STALE_REFUSED,
    ATTEMPTS,
    NO_REDELIVERY,
    EXCLUSIVE,
];

pub fn properties() -> Vec<Property<ProtocolModel>> {
    vec![
        Property::always(ONE_OUTCOME, |_, s: &State| one_outcome(s)),
        Property::always(IN_ORDER, |_, s: &State| !s.ghost.out_of_order),
        Property::always(NO_LOW_TOKEN, |_, s: &State| !s.ghost.low_token_commit),
        Property::always(NO_OVERLAP, |_, s: &State| no_overlap(s)),
        Property::always(NO_ORPHAN, |_, s: &State| no_orphan(s)),
        Property::always(STALE_REFUSED, |_, s: &State| !s.ghost.stale_event_write),
        Property::always(ATTEMPTS, |_, s: &State| attempts(s)),
        Property::always(NO_REDELIVERY, |_, s: &State| no_redelivery(s)),
        Property::always(EXCLUSIVE, |m, s: &State| exclusive(m, s)),
        Property::sometimes(BOTH_PROCESSED, |_, s: &State| {
            s.db.events.iter().all(|e| e.status == Status::Processed)
                && s.downstream.all_committed()
        }),
        Property::sometimes(TAKEOVER, |_, s: &State| s.ghost.takeover),
        Property::sometimes(STALE_DELIVERY_REFUSED, |_, s: &State| {
            s.downstream
                .deliveries
                .iter()
                .any(|d| d.state == DeliveryState::Refused)
        }),
        Property::sometimes(HANDED_OVER, |_, s: &State| s.ghost.handed_over),
        Property::sometimes(CUT, |_, s: &State| s.ghost.cut),
        Property::sometimes(DELIVERED_TWICE, |_, s: &State| {
            let d = &s.downstream.deliveries;
            d.iter()
                .enumerate()
                .any(|(i, a)| d[i + 1..].iter().any(|b| a.event == b.event))
        }),
        Property::sometimes(CLAIM_RECOVERED, |_, s: &State| s.ghost.claim_recovered),
        Property::sometimes(CLAIMED_AFTER_RESEED, |_, s: &State| {
            s.ghost.claimed_after_reseed
        }),
        Property::sometimes(KILLED_LEASE_WRITE, |_, s: &State| {
            s.ghost.killed_lease_write
        }),
        Property::sometimes(CLOSED_FROM_OUTCOME, |_, s: &State| {
            s.ghost.closed_from_outcome
        }),
        Property::sometimes(LATE_SUCCESS_TAKEN, |_, s: &State| {
            s.ghost.late_success_taken
        }),
    ]
}

/// 1: a finished event's record is its outcome (same run, same result);
/// at most one outcome is structural (one slot per event, inserted if
/// absent); a success's outcome only for an event the downstream committed
/// (it is written before any fenced write accepted it, possibly by a lane
/// that lost the bucket since); no handler run started on an event with a
/// record or an outcome. (While the event is queued its record may differ:
/// a failure recorded after a late success's outcome was sent, until the
/// close copies the outcome.)
fn one_outcome(s: &State) -> bool {
    !s.ghost.rerun_after_record
        && s.db
            .events
            .iter()
            .zip(&s.db.outcomes)
            .enumerate()
            .all(|(e, (event, outcome))| {
                let agrees = match (event.result, outcome) {
                    (Some(record), Some(outcome)) => {
                        record == *outcome || event.status == Status::Queued
                    }
                    _ => true,
                };
                let true_success = outcome.is_none_or(|o| {
                    o.verdict != Verdict::Success || s.downstream.committed(e as u8)
                });
                agrees && true_success
            })
}

/// 4: no two committed deliveries of the patient were open at the same
/// time (the token check refuses the older one at commit).
fn no_overlap(s: &State) -> bool {
    let d = &s.downstream.deliveries;
    d.iter().enumerate().all(|(i, a)| {
        a.state != DeliveryState::Committed
            || d.iter().enumerate().all(|(j, b)| {
                i == j || b.state != DeliveryState::Committed || a.overlaps & (1 << j) == 0
            })
    })
}

/// 5: if the lease names a session whose process is alive and not stopping,
/// that process holds the bucket in its table, or will adopt it at its
/// next read-back (an epoch it never gave up); and while the lease has an
/// owner, every queued event is claimable under its epoch. (A free lease
/// right after a reseed has epoch 0; the next acquisition's epoch is above
/// every one issued before, so only an owned lease is checked.)
fn no_orphan(s: &State) -> bool {
    let lease = s.db.lease;
    let Some(owner) = lease.owner else {
        return true;
    };
    let held = s.procs.iter().all(|p| {
        !(p.up && !p.stopping && p.session == owner) || p.lease.is_some() || lease.epoch > p.retired
    });
    let claimable =
        s.db.events
            .iter()
            .all(|e| e.status != Status::Queued || e.epoch <= lease.epoch);
    held && claimable
}

/// 7: every counted claim had a handler run, or its lane was interrupted
/// by a fault, or it gave the event up because earlier attempts died by a
/// fault, or its lane still holds it; never one claim counted twice; never
/// recorded failed without a run or a fault.
fn attempts(s: &State) -> bool {
    let tokens = &s.ghost.tokens[..usize::from(s.next_token - 1)];
    let died = |event: u8| {
        tokens
            .iter()
            .any(|t| t.event == event && t.counted && t.faulted)
    };
    // A claim still in its lane's hands may yet run or be handed back.
    let in_hand = |token: usize| {
        s.procs
            .iter()
            .any(|p| p.up && p.lane.token() == Some(token as u8 + 1))
    };
    let accounted = tokens.iter().enumerate().all(|(i, t)| {
        !t.counted || t.run || t.faulted || (t.gave_up && died(t.event)) || in_hand(i)
    });
    let failed_ok = s.db.events.iter().enumerate().all(|(e, event)| {
        event.result.is_none_or(|r| r.verdict != Verdict::Failure)
            || tokens
                .iter()
                .any(|t| usize::from(t.event) == e && (t.run || t.faulted))
    });
    accounted && failed_ok && !s.ghost.counted_twice
}

/// 8: two deliveries of one event, or two deliveries open at once, only if
/// the earlier one's run was interrupted by a fault (or, for a second
/// delivery of the event, it failed: a retry).
fn no_redelivery(s: &State) -> bool {
    let d = &s.downstream.deliveries;
    d.iter().enumerate().all(|(i, a)| {
        let faulted = s.ghost.token(a.token).faulted;
        d[i + 1..].iter().enumerate().all(|(k, b)| {
            let j = i + 1 + k;
            let twice = a.event == b.event && !(faulted || a.state == DeliveryState::Failed);
            let together =
                a.overlaps & (1 << j) != 0 && !(faulted || s.ghost.token(b.token).faulted);
            !twice && !together
        })
    })
}

/// 9: at most one process considers the lease valid for work in hand (by
/// its local clock) and may act under it (work in hand, or free to start).
fn exclusive(m: &ProtocolModel, s: &State) -> bool {
    s.procs
        .iter()
        .filter(|p| p.trusts_lease(m.variant()))
        .count()
        <= 1
}
