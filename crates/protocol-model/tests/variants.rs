//! Each hole of v1 put back into v2: the checker must find a counterexample
//! to the invariant that hole breaks (else the invariant, or the model,
//! cannot see the hole).

mod common;

use common::assert_broken;
use protocol_model::invariants::{
    ATTEMPTS, EXCLUSIVE, IN_ORDER, NO_ORPHAN, NO_REDELIVERY, ONE_OUTCOME, STALE_REFUSED,
};
use protocol_model::{Budget, ClockFault, Config, Variant};

fn config(variant: Variant, budget: Budget) -> Config {
    Config {
        budget,
        ..Config::new(variant)
    }
}

/// One pause, and room for the other process to take the bucket over (a
/// third session and epoch).
fn paused_owner(variant: Variant) -> Config {
    let budget = Budget {
        pauses: 1,
        ..Budget::NONE
    };
    Config {
        sessions: 3,
        epochs: 3,
        ..config(variant, budget)
    }
}

/// V1: the hand-over aborts the event in hand and releases at once; the
/// next owner delivers the event again while the first delivery is still
/// open, with no fault anywhere.
#[test]
fn v1_aborting_hand_over_redelivers() {
    let budget = Budget {
        handovers: 1,
        ..Budget::NONE
    };
    assert_broken(config(Variant::HandOverAborts, budget), NO_REDELIVERY);
}

/// V3: a claim reply is lost, the read-back does not show the claim (the
/// first copy has not applied yet), the lane claims again with a new token
/// and no rev condition: both copies apply, two attempts for one claim
/// (with MAX_ATTEMPTS = 1 the second is then given up: failed, never run).
#[test]
fn v3_new_token_after_lost_claim_reply_counts_twice() {
    let budget = Budget {
        lost_replies: 1,
        ..Budget::NONE
    };
    let report = assert_broken(config(Variant::ReclaimWithNewToken, budget), ATTEMPTS);
    let state = report.last_state(ATTEMPTS).expect("found");
    assert!(state.db.events.iter().any(|e| e.attempts >= 2));
}

/// V5: the release write's reply is lost (it has not applied yet) and the
/// hand-over forgets the bucket: the lease names a live session that will
/// never adopt it again.
#[test]
fn v5_forgetting_a_failed_release_orphans_the_bucket() {
    let budget = Budget {
        handovers: 1,
        lost_replies: 1,
        ..Budget::NONE
    };
    assert_broken(config(Variant::ForgetOnFailedRelease, budget), NO_ORPHAN);
}

/// V6: without `NOW < X`, a paused owner's write sent before the pause
/// lands after a taker killed its session (before the taker's claim).
#[test]
fn v6_event_fencing_alone_lets_a_killed_session_write() {
    assert_broken(paused_owner(Variant::EventFencingOnly), STALE_REFUSED);
}

/// V7a: the leaving node's wall clock is ahead: its leave deletes the live
/// owner's session; a restarted process finds it missing (dead), takes the
/// lease, and both trust it.
#[test]
fn v7a_leave_by_local_clock_deletes_a_live_session() {
    let budget = Budget {
        sigterms: 1,
        ..Budget::NONE
    };
    let config = Config {
        sessions: 3,
        tokens: 1,
        deliveries: 1,
        ..config(Variant::LeaveByLocalClock, budget)
    };
    assert_broken(config, EXCLUSIVE);
}

/// V7b: the taker reads the owner's session from a replica that has not
/// seen its renewals: expired there, alive at the primary; the takeover
/// write has no kill behind it and both processes trust the lease.
#[test]
fn v7b_takeover_from_a_lagging_read_overlaps() {
    let config = Config {
        sessions: 3,
        tokens: 1,
        deliveries: 1,
        ..config(Variant::TakeoverFromLaggingRead, Budget::NONE)
    };
    assert_broken(config, EXCLUSIVE);
}

/// V7c: work in hand trusted until `sent + L`: with the owner's renewals
/// lost and its clock lagging a tick, it still trusts the lease when the
/// database lets a taker kill its session.
#[test]
fn v7c_no_in_hand_margin_overlaps_with_a_lagging_clock() {
    let budget = Budget {
        partitions: 1,
        ..Budget::NONE
    };
    let config = Config {
        clock: ClockFault::Drift,
        sessions: 3,
        epochs: 3,
        tokens: 2,
        deliveries: 2,
        ..config(Variant::NoInHandMargin, budget)
    };
    assert_broken(config, EXCLUSIVE);
}

/// V8: after the leases are deleted, epochs restart at 1: an event claimed
/// under epoch 2 before can never be claimed (above the lease's epoch).
#[test]
fn v8_restarted_epochs_strand_an_event() {
    let budget = Budget {
        crashes: 2,
        reseeds: 1,
        ..Budget::NONE
    };
    let config = Config {
        sessions: 3,
        epochs: 3,
        tokens: 2,
        deliveries: 2,
        ..config(Variant::EpochsRestart, budget)
    };
    assert_broken(config, NO_ORPHAN);
}

/// V8 again: an epoch issued anew repeats an old fencing token, so the
/// downstream cannot refuse the old owner's delivery: it commits after the
/// new owner's later event.
#[test]
fn v8_restarted_epochs_repeat_a_fencing_token() {
    let budget = Budget {
        crashes: 1,
        reseeds: 1,
        ..Budget::NONE
    };
    let config = Config {
        sessions: 3,
        epochs: 3,
        ..config(Variant::EpochsRestart, budget)
    };
    assert_broken(config, IN_ORDER);
}

/// V9: a claim does not look for the run's outcome: an owner stores a
/// success's outcome and is paused before its close; the taker claims the
/// event and runs it again, though its delivery had committed.
#[test]
fn v9_without_the_outcome_lookup_a_stored_success_runs_again() {
    // With MAX_ATTEMPTS = 1 the taker would give the event up instead (and
    // its close take the stored success): room for a second attempt.
    let config = Config {
        max_attempts: 2,
        ..paused_owner(Variant::NoOutcomeLookup)
    };
    assert_broken(config, ONE_OUTCOME);
}

/// V10: the close after a recorded failure keeps the record: an earlier
/// claim's success, whose outcome landed after the failure was recorded
/// (the owner paused past its lease, the taker gave the event up), stays
/// the outcome while the event says failed.
#[test]
fn v10_a_close_that_keeps_the_record_disagrees_with_a_late_success() {
    assert_broken(paused_owner(Variant::CloseKeepsRecord), ONE_OUTCOME);
}
