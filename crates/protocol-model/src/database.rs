//! The database: the documents of the spec, and the writes processes send
//! to it as messages. It applies one pending message at a time, in any
//! order (so writes are delayed and reordered), each atomically.
//!
//! Times are kept relative to the database clock `NOW`: a session's `rem` is
//! `expiresAt - NOW`, a message's `x` is `X - NOW`. A tick lowers them all by
//! one; a clock step moves them all. Values are floored at -1: only the sign
//! matters, and with one clock step of one tick per run a floored value
//! keeps its sign as the true one would.

use crate::ghost::Ghost;
use crate::variants::Variant;
use crate::{EVENTS, LEASE, MAX_SESSIONS};

/// `processors/{session}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionDoc {
    /// `expiresAt - NOW`.
    pub rem: i8,
    pub dead: bool,
    /// V7b only: `rem` as a lagging replica shows it (the version it last
    /// replicated).
    pub lagging_rem: i8,
}

/// `leases/bucket:0`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lease {
    pub owner: Option<u8>,
    pub epoch: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Queued,
    Processed,
    Failed,
}

/// A handler's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Success,
    Failure,
}

/// A result on the event (written by `record`, or by a close that carries
/// it) and in the outcome document: the claim token stands for the run
/// that produced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Record {
    pub token: u8,
    pub verdict: Verdict,
}

/// Which fenced write (`fencedBy = T/k`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Write {
    /// A failed result (a success goes to the outcome document first, and
    /// onto the event with the close).
    Record(Verdict),
    /// `record`: the result the close writes on the event (the outcome
    /// document's, after a success), or `None` when it is there already.
    /// `uncount`: the claim finds the run's outcome written and closes
    /// without running, so its attempt is not counted.
    Close {
        record: Option<Record>,
        uncount: bool,
    },
    ReleaseForRetry,
    HandBack,
}

impl Write {
    /// `Close` without a result: the event's record is already there.
    pub const CLOSE: Self = Self::Close {
        record: None,
        uncount: false,
    };

    fn k(self) -> u8 {
        match self {
            Self::Record(_) => 1,
            Self::Close { .. } => 2,
            Self::ReleaseForRetry => 3,
            Self::HandBack => 4,
        }
    }
}

/// `queued_events/{id}` (one patient, so `seq` = index + 1; never parked:
/// `ON_FAILURE=continue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    pub status: Status,
    pub epoch: u8,
    /// `(token, session)`.
    pub claim: Option<(u8, u8)>,
    pub rev: u8,
    pub attempts: u8,
    pub result: Option<Record>,
    /// `(token, k)`.
    pub fenced_by: Option<(u8, u8)>,
}

impl Event {
    const NEW: Self = Self {
        status: Status::Queued,
        epoch: 0,
        claim: None,
        rev: 0,
        attempts: 0,
        result: None,
        fenced_by: None,
    };
}

/// A write (or conditional update) a process sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Acquire {
        takeable: Option<u8>,
        epoch: u8,
    },
    Release {
        epoch: u8,
    },
    Claim {
        event: u8,
        token: u8,
        /// `None`: no `rev` condition (V3).
        rev: Option<u8>,
        epoch: u8,
    },
    Fenced {
        event: u8,
        token: u8,
        epoch: u8,
        write: Write,
    },
    /// The outcome document of a success, written before the close: an
    /// insert, not fenced (see [`Database::write_outcome`]).
    Outcome {
        event: u8,
        record: Record,
    },
}

