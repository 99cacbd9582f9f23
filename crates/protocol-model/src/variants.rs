//! What is checked: the protocol (v2, or v2 with one of v1's holes put back)
//! and the bounds of the exploration (faults allowed, counters' limits).

/// The protocol v2 (`Fixed`), or v2 with one hole of v1 put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    Fixed,
    /// V1: a hand-over aborts the work in hand (after a grace) and releases
    /// the lease at once.
    HandOverAborts,
    /// V3: after a lost claim reply whose read-back does not show the claim,
    /// claim again with a new token; claims have no `rev` condition.
    ReclaimWithNewToken,
    /// V5: the hand-over forgets the bucket locally even when its release
    /// write failed.
    ForgetOnFailedRelease,
    /// V6: event-level fencing only: writes carry no `NOW < X` bound.
    EventFencingOnly,
    /// V7a: `leave()` deletes sessions by the leaving node's wall clock
    /// (which may be ahead), and its own session even if it holds a lease.
    LeaveByLocalClock,
    /// V7b: a takeover is decided from a (possibly lagging) read of the
    /// session, not from a kill write at the primary.
    TakeoverFromLaggingRead,
    /// V7c: no margin for work in hand: in hand until `sent + L`.
    NoInHandMargin,
    /// V8: epochs restart when the leases are deleted (per-lease `epoch + 1`,
    /// no global counter).
    EpochsRestart,
    /// V9: a claim does not look for the outcome of a success whose lane
    /// stopped between writing it and the close.
    NoOutcomeLookup,
    /// V10: a close after a recorded failure keeps the record, even when
    /// the outcome stored is an earlier claim's success that landed late.
    CloseKeepsRecord,
}

impl Variant {
    /// Claims carry `rev == r`.
    pub fn claim_checks_rev(self) -> bool {
        self != Self::ReclaimWithNewToken
    }

    /// Processor writes about an event carry `NOW < X`.
    pub fn fences_by_time(self) -> bool {
        self != Self::EventFencingOnly
    }

    /// Takeovers kill the owner's session at the primary first.
    pub fn kills_before_takeover(self) -> bool {
        self != Self::TakeoverFromLaggingRead
    }

    /// Acquisitions take their epoch from the global counter.
    pub fn global_epoch(self) -> bool {
        self != Self::EpochsRestart
    }

    /// Work in hand may go on while the local age of the last renewal is
    /// below this (ticks).
    pub fn in_hand_limit(self) -> u8 {
        if self == Self::NoInHandMargin {
            crate::LEASE
        } else {
            crate::IN_HAND
        }
    }
}

/// The clock fault a run may contain (at most one per run).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClockFault {
    None,
    /// One process's monotonic clock lags one tick behind the database's.
    Drift,
    /// The database clock steps one tick back or forward (a failover).
    Step,
}

/// How many times each fault or operator action may happen in one run, and
/// the limits of the counters that grow (every one bounds the state space).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Budget {
    pub crashes: u8,
    pub pauses: u8,
    pub sigterms: u8,
    /// Replies lost or timed out (the message may still apply later).
    pub lost_replies: u8,
    /// Partitions of a process's renewals from the database (lost
    /// renewals; they may heal).
    pub partitions: u8,
    /// Hand-overs asked for (the fair share shrank).
    pub handovers: u8,
    /// Handler failures (the downstream answered an error).
    pub handler_failures: u8,
    /// Bucket-count changes (leases deleted and reseeded).
    pub reseeds: u8,
}

impl Budget {
    pub const NONE: Self = Self {
        crashes: 0,
        pauses: 0,
        sigterms: 0,
        lost_replies: 0,
        partitions: 0,
        handovers: 0,
        handler_failures: 0,
        reseeds: 0,
    };
}

/// One check: the protocol, its parameters and the bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    pub variant: Variant,
    /// `MAX_ATTEMPTS`.
    pub max_attempts: u8,
    pub clock: ClockFault,
    pub budget: Budget,
    /// Sessions (joins) in a run: 2 is one per process, each more is a
    /// restart or a re-join.
    pub sessions: u8,
    /// The highest epoch that may be issued.
    pub epochs: u8,
    /// Claim tokens that may be issued.
    pub tokens: u8,
    /// Deliveries the downstream may receive.
    pub deliveries: u8,
}

impl Config {
    /// A small run of `variant` with no fault: callers add what a check needs.
    pub fn new(variant: Variant) -> Self {
        Self {
            variant,
            max_attempts: 1,
            clock: ClockFault::None,
            budget: Budget::NONE,
            sessions: 2,
            epochs: 2,
            tokens: 3,
            deliveries: 3,
        }
    }
}
