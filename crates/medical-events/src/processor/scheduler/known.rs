//! What lanes knew when they exited: for each patient, the sequence number
//! of its next event, every lower one being finished. A lane started by the
//! change stream's copy of a newly inserted event claims that event without
//! reading the queue when its number is the one remembered here (intake
//! numbers each patient's events 1, 2, 3... in the order of their inserts).
//!
//! Bounded: two generations of at most half the capacity each; when the
//! newer fills, the older is dropped. Forgetting a patient only costs its
//! next lane a read.

use std::collections::HashMap;

pub(super) struct KnownNext {
    newer: HashMap<String, i64>,
    older: HashMap<String, i64>,
    per_generation: usize,
}

impl KnownNext {
    pub(super) fn with_capacity(patients: usize) -> Self {
        Self {
            newer: HashMap::new(),
            older: HashMap::new(),
            per_generation: (patients / 2).max(1),
        }
    }

    /// Remembers that `patient`'s next event is number `next`.
    pub(super) fn remember(&mut self, patient: String, next: i64) {
        if self.newer.len() >= self.per_generation {
            self.older = std::mem::take(&mut self.newer);
        }
        self.older.remove(&patient);
        self.newer.insert(patient, next);
    }

    /// What was remembered of `patient`, forgotten from now on (the lane
    /// that takes it keeps it up to date while it runs).
    pub(super) fn take(&mut self, patient: &str) -> Option<i64> {
        self.newer
            .remove(patient)
            .or_else(|| self.older.remove(patient))
    }

    pub(super) fn contains(&self, patient: &str) -> bool {
        self.newer.contains_key(patient) || self.older.contains_key(patient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patient_is_remembered_until_taken() {
        let mut known = KnownNext::with_capacity(10);
        known.remember("p".into(), 4);
        assert!(known.contains("p"));
        assert_eq!(known.take("p"), Some(4));
        assert_eq!(known.take("p"), None);
        assert!(!known.contains("p"));
    }

    #[test]
    fn the_oldest_generation_is_forgotten_past_the_capacity() {
        let mut known = KnownNext::with_capacity(4);
        for (n, patient) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            known.remember(patient.into(), n as i64);
        }
        // a, b filled the first generation; c, d the second; e dropped a, b.
        assert!(!known.contains("a") && !known.contains("b"));
        assert_eq!(known.take("c"), Some(2));
        assert_eq!(known.take("e"), Some(4));
    }

    #[test]
    fn remembering_again_replaces_the_older_number() {
        let mut known = KnownNext::with_capacity(4);
        known.remember("p".into(), 1);
        known.remember("q".into(), 1);
        known.remember("p".into(), 2);
        assert_eq!(known.take("p"), Some(2));
        assert_eq!(known.take("p"), None);
    }
}
