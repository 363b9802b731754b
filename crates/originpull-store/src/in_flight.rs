//! Single flight for the tiers: the set of keys some task is working on right now (reading an
//! object into memory, asking the store below whether a kept copy is still current), so that
//! a burst of requests for one key does that work once while the others go on without it.

use std::collections::HashSet;
use std::hash::Hash;

use parking_lot::Mutex;

/// Keys being worked on; a key is claimed by one task at a time.
pub(crate) struct InFlight<K> {
    keys: Mutex<HashSet<K>>,
}

impl<K: Hash + Eq + Clone> InFlight<K> {
    pub(crate) fn new() -> InFlight<K> {
        InFlight {
            keys: Mutex::new(HashSet::new()),
        }
    }

    /// The claim on `key`, or `None` while another task holds it.
    pub(crate) fn try_claim(&self, key: &K) -> Option<Claim<'_, K>> {
        let inserted = self.keys.lock().insert(key.clone());
        // Built only on success: a claim dropped after a refused insert would release the
        // holder's key.
        inserted.then(|| Claim {
            set: self,
            key: key.clone(),
        })
    }
}

/// The right to work on one key; released when dropped, also when the work's future is.
pub(crate) struct Claim<'a, K: Hash + Eq> {
    set: &'a InFlight<K>,
    key: K,
}

impl<K: Hash + Eq> Drop for Claim<'_, K> {
    fn drop(&mut self) {
        self.set.keys.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_per_key_until_it_is_dropped() {
        let set = InFlight::new();
        let first = set.try_claim(&1u64);
        assert!(first.is_some());
        assert!(set.try_claim(&1).is_none(), "claimed twice");
        assert!(set.try_claim(&2).is_some(), "another key is free");
        drop(first);
        assert!(set.try_claim(&1).is_some(), "released on drop");
    }
}
