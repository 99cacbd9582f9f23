//! Ghost variables: not part of the protocol (no process reads them), kept
//! only so that the invariants can say what happened.

use crate::MAX_TOKENS;

/// What became of one claim token (one claim attempt of one lane).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenGhost {
    /// The event it claims.
    pub event: u8,
    /// Its claim incremented `attempts` (and no hand-back uncounted it).
    pub counted: bool,
    /// A handler run (a delivery) was started under it.
    pub run: bool,
    /// Its lane was interrupted by a fault: crash, pause, SIGTERM cut, or
    /// its local view ran out (lost renewals) or its session was lost.
    pub faulted: bool,
    /// Its lane gave the event up without running it (attempts exceeded).
    pub gave_up: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// Sessions (bit per id) a kill write declared dead.
    pub killed: u8,
    /// Indexed by token - 1.
    pub tokens: [TokenGhost; MAX_TOKENS],
    /// A fenced event write of a killed session was applied (invariant 6).
    pub stale_event_write: bool,
    /// A lease write (acquire, release) of a killed session was applied:
    /// these carry no `NOW < X` in the spec (see the README).
    pub killed_lease_write: bool,
    /// A claim applied for a token already counted (invariant 7).
    pub counted_twice: bool,
    /// A handler run started on an event that had a record (invariant 1).
    pub rerun_after_record: bool,
    /// The downstream committed an event below one it had committed
    /// (invariant 2).
    pub out_of_order: bool,
    /// The downstream committed a token below one it had seen (invariant 3).
    pub low_token_commit: bool,
    /// The run's clock fault was used.
    pub clock_fault_used: bool,
    /// An acquisition replaced a non-null owner.
    pub takeover: bool,
    /// A hand-over's release was applied.
    pub handed_over: bool,
    /// The leases were deleted and reseeded (bucket count change).
    pub reseeded: bool,
    /// A claim applied after the reseed.
    pub claimed_after_reseed: bool,
    /// SIGTERM cut work in hand.
    pub cut: bool,
    /// A claim whose reply was lost was recognised by its token.
    pub claim_recovered: bool,
    /// A claim found the run's outcome already stored (a success whose
    /// lane stopped before its close) and closed from it without a run.
    pub closed_from_outcome: bool,
    /// A recorded failure's outcome write found an earlier claim's success
    /// stored (it landed late): the close takes the success.
    pub late_success_taken: bool,
}

impl Ghost {
    pub fn token(&self, token: u8) -> &TokenGhost {
        &self.tokens[usize::from(token) - 1]
    }

    pub fn token_mut(&mut self, token: u8) -> &mut TokenGhost {
        &mut self.tokens[usize::from(token) - 1]
    }

    pub fn is_killed(&self, session: u8) -> bool {
        self.killed & (1 << session) != 0
    }

    /// Marks a lane's claim as interrupted by a fault.
    pub fn fault(&mut self, token: Option<u8>) {
        if let Some(token) = token {
            self.token_mut(token).faulted = true;
        }
    }
}
