//! The downstream: it receives deliveries (`Fencing-Token: e`), keeps the
//! patient's highest token seen, refuses (409) a lower one at arrival and
//! again when it commits (a newer owner may have spoken meanwhile). A
//! delivery arrives when the handler starts and commits (or fails) in a
//! later, separate step, so deliveries can be open concurrently.

use crate::EVENTS;
use crate::ghost::Ghost;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    Open,
    Committed,
    /// 409: a higher token had been seen.
    Refused,
    /// The downstream answered an error (a failed attempt).
    Failed,
}

/// What the handler learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    Ok,
    Failed,
    Conflict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Delivery {
    pub event: u8,
    /// `Fencing-Token`: the claim's epoch.
    pub fencing: u8,
    /// Ghost: the claim token of the run that sent it.
    pub token: u8,
    pub state: DeliveryState,
    /// Ghost: deliveries (bit per index) open at the same time as this one.
    pub overlaps: u8,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Downstream {
    /// The patient's highest token seen.
    pub highest: u8,
    /// Ghost: the highest seq committed.
    pub last_committed: u8,
    pub deliveries: Vec<Delivery>,
}

impl Downstream {
    /// A delivery arrives; `Some(Conflict)` if refused at once.
    pub fn arrive(&mut self, event: u8, fencing: u8, token: u8) -> (u8, Option<Answer>) {
        let index = self.deliveries.len() as u8;
        if fencing < self.highest {
            self.deliveries.push(Delivery {
                event,
                fencing,
                token,
                state: DeliveryState::Refused,
                overlaps: 0,
            });
            return (index, Some(Answer::Conflict));
        }
        self.highest = fencing;
        let mut overlaps = 0;
        for (i, other) in self.deliveries.iter_mut().enumerate() {
            if other.state == DeliveryState::Open {
                overlaps |= 1 << i;
                other.overlaps |= 1 << index;
            }
        }
        self.deliveries.push(Delivery {
            event,
            fencing,
            token,
            state: DeliveryState::Open,
            overlaps,
        });
        (index, None)
    }

    /// An open delivery ends: committed (if its token is still the highest)
    /// or failed.
    pub fn finish(&mut self, index: u8, commit: bool, ghost: &mut Ghost) -> Answer {
        let highest = self.highest;
        let delivery = &mut self.deliveries[usize::from(index)];
        if !commit {
            delivery.state = DeliveryState::Failed;
            return Answer::Failed;
        }
        if delivery.fencing < highest {
            delivery.state = DeliveryState::Refused;
            return Answer::Conflict;
        }
        delivery.state = DeliveryState::Committed;
        ghost.low_token_commit |= delivery.fencing < highest;
        let seq = delivery.event + 1;
        ghost.out_of_order |= seq < self.last_committed;
        self.last_committed = self.last_committed.max(seq);
        Answer::Ok
    }

    pub fn committed(&self, event: u8) -> bool {
        self.deliveries
            .iter()
            .any(|d| d.event == event && d.state == DeliveryState::Committed)
    }

    pub fn all_committed(&self) -> bool {
        (0..EVENTS as u8).all(|e| self.committed(e))
    }
}
