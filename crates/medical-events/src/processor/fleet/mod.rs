//! The processor fleet: any number of processors share the buckets through
//! leases in MongoDB (`leases`, with fencing epochs), announce themselves
//! with heartbeats (`processors`), balance the buckets between them, and are
//! woken by a change stream on new events. See ARCHITECTURE.md, "The
//! processor fleet".

pub mod balance;
pub mod keeper;
pub mod leases;
pub mod membership;
pub mod ownership;
pub mod watch;

pub use keeper::{Keeper, KeeperConfig};
pub use ownership::{BucketLease, Ownership};

/// A name for this processor instance, unique across the fleet and
/// readable in the lease table: host, process id and a random suffix.
pub fn instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "processor".to_owned());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{host}-{}-{suffix}", std::process::id())
}
