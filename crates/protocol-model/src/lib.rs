//! An explicit-state model of the processor fleet's protocol v2 (leases,
//! sessions, claims, records, hand-over; ARCHITECTURE.md, "The processor fleet"),
//! checked with stateright. See the README for what is modeled, what is
//! abstracted, the bounds, and how v1's holes map to the invariants.

pub mod check;
pub mod database;
pub mod downstream;
pub mod ghost;
pub mod invariants;
mod keeper;
mod lane;
pub mod model;
pub mod process;
pub mod variants;

pub use check::{Report, check};
pub use model::{Action, ProtocolModel, State};
pub use variants::{Budget, ClockFault, Config, Variant};

/// Processes in the fleet.
pub const PROCS: usize = 2;
/// Events of the one patient (seq 1, 2), in the one bucket.
pub const EVENTS: usize = 2;
/// Room for session ids (a config uses at most this many).
pub const MAX_SESSIONS: usize = 4;
/// Room for claim tokens (a config uses at most this many).
pub const MAX_TOKENS: usize = 6;

/// The lease `L`, in ticks: the database extends a session to `NOW + L`.
pub const LEASE: u8 = 5;
/// New work may start while the local age of the last renewal sent is below
/// this (`L - 2`, the spec's 0.8 L scaled to whole ticks).
pub const NEW_WORK: u8 = 3;
/// Work in hand may go on while the age is below this (`L - 1`, the spec's
/// 0.9 L): a margin of one tick, which covers one tick of clock fault.
pub const IN_HAND: u8 = 4;
/// A renewal is sent once the last one is this old (`L / 3`, rounded down).
pub const RENEW_AFTER: u8 = 1;
