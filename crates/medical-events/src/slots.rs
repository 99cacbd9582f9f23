//! Places held at once, counted overall and per key (connections per source
//! address, requests or streams per client), each given back when its
//! [`Slot`] is dropped. Keys with nothing held are forgotten, so the map
//! holds only keys in use.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Which bound a refused place was past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Overall,
    Key,
}

pub(crate) struct Slots<K: Eq + Hash + Clone> {
    counts: Arc<Mutex<Counts<K>>>,
    overall: usize,
    per_key: usize,
}

struct Counts<K> {
    overall: usize,
    per_key: HashMap<K, usize>,
}

impl<K: Eq + Hash + Clone> Clone for Slots<K> {
    fn clone(&self) -> Self {
        Self {
            counts: Arc::clone(&self.counts),
            overall: self.overall,
            per_key: self.per_key,
        }
    }
}

impl<K: Eq + Hash + Clone> Slots<K> {
    /// `overall` places in all, `per_key` for any one key.
    pub(crate) fn new(overall: usize, per_key: usize) -> Self {
        Self {
            counts: Arc::new(Mutex::new(Counts {
                overall: 0,
                per_key: HashMap::new(),
            })),
            overall,
            per_key,
        }
    }

    /// A place for `key`, or the bound it is past.
    pub(crate) fn take(&self, key: &K) -> Result<Slot<K>, Full> {
        let mut counts = lock(&self.counts);
        if counts.overall >= self.overall {
            return Err(Full::Overall);
        }
        let of_key = counts.per_key.entry(key.clone()).or_default();
        if *of_key >= self.per_key {
            return Err(Full::Key);
        }
        *of_key += 1;
        counts.overall += 1;
        Ok(Slot {
            counts: Arc::clone(&self.counts),
            key: key.clone(),
        })
    }
}

/// One place held; dropping it gives the place back.
pub(crate) struct Slot<K: Eq + Hash> {
    counts: Arc<Mutex<Counts<K>>>,
    key: K,
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.overall -= 1;
        if let Some(count) = counts.per_key.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.per_key.remove(&self.key);
            }
        }
    }
}

fn lock<K>(counts: &Mutex<Counts<K>>) -> MutexGuard<'_, Counts<K>> {
    // Counters only: a panic elsewhere leaves them consistent.
    counts.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_overall_and_per_key_and_given_back_on_drop() {
        let slots = Slots::new(3, 2);
        let first = slots.take(&"a").unwrap();
        let second = slots.take(&"a").unwrap();
        assert_eq!(slots.take(&"a").err(), Some(Full::Key));
        let third = slots.take(&"b").unwrap();
        assert_eq!(slots.take(&"b").err(), Some(Full::Overall));
        drop(first);
        assert!(slots.take(&"a").is_ok());
        drop((second, third));
        let counts = lock(&slots.counts);
        assert_eq!(counts.overall, 0);
        assert!(
            counts.per_key.is_empty(),
            "keys with nothing held are forgotten"
        );
    }
}
