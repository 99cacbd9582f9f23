//! The session and lease keeper of a process: join and renew, acquire
//! (kill, epoch, conditional write, read-back), hand-over and shutdown.

use crate::database::{Op, Reply, Slot, Write};
use crate::model::State;
use crate::process::{Held, Keeper, Lane, Process, Wait};
use crate::variants::{Config, Variant};

impl State {
    /// The process starts and joins under a fresh session.
    pub(crate) fn start(&mut self, config: &Config, p: usize) -> bool {
        self.procs[p] = Process {
            up: true,
            ..Process::DOWN
        };
        self.join(config, p);
        true
    }

    fn join(&mut self, config: &Config, p: usize) {
        let session = self.next_session;
        self.next_session += 1;
        self.db
            .join(session, config.variant == Variant::TakeoverFromLaggingRead);
        let process = &mut self.procs[p];
        process.session = session;
        process.trusted = Some(0);
        process.x = crate::LEASE as i8;
    }

    /// A renewal (at a tick). Refused: the session is dead (paused or cut
    /// off past the lease): every lease is dropped at once, work in hand
    /// abandoned, and the process joins again under a fresh session.
    pub(crate) fn renew(&mut self, config: &Config, p: usize) {
        if self.db.renew(self.procs[p].session) {
            let process = &mut self.procs[p];
            process.trusted = Some(0);
            process.x = crate::LEASE as i8;
            return;
        }
        self.ghost.fault(self.procs[p].lane.token());
        self.orphan(p, None);
        let process = &mut self.procs[p];
        process.lane = Lane::Idle;
        process.keeper = Keeper::Idle;
        process.lease = None;
        if process.stopping || self.next_session >= config.sessions {
            // Stopping anyway, or (a bound of the model) no session id left.
            self.go_down(p);
        } else {
            self.join(config, p);
        }
    }

    /// The keeper takes the bucket: reads the lease; a lease held by
    /// another session is taken only if a kill at the primary says that
    /// session is dead (V7b: if a possibly lagging read says it expired).
    /// Then the epoch, then the conditional write (a message).
    pub(crate) fn acquire(&mut self, config: &Config, p: usize) -> bool {
        let takeable = match self.db.lease.owner {
            None => None,
            Some(owner) if owner == self.procs[p].session => return false,
            Some(victim) if config.variant.kills_before_takeover() => {
                if !self.db.kill(victim, &mut self.ghost) {
                    return false;
                }
                Some(victim)
            }
            Some(victim) => {
                let expired =
                    self.db.sessions[usize::from(victim)].is_none_or(|doc| doc.lagging_rem <= 0);
                if !expired {
                    return false;
                }
                Some(victim)
            }
        };
        let epoch = if config.variant.global_epoch() {
            if self.db.fencing_epoch >= config.epochs {
                return false;
            }
            self.db.bump()
        } else {
            // V8: the write takes the lease's own `epoch + 1`.
            if self.db.lease.epoch >= config.epochs {
                return false;
            }
            0
        };
        self.procs[p].keeper = Keeper::Acquiring;
        self.send(p, Some(Slot::Keeper), Op::Acquire { takeable, epoch });
        true
    }

    pub(crate) fn keeper_reply(&mut self, config: &Config, p: usize, wait: Wait) -> bool {
        let keeper = std::mem::replace(&mut self.procs[p].keeper, Keeper::Idle);
        match keeper {
            // Reply or not, read back which lease names us.
            Keeper::Acquiring => {
                self.adopt_named(p);
            }
            Keeper::Releasing { epoch } => {
                let applied = wait == Wait::Replied(Reply::Write(true));
                let forget = wait == Wait::Lost && config.variant == Variant::ForgetOnFailedRelease;
                let lease = self.db.lease;
                let ours = lease.owner == Some(self.procs[p].session) && lease.epoch == epoch;
                if applied || forget || !ours {
                    self.released(p, epoch);
                } else {
                    // Not applied yet: again, until applied or not ours.
                    self.procs[p].keeper = Keeper::Releasing { epoch };
                    self.send(p, Some(Slot::Keeper), Op::Release { epoch });
                }
            }
            Keeper::Idle => return false,
        }
        true
    }

    /// The read-back: adopt the lease if it names our session (and is not
    /// an epoch we gave up).
    pub(crate) fn adopt_named(&mut self, p: usize) -> bool {
        let lease = self.db.lease;
        let process = &mut self.procs[p];
        if process.lease.is_none()
            && lease.owner == Some(process.session)
            && lease.epoch > process.retired
        {
            process.lease = Some(Held {
                epoch: lease.epoch,
                releasing: false,
                cut: false,
            });
            return true;
        }
        false
    }

    /// Releases the lease: a hand-over once nothing is in hand under it, or
    /// a shutdown with nothing cut. V1: a hand-over aborts the work in hand
    /// (hands it back) and releases at once.
    pub(crate) fn release(&mut self, p: usize) -> bool {
        let Some(held) = self.procs[p].lease else {
            return false;
        };
        if self.procs[p].lane != Lane::Idle {
            self.hand_back_and_drop(p);
        }
        self.procs[p].keeper = Keeper::Releasing { epoch: held.epoch };
        self.send(p, Some(Slot::Keeper), Op::Release { epoch: held.epoch });
        true
    }

    fn released(&mut self, p: usize, epoch: u8) {
        let process = &mut self.procs[p];
        process.lease = None;
        process.retired = process.retired.max(epoch);
        if !process.stopping {
            self.ghost.handed_over = true;
        }
    }

    /// The lane's work is dropped (its handler no longer awaited) and its
    /// claim handed back, fire and forget.
    fn hand_back_and_drop(&mut self, p: usize) {
        let lane = self.procs[p].lane;
        self.orphan(p, Some(Slot::Lane));
        if let Some((event, token, epoch)) = lane.unrecorded_claim() {
            self.send(
                p,
                None,
                Op::Fenced {
                    event,
                    token,
                    epoch,
                    write: Write::HandBack,
                },
            );
        }
        self.procs[p].lane = Lane::Idle;
    }

    /// SIGTERM's grace is over: the work in hand is cut (handler dropped,
    /// event handed back), and the lease it ran under is not released.
    pub(crate) fn cut(&mut self, p: usize) -> bool {
        self.ghost.fault(self.procs[p].lane.token());
        self.ghost.cut = true;
        self.hand_back_and_drop(p);
        if let Some(held) = &mut self.procs[p].lease {
            held.cut = true;
        }
        true
    }

    /// Graceful stop, nothing left to release: leave (delete the session if
    /// it holds no lease) and exit.
    pub(crate) fn leave(&mut self, config: &Config, p: usize) -> bool {
        self.db.leave(self.procs[p].session, config.variant);
        self.go_down(p);
        true
    }
}
