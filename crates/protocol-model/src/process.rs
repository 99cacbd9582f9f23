//! A processor's local state: its session and local clock, its lease table
//! (one bucket), its keeper (balancing, hand-over, shutdown) and its lane
//! (the one patient's events).
//!
//! Local times are ages in ticks of the process's monotonic clock since the
//! instant the last join or renewal was sent, saturated at `LEASE` (beyond
//! it nothing is trusted anyway). A healthy process renews at every tick
//! (the spec's every `L / 3`, rounded to the model's resolution); a renewal
//! is one atomic step (sent, applied and answered at once). That is the
//! least favourable timing for the margins: the database extends from the
//! very instant the local view starts, so a later application would only
//! widen the gap between the local view's end and the earliest kill.

use crate::database::{Record, Reply, Slot, Write};
use crate::downstream::Answer;
use crate::variants::Variant;
use crate::{LEASE, NEW_WORK};

/// Where a process waits for the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wait {
    Idle,
    /// A message of ours, waiting for its reply, is in the queue.
    Pending,
    Replied(Reply),
    /// Applied, reply lost: the process will time out.
    Lost,
}

/// The bucket in the local table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Held {
    pub epoch: u8,
    /// Being handed over: no new event starts under it.
    pub releasing: bool,
    /// SIGTERM cut work in hand under it: it is not released.
    pub cut: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Keeper {
    Idle,
    /// The acquisition write is sent (kill and epoch done).
    Acquiring,
    Releasing {
        epoch: u8,
    },
}

/// The lane of the patient: one event at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    Idle,
    /// The claim is sent (and re-sent, same token and rev, after an error).
    Claiming {
        event: u8,
        token: u8,
        rev: u8,
        epoch: u8,
        /// `attempts` after this claim, as the find predicts it.
        attempts: u8,
        /// The record the find saw (the claim's `rev` keeps it true).
        record: Option<Record>,
    },
    /// The handler runs: the delivery is at the downstream.
    Delivering {
        event: u8,
        token: u8,
        epoch: u8,
        attempts: u8,
        delivery: u8,
        answer: Option<Answer>,
    },
    /// The outcome document of a success is sent (and sent again after an
    /// error: an insert of the same document).
    Outcome {
        event: u8,
        token: u8,
        epoch: u8,
    },
    /// A fenced write is sent.
    Writing {
        event: u8,
        token: u8,
        epoch: u8,
        write: Write,
    },
}

impl Lane {
    /// The claim token this lane works under, if any.
    pub fn token(&self) -> Option<u8> {
        match *self {
            Self::Idle => None,
            Self::Claiming { token, .. }
            | Self::Delivering { token, .. }
            | Self::Outcome { token, .. }
            | Self::Writing { token, .. } => Some(token),
        }
    }

    /// `(event, token, epoch)` of a claim that may be ours and not yet
    /// recorded: what a cut hands back. Not once a success's outcome is
    /// sent: the hand-back would uncount the attempt that tells the next
    /// claim to look for that outcome. (The lane hands back only while its
    /// handler runs; the model lets a cut hand back during the writes that
    /// follow a failure too, which covers more.)
    pub fn unrecorded_claim(&self) -> Option<(u8, u8, u8)> {
        match *self {
            Self::Claiming {
                event,
                token,
                epoch,
                record: None,
                ..
            }
            | Self::Delivering {
                event,
                token,
                epoch,
                ..
            }
            | Self::Writing {
                event,
                token,
                epoch,
                write: Write::ReleaseForRetry | Write::HandBack | Write::Record(_),
            } => Some((event, token, epoch)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Process {
    pub up: bool,
    pub paused: bool,
    /// SIGTERM received: no new event, no new bucket.
    pub stopping: bool,
    /// Renewals reach the database (false: partitioned from it).
    pub renewing: bool,
    pub session: u8,
    /// Age of the last join/renewal that was answered alive.
    pub trusted: Option<u8>,
    /// `X - NOW` from that reply.
    pub x: i8,
    pub waits: [Wait; 2],
    pub keeper: Keeper,
    pub lane: Lane,
    pub lease: Option<Held>,
    /// The last epoch it gave up: never adopted again.
    pub retired: u8,
}

impl Process {
    pub const DOWN: Self = Self {
        up: false,
        paused: false,
        stopping: false,
        renewing: true,
        session: 0,
        trusted: None,
        x: -1,
        waits: [Wait::Idle; 2],
        keeper: Keeper::Idle,
        lane: Lane::Idle,
        lease: None,
        retired: 0,
    };

    /// Takes steps (alive and not paused).
    pub fn active(&self) -> bool {
        self.up && !self.paused
    }

    pub fn wait(&self, slot: Slot) -> Wait {
        self.waits[slot as usize]
    }

    pub fn set_wait(&mut self, slot: Slot, wait: Wait) {
        self.waits[slot as usize] = wait;
    }

    /// The local view allows starting new work.
    pub fn new_work_ok(&self) -> bool {
        self.trusted.is_some_and(|age| age < NEW_WORK)
    }

    /// The local view allows work in hand to go on.
    pub fn in_hand_ok(&self, variant: Variant) -> bool {
        self.trusted
            .is_some_and(|age| age < variant.in_hand_limit())
    }

    /// The lease the lane works under is still in the table.
    pub fn holds(&self, epoch: u8) -> bool {
        self.lease.is_some_and(|held| held.epoch == epoch)
    }

    /// New events may start under the lease.
    pub fn may_start(&self) -> bool {
        !self.stopping
            && self.new_work_ok()
            && self.lease.is_some_and(|held| !held.releasing && !held.cut)
    }

    /// The process considers the lease valid for work in hand and may act
    /// under it: work in hand, or free to start some (invariant 9). A lease
    /// being released with nothing in hand, or cut, lets it do nothing.
    pub fn trusts_lease(&self, variant: Variant) -> bool {
        let acts = |held: Held| {
            !held.cut && (self.lane != Lane::Idle || (!held.releasing && !self.stopping))
        };
        self.up && self.lease.is_some_and(acts) && self.in_hand_ok(variant)
    }

    /// One tick of the local clock.
    pub fn tick(&mut self) {
        if let Some(age) = &mut self.trusted {
            *age = (*age + 1).min(LEASE);
        }
    }

    /// The local clock lags one tick: as if one tick since the last
    /// renewal had not been counted.
    pub fn lag(&mut self) {
        if let Some(age) = &mut self.trusted {
            *age = age.saturating_sub(1);
        }
    }

    /// Renews at every tick: alive, not paused, not partitioned, and not
    /// past a SIGTERM cut (renewals stop there).
    pub fn renews(&self) -> bool {
        self.active()
            && self.renewing
            && self.trusted.is_some()
            && !(self.stopping && self.lease.is_some_and(|held| held.cut))
    }

    /// Moves the database time the process holds.
    pub fn shift(&mut self, delta: i8) {
        if self.up {
            self.x = (self.x + delta).max(-1);
        }
    }
}
