//! The whole system as one state machine: two processes, the database, the
//! downstream, the budgets of faults left, and the ghost variables. Every
//! action is one atomic step of one actor (a process, the database, the
//! downstream, the clock, the operator).

use stateright::{Model, Property};

use crate::database::{Database, Lease, Msg, Op, Slot};
use crate::downstream::{DeliveryState, Downstream};
use crate::ghost::Ghost;
use crate::process::{Keeper, Lane, Process, Wait};
use crate::variants::{Budget, ClockFault, Config, Variant};
use crate::{PROCS, invariants};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub db: Database,
    pub procs: [Process; PROCS],
    pub downstream: Downstream,
    /// Faults and operator actions left in this run.
    pub budget: Budget,
    pub ghost: Ghost,
    /// Session ids are fresh per join: the next one.
    pub next_session: u8,
    /// Claim tokens are fresh per claim: the next one (from 1).
    pub next_token: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Time passes: the database clock and every local clock advance.
    Tick,
    /// The process's local clock lags a tick (the run's clock fault).
    Lag(u8),
    /// The database clock steps (failover; the run's clock fault).
    Step {
        forward: bool,
    },
    /// The process (re)starts under a fresh session.
    Start(u8),
    Crash(u8),
    Pause(u8),
    Resume(u8),
    Sigterm(u8),
    /// The shutdown grace is over: work in hand is cut.
    Cut(u8),
    /// The fair share shrank: hand the bucket over.
    HandOver(u8),
    /// The process's renewals stop reaching the database (lost renewals).
    Partition(u8),
    Heal(u8),
    /// V7b: the lagging replica catches up.
    Replicate,
    /// The process handles the reply (or the lost reply) of a wait.
    Receive(u8, Slot),
    /// The process gives up waiting (the message may still apply).
    Timeout(u8, Slot),
    /// The keeper starts taking the bucket.
    Acquire(u8),
    /// The keeper's periodic read-back adopts a lease naming it.
    Adopt(u8),
    /// The keeper releases the lease (hand-over or shutdown).
    Release(u8),
    /// A stopping process with nothing left to release leaves and exits.
    Leave(u8),
    /// The lane finds the patient's next event and claims it.
    Find(u8),
    /// The lane handles the handler's answer.
    Handle(u8),
    /// The database applies a pending message (its reply possibly lost).
    Apply {
        index: u8,
        lose_reply: bool,
    },
    /// A message nobody waits for is lost in the network.
    Drop(u8),
    /// The downstream commits (or fails) an open delivery.
    Downstream {
        delivery: u8,
        commit: bool,
    },
    /// Operator: the bucket count changes; leases deleted and reseeded.
    Reseed,
}

/// The model of one check.
#[derive(Clone, Debug)]
pub struct ProtocolModel {
    pub config: Config,
}

impl ProtocolModel {
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    pub fn variant(&self) -> Variant {
        self.config.variant
    }
}

impl State {
    pub fn new(config: &Config) -> Self {
        Self {
            db: Database::new(),
            procs: [Process::DOWN; PROCS],
            downstream: Downstream::default(),
            budget: config.budget,
            ghost: Ghost::default(),
            next_session: 0,
            next_token: 1,
        }
    }

    /// Sends a message from process `p`; `slot`: where it waits for the
    /// reply (`None`: fire and forget).
    pub(crate) fn send(&mut self, p: usize, slot: Option<Slot>, op: Op) {
        let process = &mut self.procs[p];
        if let Some(slot) = slot {
            debug_assert!(process.wait(slot) == Wait::Idle, "{slot:?} busy");
            process.set_wait(slot, Wait::Pending);
        }
        self.db.send(Msg {
            from: p as u8,
            session: process.session,
            op,
            x: process.x,
            reply_to: slot,
        });
    }

    /// Process `p` stops waiting on `slot` (every slot: `None`): its
    /// messages still in the queue become orphans (they may still apply).
    pub(crate) fn orphan(&mut self, p: usize, slot: Option<Slot>) {
        let mut changed = false;
        for msg in &mut self.db.queue {
            if usize::from(msg.from) == p
                && msg.reply_to.is_some()
                && (slot.is_none() || msg.reply_to == slot)
            {
                msg.reply_to = None;
                changed = true;
            }
        }
        if changed {
            self.db.queue.sort();
        }
        let process = &mut self.procs[p];
        match slot {
            Some(slot) => process.set_wait(slot, Wait::Idle),
            None => process.waits = [Wait::Idle; 2],
        }
    }

    /// The process is gone (crashed or exited): nothing waits any more.
    pub(crate) fn go_down(&mut self, p: usize) {
        self.orphan(p, None);
        self.procs[p] = Process::DOWN;
    }