/// Which of a process's waits a reply goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// Acquire, release.
    Keeper = 0,
    /// The lane's event writes.
    Lane = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Msg {
    pub from: u8,
    pub session: u8,
    pub op: Op,
    /// `X - NOW` of the sender's last renewal reply (fenced writes only).
    pub x: i8,
    /// `None`: nobody waits for the reply any more (timed out, crashed).
    pub reply_to: Option<Slot>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    /// A conditional write: whether it changed the document.
    Write(bool),
    /// The outcome insert: the outcome stored (this one, or one already
    /// there, read back after the duplicate-key refusal).
    Outcome(Record),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Database {
    pub sessions: [Option<SessionDoc>; MAX_SESSIONS],
    pub lease: Lease,
    /// `deployment.fencingEpoch`.
    pub fencing_epoch: u8,
    pub events: [Event; EVENTS],
    /// `processed_events`.
    pub outcomes: [Option<Record>; EVENTS],
    /// Messages not applied yet, sorted (the order carries no meaning).
    pub queue: Vec<Msg>,
}

impl Database {
    pub fn new() -> Self {
        Self {
            sessions: [None; MAX_SESSIONS],
            lease: Lease::default(),
            fencing_epoch: 0,
            events: [Event::NEW; EVENTS],
            outcomes: [None; EVENTS],
            queue: Vec::new(),
        }
    }

    pub fn send(&mut self, msg: Msg) {
        let at = self.queue.partition_point(|m| *m < msg);
        self.queue.insert(at, msg);
    }

    /// The patient's lowest-seq queued event.
    pub fn next_event(&self) -> Option<u8> {
        (0..EVENTS as u8).find(|&e| self.events[usize::from(e)].status == Status::Queued)
    }

    /// Moves every database time by `delta` (a tick is -1). `lagging`: the
    /// lagging replica's times are kept (V7b only, else they stay 0).
    pub fn shift(&mut self, delta: i8, lagging: bool) {
        for doc in self.sessions.iter_mut().flatten() {
            doc.rem = shift(doc.rem, delta);
            if lagging {
                doc.lagging_rem = shift(doc.lagging_rem, delta);
            }
        }
        for msg in &mut self.queue {
            msg.x = shift(msg.x, delta);
        }
        self.queue.sort();
    }

    /// join(s): upsert `processors/s = {expiresAt: NOW + L, dead: false}`.
    /// `lagging`: V7b keeps what a lagging replica shows (else it stays 0).
    pub fn join(&mut self, session: u8, lagging: bool) {
        self.sessions[usize::from(session)] = Some(SessionDoc {
            rem: LEASE as i8,
            dead: false,
            lagging_rem: if lagging { LEASE as i8 } else { 0 },
        });
    }

    /// V7b: the lagging replica catches up with the primary.
    pub fn replicate(&mut self) -> bool {
        let mut changed = false;
        for doc in self.sessions.iter_mut().flatten() {
            changed |= doc.lagging_rem != doc.rem;
            doc.lagging_rem = doc.rem;
        }
        changed
    }

    /// renew(s): `if !dead && NOW < expiresAt then expiresAt = NOW + L`.
    pub fn renew(&mut self, session: u8) -> bool {
        match &mut self.sessions[usize::from(session)] {
            Some(doc) if !doc.dead && doc.rem > 0 => {
                doc.rem = LEASE as i8;
                true
            }
            _ => false,
        }
    }

    /// kill(s), evaluated at the primary on its latest state: `expiresAt <=
    /// NOW` (the complement of renew's `NOW < expiresAt`: with whole ticks,
    /// `<` would leave a tick in which the session is neither renewable nor
    /// killable, a margin continuous time does not have). A missing
    /// document counts as dead.
    pub fn kill(&mut self, victim: u8, ghost: &mut Ghost) -> bool {
        let dead = match &mut self.sessions[usize::from(victim)] {
            None => true,
            Some(doc) => {
                if doc.rem <= 0 {
                    doc.dead = true;
                }
                doc.dead
            }
        };
        if dead {
            ghost.killed |= 1 << victim;
        }
        dead
    }

    /// `++deployment.fencingEpoch`.
    pub fn bump(&mut self) -> u8 {
        self.fencing_epoch += 1;
        self.fencing_epoch
    }

    /// leave(s): delete `processors/s` only if it holds no lease; others
    /// only an hour after they expired (never within the model's horizon).
    /// V7a: by the leaving node's wall clock, which may be an hour ahead:
    /// every session, its own too even if it holds a lease.
    pub fn leave(&mut self, session: u8, variant: Variant) {
        if variant == Variant::LeaveByLocalClock {
            self.sessions = [None; MAX_SESSIONS];
        } else if self.lease.owner != Some(session) {
            self.sessions[usize::from(session)] = None;
        }
    }

    /// The outcome upsert: insert if absent (the same run present: done);
    /// returns the outcome stored. After a record, its content is a function
    /// of the record, so it is written atomically by whoever holds the
    /// record, any number of times. A success's is sent before any record
    /// (as [`Op::Outcome`]) and may land late, after its sender lost the
    /// bucket: the first one stored is the run's, and the close copies it.
    pub fn write_outcome(&mut self, event: u8, record: Record) -> Record {
        *self.outcomes[usize::from(event)].get_or_insert(record)
    }

    /// Applies one message atomically, as the primary would.
    pub fn apply(&mut self, msg: &Msg, variant: Variant, ghost: &mut Ghost) -> Reply {
        let me = msg.session;
        // The spec's `NOW < X` on every processor write about an event.
        let in_time = !variant.fences_by_time() || msg.x > 0;
        match msg.op {
            Op::Acquire { takeable, epoch } => {
                let lease = &mut self.lease;
                let free = lease.owner.is_none() || lease.owner == takeable;
                let applies = if variant.global_epoch() {
                    free && lease.epoch < epoch
                } else {
                    free
                };
                if applies {
                    if lease.owner.is_some() {
                        ghost.takeover = true;
                    }
                    lease.owner = Some(me);
                    lease.epoch = if variant.global_epoch() {
                        epoch
                    } else {
                        lease.epoch + 1
                    };
                    ghost.killed_lease_write |= ghost.is_killed(me);
                }
                Reply::Write(applies)
            }
            Op::Release { epoch } => {
                let applies = self.lease.owner == Some(me) && self.lease.epoch == epoch;
                if applies {
                    self.lease.owner = None;
                    ghost.killed_lease_write |= ghost.is_killed(me);
                }
                Reply::Write(applies)
            }
            Op::Claim {
                event,
                token,
                rev,
                epoch,
            } => {
                let doc = &mut self.events[usize::from(event)];
                let applies = doc.status == Status::Queued
                    && doc.epoch <= epoch
                    && rev.is_none_or(|r| doc.rev == r)
                    && in_time;
                if applies {
                    doc.epoch = epoch;
                    doc.claim = Some((token, me));
                    doc.rev += 1;
                    if doc.result.is_none() {
                        doc.attempts += 1;
                        ghost.counted_twice |= ghost.token(token).counted;
                        ghost.token_mut(token).counted = true;
                    }
                    ghost.stale_event_write |= ghost.is_killed(me);
                    ghost.claimed_after_reseed |= ghost.reseeded;
                }
                Reply::Write(applies)
            }
            Op::Outcome { event, record } => Reply::Outcome(self.write_outcome(event, record)),
            Op::Fenced {
                event,
                token,
                epoch,
                write,
            } => {
                let doc = &mut self.events[usize::from(event)];
                let applies = doc.status == Status::Queued
                    && doc.epoch == epoch
                    && doc.claim.is_some_and(|(t, _)| t == token)
                    && in_time;
                if applies {
                    match write {
                        Write::Record(verdict) => doc.result = Some(Record { token, verdict }),
                        Write::Close { record, uncount } => {
                            if record.is_some() {
                                doc.result = record;
                            }
                            if uncount {
                                doc.attempts -= 1;
                                ghost.token_mut(token).counted = false;
                            }
                            doc.status = match doc.result {
                                Some(Record {
                                    verdict: Verdict::Success,
                                    ..
                                }) => Status::Processed,
                                _ => Status::Failed,
                            }
                        }
                        Write::ReleaseForRetry => doc.claim = None,
                        Write::HandBack => {
                            doc.claim = None;
                            if doc.result.is_none() {
                                doc.attempts -= 1;
                                ghost.token_mut(token).counted = false;
                            }
                        }
                    }
                    doc.fenced_by = Some((token, write.k()));
                    doc.rev += 1;
                    ghost.stale_event_write |= ghost.is_killed(me);
                }
                Reply::Write(applies)
            }
        }
    }

    /// The read-back of a fenced write that changed nothing (or whose reply
    /// was lost).
    pub fn fenced_write_fate(&self, event: u8, token: u8, epoch: u8, write: Write) -> Fate {
        let doc = &self.events[usize::from(event)];
        if doc.fenced_by == Some((token, write.k())) {
            Fate::Applied
        } else if doc.epoch == epoch
            && doc.claim.is_some_and(|(t, _)| t == token)
            && doc.status == Status::Queued
        {
            Fate::StillOurs
        } else {
            Fate::Lost
        }
    }
}

impl Default for Database {
    fn default() -> Self {
        Self::new()
    }
}

/// What the read-back of a fenced write says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// `fencedBy == T/k`: it had applied (lost reply).
    Applied,
    /// Still our claim, refused only by time: retry with a fresh `X`.
    StillOurs,
    /// Another owner holds it: drop the bucket.
    Lost,
}

fn shift(value: i8, delta: i8) -> i8 {
    (value + delta).max(-1)
}
