//! Admission in front of a full cache: only keys asked for before, recently, are taken in (the
//! doorkeeper W-TinyLFU puts in front of its frequency sketch; TinyUFO has none).
//!
//! Under random or scanning traffic over many more keys than a cache holds, most keys are asked
//! for once; taking each in costs the work of making the entry, an admission decision and an
//! eviction, for an entry that is rarely asked for again. While the cache still has room,
//! every key is taken in.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Keys seen once recently: a Bloom filter of one hash, cleared once it has taken in as many
/// keys as its cache holds entries, so "recently" means "within the last cache-full of keys".
pub(crate) struct Doorkeeper {
    /// Set by the cache's first eviction: from then on, [`Doorkeeper::admits`] filters.
    on: AtomicBool,
    bits: Box<[AtomicU64]>,
    /// Keys taken in since the last clearing.
    taken: AtomicUsize,
    clear_after: usize,
}

impl Doorkeeper {
    /// For a cache of about `entries` entries.
    pub(crate) fn new(entries: usize) -> Doorkeeper {
        // Eight bits per key: under 12% false "seen before" when about to be cleared.
        let words = (entries.saturating_mul(8) / 64).next_power_of_two().max(16);
        Doorkeeper {
            on: AtomicBool::new(false),
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            taken: AtomicUsize::new(0),
            clear_after: entries.max(16),
        }
    }

    /// Called with the number of entries a put evicted: the first eviction turns filtering on.
    pub(crate) fn note_evictions(&self, evicted: usize) {
        if evicted > 0 && !self.on.load(Ordering::Relaxed) {
            self.on.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Whether the cache should take in the entry for `id` (a hash of its key): always while it
    /// has never evicted, then only when `id` was seen recently (this call remembers it).
    pub(crate) fn admits(&self, id: u64) -> bool {
        !self.is_on() || self.seen_before(id)
    }

    fn seen_before(&self, id: u64) -> bool {
        // Ids are hashes already: their bits index the filter.
        let word = (id >> 6) as usize & (self.bits.len() - 1);
        let bit = 1u64 << (id & 63);
        if self.bits[word].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            return true;
        }
        if self.taken.fetch_add(1, Ordering::Relaxed) + 1 >= self.clear_after {
            self.taken.store(0, Ordering::Relaxed);
            for word in self.bits.iter() {
                word.store(0, Ordering::Relaxed);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_everything_until_the_first_eviction_then_only_keys_seen_recently() {
        let keeper = Doorkeeper::new(100);
        assert!(keeper.admits(1) && keeper.admits(2));
        keeper.note_evictions(0);
        assert!(keeper.admits(3), "no eviction yet");
        keeper.note_evictions(1);
        assert!(!keeper.admits(4), "first sight");
        assert!(keeper.admits(4), "second sight");
        // A cache-full of other keys later, 5's first sight is forgotten.
        assert!(!keeper.admits(5));
        for id in 1000..1100u64 {
            keeper.admits(id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        assert!(!keeper.admits(5), "forgotten after a clearing");
    }
}
