//! The patient's lane: find, claim (rev CAS, same token on retry), run the
//! handler (a delivery); after a success the outcome document, then the
//! close carrying the result; after a final failure record, outcome, close;
//! release for retry and hand back. Every event write is fenced (epoch,
//! token, `NOW < X`); the outcome document is not.

use crate::database::{Fate, Op, Record, Reply, Slot, Verdict, Write};
use crate::downstream::Answer;
use crate::model::State;
use crate::process::{Lane, Wait};
use crate::variants::{Config, Variant};

impl State {
    /// Finds the patient's lowest-seq queued event and claims it.
    pub(crate) fn find(&mut self, config: &Config, p: usize) -> bool {
        let Some(event) = self.db.next_event() else {
            return false;
        };
        let Some(held) = self.procs[p].lease else {
            return false;
        };
        let doc = self.db.events[usize::from(event)];
        if doc.epoch > held.epoch {
            // The bucket has a newer owner.
            self.procs[p].lease = None;
            return true;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.ghost.token_mut(token).event = event;
        self.procs[p].lane = Lane::Claiming {
            event,
            token,
            rev: doc.rev,
            epoch: held.epoch,
            attempts: doc.attempts + u8::from(doc.result.is_none()),
            record: doc.result,
        };
        self.send_claim(config, p);
        true
    }

    fn send_claim(&mut self, config: &Config, p: usize) {
        let Lane::Claiming {
            event,
            token,
            rev,
            epoch,
            ..
        } = self.procs[p].lane
        else {
            unreachable!("not claiming");
        };
        let rev = config.variant.claim_checks_rev().then_some(rev);
        self.send(
            p,
            Some(Slot::Lane),
            Op::Claim {
                event,
                token,
                rev,
                epoch,
            },
        );
    }

    pub(crate) fn lane_reply(&mut self, config: &Config, p: usize, wait: Wait) -> bool {
        match self.procs[p].lane {
            Lane::Claiming { event, token, .. } => {
                let ours = self.db.events[usize::from(event)]
                    .claim
                    .is_some_and(|(t, _)| t == token);
                match wait {
                    Wait::Replied(Reply::Write(true)) => self.claimed(config, p),
                    Wait::Lost if config.variant != Variant::ReclaimWithNewToken => {
                        // The same claim again (same token, same rev): at
                        // most one copy can apply.
                        self.send_claim(config, p);
                        true
                    }
                    // Not applied (or, V3, an error): read the event. Our
                    // token: an earlier copy applied. Else it changed (V3:
                    // or our copy has not applied yet): find again.
                    _ if ours => {
                        self.ghost.claim_recovered = true;
                        self.claimed(config, p)
                    }
                    _ => {
                        self.procs[p].lane = Lane::Idle;
                        true
                    }
                }
            }
            Lane::Writing {
                event,
                token,
                epoch,
                write,
            } => {
                let fate = if wait == Wait::Replied(Reply::Write(true)) {
                    Fate::Applied
                } else {
                    self.db.fenced_write_fate(event, token, epoch, write)
                };
                match fate {
                    Fate::Applied => self.written(config, p),
                    Fate::StillOurs if self.may_go_on(config, p, epoch) => {
                        self.send_write(p);
                        true
                    }
                    Fate::StillOurs => self.abandon(p),
                    Fate::Lost => self.drop_bucket(p),
                }
            }
            Lane::Outcome {
                event,
                token,
                epoch,
            } => match wait {
                // The outcome stored (ours, or an earlier claim's of this
                // run): the close writes it on the event.
                Wait::Replied(Reply::Outcome(stored)) if self.may_go_on(config, p, epoch) => {
                    let close = Write::Close {
                        record: Some(stored),
                        uncount: false,
                    };
                    self.start_write(p, event, token, epoch, close);
                    true
                }
                Wait::Replied(_) => self.abandon(p),
                _ if self.may_go_on(config, p, epoch) => {
                    self.send_outcome(p);
                    true
                }
                _ => self.abandon(p),
            },
            Lane::Idle | Lane::Delivering { .. } => false,
        }
    }

    /// The claim applied: check the local view again, then run the handler
    /// (or only finish the bookkeeping of a recorded event).
    fn claimed(&mut self, config: &Config, p: usize) -> bool {
        let Lane::Claiming {
            event,
            token,
            epoch,
            attempts,
            record,
            ..
        } = self.procs[p].lane
        else {
            unreachable!("not claiming");
        };
        let process = &self.procs[p];
        if !(process.may_start() && process.holds(epoch)) {
            // The reply came after the view for new work ended.
            self.start_write(p, event, token, epoch, Write::HandBack);
            return true;
        }
        if let Some(record) = record {
            // Recorded by an earlier run that did not close it: only the
            // bookkeeping is left.
            return self.outcome_then_close(config, p, event, token, epoch, record);
        }
        if attempts >= 2 && config.variant != Variant::NoOutcomeLookup {
            // An earlier claim of this run may have stored a success's
            // outcome and stopped before its close: read it (a read, at
            // this step) and close from it, without running again.
            if let Some(found) = self.db.outcomes[usize::from(event)] {
                self.ghost.closed_from_outcome = true;
                let close = Write::Close {
                    record: Some(found),
                    uncount: true,
                };
                self.start_write(p, event, token, epoch, close);
                return true;
            }
        }
        if attempts > config.max_attempts {
            // Every earlier attempt died with its processor: give it up.
            self.ghost.token_mut(token).gave_up = true;
            self.start_write(p, event, token, epoch, Write::Record(Verdict::Failure));
            return true;
        }
        if self.downstream.deliveries.len() >= usize::from(config.deliveries) {
            // A bound of the model: no more deliveries in this run.
            return false;
        }
        self.ghost.rerun_after_record |= self.db.events[usize::from(event)].result.is_some()
            || self.db.outcomes[usize::from(event)].is_some();
        self.ghost.token_mut(token).run = true;
        let (delivery, answer) = self.downstream.arrive(event, epoch, token);
        self.procs[p].lane = Lane::Delivering {
            event,
            token,
            epoch,
            attempts,
            delivery,
            answer,
        };
        true
    }

    /// The handler's answer.
    pub(crate) fn handle(&mut self, config: &Config, p: usize) -> bool {
        let Lane::Delivering {
            event,
            token,
            epoch,
            attempts,
            answer: Some(answer),
            ..
        } = self.procs[p].lane
        else {
            return false;
        };
        if answer == Answer::Conflict {
            // 409: another owner has it. Not a failed attempt.
            return self.drop_bucket(p);
        }
        if !self.may_go_on(config, p, epoch) {
            // Write nothing: another process may own the bucket by now.
            return self.abandon(p);
        }
        let write = match answer {
            Answer::Ok => {
                self.procs[p].lane = Lane::Outcome {
                    event,
                    token,
                    epoch,
                };
                self.send_outcome(p);
                return true;
            }
            _ if attempts < config.max_attempts => Write::ReleaseForRetry,
            _ => Write::Record(Verdict::Failure),
        };
        self.start_write(p, event, token, epoch, write);
        true
    }

    /// Sends (or sends again: the same insert) a success's outcome document.
    fn send_outcome(&mut self, p: usize) {
        let Lane::Outcome { event, token, .. } = self.procs[p].lane else {
            unreachable!("not writing an outcome");
        };
        let record = Record {
            token,
            verdict: Verdict::Success,
        };
        self.send(p, Some(Slot::Lane), Op::Outcome { event, record });
    }

    /// Work in hand may go on: the lease is still in the table and the
    /// local view for work in hand holds.
    fn may_go_on(&self, config: &Config, p: usize, epoch: u8) -> bool {
        let process = &self.procs[p];
        process.holds(epoch) && process.in_hand_ok(config.variant)
    }

    fn start_write(&mut self, p: usize, event: u8, token: u8, epoch: u8, write: Write) {
        self.procs[p].lane = Lane::Writing {
            event,
            token,
            epoch,
            write,
        };
        self.send_write(p);
    }

    /// Sends (or sends again, with a fresh `X`) the lane's fenced write.
    fn send_write(&mut self, p: usize) {
        let Lane::Writing {
            event,
            token,
            epoch,
            write,
        } = self.procs[p].lane
        else {
            unreachable!("not writing");
        };
        self.send(
            p,
            Some(Slot::Lane),
            Op::Fenced {
                event,
                token,
                epoch,
                write,
            },
        );
    }

    /// Writes the outcome from the record (atomic, idempotent), then sends
    /// the close if the local view for work in hand still holds.
    fn outcome_then_close(
        &mut self,
        config: &Config,
        p: usize,
        event: u8,
        token: u8,
        epoch: u8,
        record: Record,
    ) -> bool {
        // A success's outcome sent by an earlier claim of this run may have
        // landed first (late): that delivery committed, so the close writes
        // its result over the record, and the event agrees with its outcome.
        let stored = self.db.write_outcome(event, record);
        self.ghost.late_success_taken |= stored != record;
        if self.may_go_on(config, p, epoch) {
            let takes_stored = stored != record && config.variant != Variant::CloseKeepsRecord;
            let close = Write::Close {
                record: takes_stored.then_some(stored),
                uncount: false,
            };
            self.start_write(p, event, token, epoch, close);
            true
        } else {
            self.abandon(p)
        }
    }

    /// A fenced write is known applied: the next step of the event.
    fn written(&mut self, config: &Config, p: usize) -> bool {
        let Lane::Writing {
            event,
            token,
            epoch,
            write,
        } = self.procs[p].lane
        else {
            unreachable!("not writing");
        };
        self.procs[p].lane = Lane::Idle;
        match write {
            Write::Record(verdict) => {
                let record = Record { token, verdict };
                self.outcome_then_close(config, p, event, token, epoch, record)
            }
            Write::Close { .. } | Write::ReleaseForRetry | Write::HandBack => true,
        }
    }

    /// The lane stops and writes nothing more: its local view ran out or
    /// its lease is gone (a fault: lost renewals, pause, lost session).
    fn abandon(&mut self, p: usize) -> bool {
        self.ghost.fault(self.procs[p].lane.token());
        self.orphan(p, Some(Slot::Lane));
        self.procs[p].lane = Lane::Idle;
        true
    }

    /// Another owner holds the bucket: the lane stops and the bucket is
    /// dropped from the table.
    fn drop_bucket(&mut self, p: usize) -> bool {
        self.orphan(p, Some(Slot::Lane));
        let process = &mut self.procs[p];
        process.lane = Lane::Idle;
        process.lease = None;
        true
    }
}
