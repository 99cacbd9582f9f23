//! Buckets: the unit in which the processor fleet shares work. Every event
//! belongs to the bucket of its patient, a stable hash of `patientId` modulo
//! [`BUCKETS`], computed at intake and stored with the event.
//!
//! The hash must give the same bucket in every process, version and platform
//! (Rust's `DefaultHasher` is randomly keyed per process), so it is the first
//! eight bytes of the SHA-256 of the patient id. The count is a deployment
//! constant: changing it re-maps patients to buckets, which is only safe on a
//! drained system (ARCHITECTURE.md, "Changing the bucket count").

use sha2::{Digest, Sha256};

/// Buckets per deployment. 256 spreads well over a few dozen processors and
/// keeps the lease table small enough to read whole on every tick.
pub const BUCKETS: u32 = 256;

/// The bucket of a patient, in `0..BUCKETS`.
pub fn of(patient_id: &str) -> i32 {
    let digest = Sha256::digest(patient_id.as_bytes());
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(prefix) % u64::from(BUCKETS)) as i32
}

/// Every bucket number.
pub fn all() -> impl Iterator<Item = i32> {
    (0..BUCKETS).map(|b| b as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_of_a_patient_never_changes() {
        // Pinned values: a change here re-maps every stored event.
        assert_eq!(of("patient-123"), of("patient-123"));
        let pinned: Vec<i32> = ["patient-123", "a", "MRN-0001", "ünïcødé"]
            .iter()
            .map(|p| of(p))
            .collect();
        assert_eq!(pinned, PINNED);
    }

    /// Computed independently (Python's hashlib) for the patients above.
    const PINNED: [i32; 4] = [24, 202, 202, 228];

    #[test]
    fn patients_spread_over_all_buckets() {
        let mut counts = vec![0u32; BUCKETS as usize];
        for n in 0..25_600 {
            counts[of(&format!("patient-{n}")) as usize] += 1;
        }
        // 100 expected per bucket; a broken hash clusters badly.
        assert!(
            counts.iter().all(|&c| (50..=150).contains(&c)),
            "{counts:?}"
        );
    }
}