    fn tick(&mut self, config: &Config) {
        self.db
            .shift(-1, config.variant == Variant::TakeoverFromLaggingRead);
        for process in &mut self.procs {
            process.tick();
            process.shift(-1);
        }
        for p in 0..PROCS {
            if self.procs[p].renews() {
                self.renew(config, p);
            }
            // Work in hand whose local view ran out is abandoned: a fault
            // (lost renewals, a pause), whenever the lane notices.
            let process = &self.procs[p];
            if process.up && !process.in_hand_ok(config.variant) {
                self.ghost.fault(process.lane.token());
            }
        }
    }

    fn step_clock(&mut self, config: &Config, forward: bool) {
        let delta = if forward { -1 } else { 1 };
        self.db
            .shift(delta, config.variant == Variant::TakeoverFromLaggingRead);
        for process in &mut self.procs {
            process.shift(delta);
        }
    }

    fn apply(&mut self, config: &Config, index: usize, lose_reply: bool) {
        let msg = self.db.queue.remove(index);
        let reply = self.db.apply(&msg, config.variant, &mut self.ghost);
        if let Some(slot) = msg.reply_to {
            let process = &mut self.procs[usize::from(msg.from)];
            debug_assert!(process.wait(slot) == Wait::Pending);
            process.set_wait(
                slot,
                if lose_reply {
                    self.budget.lost_replies -= 1;
                    Wait::Lost
                } else {
                    Wait::Replied(reply)
                },
            );
        }
    }

    /// The reply (or the error) of a wait reaches its state machine.
    fn receive(&mut self, config: &Config, p: usize, slot: Slot, wait: Wait) -> bool {
        self.procs[p].set_wait(slot, Wait::Idle);
        match slot {
            Slot::Keeper => self.keeper_reply(config, p, wait),
            Slot::Lane => self.lane_reply(config, p, wait),
        }
    }

    fn finish_delivery(&mut self, delivery: u8, commit: bool) {
        if !commit {
            self.budget.handler_failures -= 1;
        }
        let answer = self.downstream.finish(delivery, commit, &mut self.ghost);
        for process in &mut self.procs {
            if let Lane::Delivering {
                delivery: d,
                answer: a @ None,
                ..
            } = &mut process.lane
            {
                if *d == delivery {
                    *a = Some(answer);
                }
            }
        }
    }
}

