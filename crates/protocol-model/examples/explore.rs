//! Explores one configuration completely and prints the state count and
//! what was found, with the trace of each counterexample. Arguments are
//! `key=value`: `variant=fixed|v1|v3|v5|v6|v7a|v7b|v7c|v8|v9|v10`, the fault
//! budgets `crash pause term lost partition hand fail reseed`, the bounds
//! `sessions epochs tokens deliv max` (MAX_ATTEMPTS), `clock=drift|step`,
//! and `states`/`depth` to stop early. For example:
//!
//! `cargo run -p protocol-model --example explore -- pause=1 sessions=3 epochs=3`
use protocol_model::invariants::INVARIANTS;
use protocol_model::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut c = Config::new(Variant::Fixed);
    let (mut states, mut depth) = (0usize, 0usize);
    for a in &args[1..] {
        let (k, v) = a.split_once('=').unwrap();
        let n: u8 = v.parse().unwrap_or(0);
        match k {
            "crash" => c.budget.crashes = n,
            "pause" => c.budget.pauses = n,
            "term" => c.budget.sigterms = n,
            "lost" => c.budget.lost_replies = n,
            "hand" => c.budget.handovers = n,
            "partition" => c.budget.partitions = n,
            "fail" => c.budget.handler_failures = n,
            "reseed" => c.budget.reseeds = n,
            "sessions" => c.sessions = n,
            "epochs" => c.epochs = n,
            "tokens" => c.tokens = n,
            "deliv" => c.deliveries = n,
            "max" => c.max_attempts = n,
            "clock" => {
                c.clock = match v {
                    "drift" => ClockFault::Drift,
                    "step" => ClockFault::Step,
                    _ => ClockFault::None,
                }
            }
            "variant" => {
                c.variant = match v {
                    "v1" => Variant::HandOverAborts,
                    "v3" => Variant::ReclaimWithNewToken,
                    "v5" => Variant::ForgetOnFailedRelease,
                    "v6" => Variant::EventFencingOnly,
                    "v7a" => Variant::LeaveByLocalClock,
                    "v7b" => Variant::TakeoverFromLaggingRead,
                    "v7c" => Variant::NoInHandMargin,
                    "v8" => Variant::EpochsRestart,
                    "v9" => Variant::NoOutcomeLookup,
                    "v10" => Variant::CloseKeepsRecord,
                    _ => Variant::Fixed,
                }
            }
            "states" => states = v.parse().unwrap(),
            "depth" => depth = v.parse().unwrap(),
            _ => panic!("{k}"),
        }
    }
    let r = protocol_model::check::check_bounded(c, &[], states, depth);
    println!("{}", r.summary());
    for name in r.discoveries.keys() {
        let kind = if INVARIANTS.contains(name) {
            "VIOLATED"
        } else {
            "found"
        };
        println!("  {kind}: {name}");
        if INVARIANTS.contains(name) {
            print!("{}", r.trace(name));
            println!("{:#?}", r.last_state(name).unwrap());
        }
    }
}