impl ProtocolModel {
    fn process_actions(&self, state: &State, p: usize, actions: &mut Vec<Action>) {
        let config = &self.config;
        let variant = config.variant;
        let process = &state.procs[p];
        let id = p as u8;
        if !process.up {
            if state.next_session < config.sessions {
                actions.push(Action::Start(id));
            }
            return;
        }
        if state.budget.crashes > 0 {
            actions.push(Action::Crash(id));
        }
        if process.paused {
            actions.push(Action::Resume(id));
            return;
        }
        if state.budget.pauses > 0 {
            actions.push(Action::Pause(id));
        }
        if config.clock == ClockFault::Drift
            && !state.ghost.clock_fault_used
            && process.trusted.is_some_and(|age| age > 0)
        {
            actions.push(Action::Lag(id));
        }
        if process.renewing && state.budget.partitions > 0 {
            actions.push(Action::Partition(id));
        }
        if !process.renewing {
            actions.push(Action::Heal(id));
        }
        for slot in [Slot::Keeper, Slot::Lane] {
            match process.wait(slot) {
                Wait::Replied(_) | Wait::Lost => actions.push(Action::Receive(id, slot)),
                Wait::Pending if state.budget.lost_replies > 0 => {
                    actions.push(Action::Timeout(id, slot))
                }
                _ => {}
            }
        }
        if !process.stopping && state.budget.sigterms > 0 {
            actions.push(Action::Sigterm(id));
        }
        if process.stopping && process.lane != Lane::Idle {
            actions.push(Action::Cut(id));
        }
        let keeper_free =
            process.keeper == Keeper::Idle && process.wait(Slot::Keeper) == Wait::Idle;
        match process.lease {
            None if keeper_free => {
                if process.stopping {
                    if process.lane == Lane::Idle {
                        actions.push(Action::Leave(id));
                    }
                } else {
                    let lease = state.db.lease;
                    if process.new_work_ok() && lease.owner != Some(process.session) {
                        actions.push(Action::Acquire(id));
                    }
                    if lease.owner == Some(process.session) && lease.epoch > process.retired {
                        actions.push(Action::Adopt(id));
                    }
                }
            }
            Some(held) => {
                if !process.stopping && !held.releasing && !held.cut && state.budget.handovers > 0 {
                    actions.push(Action::HandOver(id));
                }
                let releasing = held.releasing || process.stopping;
                let lane_free = process.lane == Lane::Idle
                    || (variant == Variant::HandOverAborts && held.releasing && !process.stopping);
                if keeper_free && releasing && !held.cut && lane_free {
                    actions.push(Action::Release(id));
                }
                if keeper_free && held.cut && process.stopping && process.lane == Lane::Idle {
                    actions.push(Action::Leave(id));
                }
                if process.lane == Lane::Idle
                    && process.wait(Slot::Lane) == Wait::Idle
                    && process.may_start()
                    && state.next_token <= config.tokens
                    && state.db.next_event().is_some()
                {
                    actions.push(Action::Find(id));
                }
            }
            None => {}
        }
        if let Lane::Delivering {
            answer: Some(_), ..
        } = process.lane
        {
            actions.push(Action::Handle(id));
        }
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State::new(&self.config)]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        let config = &self.config;
        actions.push(Action::Tick);
        if config.clock == ClockFault::Step && !state.ghost.clock_fault_used {
            actions.push(Action::Step { forward: true });
            actions.push(Action::Step { forward: false });
        }
        if config.variant == Variant::TakeoverFromLaggingRead {
            actions.push(Action::Replicate);
        }
        for p in 0..PROCS {
            self.process_actions(state, p, actions);
        }
        for (index, msg) in state.db.queue.iter().enumerate() {
            let index = index as u8;
            actions.push(Action::Apply {
                index,
                lose_reply: false,
            });
            if msg.reply_to.is_some() && state.budget.lost_replies > 0 {
                actions.push(Action::Apply {
                    index,
                    lose_reply: true,
                });
            }
            if msg.reply_to.is_none() {
                actions.push(Action::Drop(index));
            }
        }
        for (delivery, d) in state.downstream.deliveries.iter().enumerate() {
            if d.state == DeliveryState::Open {
                let delivery = delivery as u8;
                actions.push(Action::Downstream {
                    delivery,
                    commit: true,
                });
                if state.budget.handler_failures > 0 {
                    actions.push(Action::Downstream {
                        delivery,
                        commit: false,
                    });
                }
            }
        }
        if state.budget.reseeds > 0 && state.procs.iter().all(|p| !p.up) {
            actions.push(Action::Reseed);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let config = &self.config;
        let mut state = last.clone();
        let changed = match action {
            Action::Tick => {
                state.tick(config);
                true
            }
            Action::Lag(p) => {
                state.procs[usize::from(p)].lag();
                state.ghost.clock_fault_used = true;
                true
            }
            Action::Step { forward } => {
                state.step_clock(config, forward);
                state.ghost.clock_fault_used = true;
                true
            }
            Action::Start(p) => state.start(config, usize::from(p)),
            Action::Crash(p) => {
                let p = usize::from(p);
                state.budget.crashes -= 1;
                state.ghost.fault(state.procs[p].lane.token());
                state.go_down(p);
                true
            }
            Action::Pause(p) => {
                let p = usize::from(p);
                state.budget.pauses -= 1;
                state.ghost.fault(state.procs[p].lane.token());
                state.procs[p].paused = true;
                true
            }
            Action::Resume(p) => {
                state.procs[usize::from(p)].paused = false;
                true
            }
            Action::Sigterm(p) => {
                state.budget.sigterms -= 1;
                state.procs[usize::from(p)].stopping = true;
                true
            }
            Action::Cut(p) => state.cut(usize::from(p)),
            Action::HandOver(p) => {
                state.budget.handovers -= 1;
                if let Some(held) = &mut state.procs[usize::from(p)].lease {
                    held.releasing = true;
                }
                true
            }
            Action::Partition(p) => {
                state.budget.partitions -= 1;
                state.procs[usize::from(p)].renewing = false;
                true
            }
            Action::Heal(p) => {
                state.procs[usize::from(p)].renewing = true;
                true
            }
            Action::Replicate => state.db.replicate(),
            Action::Receive(p, slot) => {
                let p = usize::from(p);
                let wait = state.procs[p].wait(slot);
                state.receive(config, p, slot, wait)
            }
            Action::Timeout(p, slot) => {
                let p = usize::from(p);
                state.budget.lost_replies -= 1;
                state.orphan(p, Some(slot));
                state.receive(config, p, slot, Wait::Lost)
            }
            Action::Acquire(p) => state.acquire(config, usize::from(p)),
            Action::Adopt(p) => state.adopt_named(usize::from(p)),
            Action::Release(p) => state.release(usize::from(p)),
            Action::Leave(p) => state.leave(config, usize::from(p)),
            Action::Find(p) => state.find(config, usize::from(p)),
            Action::Handle(p) => state.handle(config, usize::from(p)),
            Action::Apply { index, lose_reply } => {
                state.apply(config, usize::from(index), lose_reply);
                true
            }
            Action::Drop(index) => {
                state.db.queue.remove(usize::from(index));
                true
            }
            Action::Downstream { delivery, commit } => {
                state.finish_delivery(delivery, commit);
                true
            }
            Action::Reseed => {
                state.budget.reseeds -= 1;
                state.db.lease = Lease::default();
                state.ghost.reseeded = true;
                true
            }
        };
        changed.then_some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        invariants::properties()
    }

    fn within_boundary(&self, state: &State) -> bool {
        state.db.fencing_epoch <= self.config.epochs && state.db.lease.epoch <= self.config.epochs
    }
}
