//! The eviction engine both disk caches share (the disk store's [`crate::capacity`] and the
//! S3 store's [`crate::local_tier`]): pingora-cache's eviction manager
//! (`eviction::lru::Manager`) over entries keyed by bucket and [`FileHash`], each weighed in
//! bytes, with the bytes of each bucket kept beside it.
//!
//! One shard, so the order is exactly least recently used at any size: with more, the manager
//! evicts from the longer of two random shards, which with a few hundred entries can take one
//! used a moment ago while older ones remain. The manager's own limit is unused (set to the
//! maximum): its owner decides when to evict, and takes entries from the back itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use pingora_cache::eviction::{lru::Manager, EvictionManager};
use pingora_cache::key::CompactCacheKey;
use pingora_cache::{CacheEntryKey, CacheEntryKeyRef};

use crate::key::FileHash;
use originpull_support::clock::coarse_seconds;

/// An entry of the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub bucket: String,
    pub hash: FileHash,
    pub weight: u64,
}

pub(crate) struct Order {
    lru: Manager<1>,
    /// Bytes per bucket. Every change of a weight happens with this held, so the totals and
    /// the manager agree.
    bucket_bytes: Mutex<HashMap<String, u64>>,
}

/// The manager's key: the hash's halves as primary and variance, the bucket as user tag.
fn entry_key(bucket: &str, hash: &FileHash) -> CacheEntryKey {
    let (primary, rest) = hash.0.split_at(16);
    let mut compact = CompactCacheKey {
        primary: [0; 16],
        variance: Some(Box::new([0; 16])),
        user_tag: bucket.into(),
    };
    compact.primary.copy_from_slice(primary);
    if let Some(variance) = &mut compact.variance {
        variance.copy_from_slice(rest);
    }
    CacheEntryKey::key_only(compact)
}

fn entry_of(key: &CacheEntryKey, weight: usize) -> Option<Entry> {
    let compact = key.key();
    let rest = compact.variance.as_deref()?;
    let mut hash = [0u8; 32];
    hash[..16].copy_from_slice(&compact.primary);
    hash[16..].copy_from_slice(rest);
    Some(Entry {
        bucket: compact.user_tag.to_string(),
        hash: FileHash(hash),
        weight: weight as u64,
    })
}

/// The manager's weights are `usize`; a file's length always fits on the 64-bit targets built.
fn weight(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

fn remove_key(lru: &Manager<1>, key: &CacheEntryKey) {
    lru.remove(CacheEntryKeyRef::from_entry_id(key.key(), None));
}

impl Order {
    pub(crate) fn new() -> Order {
        Order {
            lru: Manager::with_capacity(usize::MAX, 1024),
            bucket_bytes: Mutex::default(),
        }
    }

    /// A use of the entry, which weighs `bytes` if it must be admitted: `true` when it was
    /// known (now the most recent), `false` when it was admitted.
    pub(crate) fn used(&self, bucket: &str, hash: &FileHash, bytes: u64) -> bool {
        let key = entry_key(bucket, hash);
        if self.lru.access(&key, weight(bytes), SystemTime::UNIX_EPOCH) {
            return true;
        }
        let mut totals = self.bucket_bytes.lock();
        *totals.entry(bucket.to_string()).or_default() += bytes.max(1);
        false
    }

    /// A use of the entry if it is known; nothing otherwise.
    pub(crate) fn used_if_known(&self, bucket: &str, hash: &FileHash) {
        let key = entry_key(bucket, hash);
        if self.lru.peek(&key) {
            self.lru.access(&key, 0, SystemTime::UNIX_EPOCH);
        }
    }

    /// Changes the entry's weight to what `to` makes of the known one (`None`: not in the
    /// order); a new weight makes it the most recent. `to` runs with the totals locked, so
    /// two changes of one entry (a commit and a variant) cannot interleave.
    pub(crate) fn set_weight(
        &self,
        bucket: &str,
        hash: &FileHash,
        to: impl FnOnce(Option<u64>) -> Option<u64>,
    ) {
        let key = entry_key(bucket, hash);
        let mut totals = self.bucket_bytes.lock();
        let known = self.lru.peek_weight(&key).map(|w| w as u64);
        let new = to(known);
        if known == new {
            return;
        }
        match new {
            Some(bytes) => {
                self.lru.admit(key, weight(bytes), SystemTime::UNIX_EPOCH);
            }
            None => remove_key(&self.lru, &key),
        }
        let total = totals.entry(bucket.to_string()).or_default();
        // The manager weighs an entry at least 1 byte.
        *total = total.saturating_sub(known.unwrap_or(0)) + new.map_or(0, |b| b.max(1));
    }

    pub(crate) fn remove(&self, bucket: &str, hash: &FileHash) {
        self.set_weight(bucket, hash, |_| None);
    }

    /// Takes the least recently used entry whose bucket is `evictable` out of the order.
    /// Entries of other buckets are moved to the front, once each, out of the way.
    pub(crate) fn take_least_recent(&self, evictable: impl Fn(&str) -> bool) -> Option<Entry> {
        let mut totals = self.bucket_bytes.lock();
        for _ in 0..=self.lru.total_items() {
            let key = self.lru.peek_lru(0)?;
            let weight = self.lru.peek_weight(&key).unwrap_or(0);
            let Some(entry) = entry_of(&key, weight) else {
                // Not one of ours (a damaged saved state): nothing to delete.
                remove_key(&self.lru, &key);
                continue;
            };
            if !evictable(&entry.bucket) {
                self.lru.access(&key, 0, SystemTime::UNIX_EPOCH);
                continue;
            }
            remove_key(&self.lru, &key);
            if let Some(total) = totals.get_mut(&entry.bucket) {
                *total = total.saturating_sub(entry.weight);
            }
            return Some(entry);
        }
        None
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.lru.total_size() as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.lru.total_items()
    }

    pub(crate) fn bucket_bytes(&self, bucket: &str) -> u64 {
        self.bucket_bytes.lock().get(bucket).copied().unwrap_or(0)
    }

    /// The bytes of the buckets `buckets` names.
    pub(crate) fn bytes_of<'a>(&self, buckets: impl IntoIterator<Item = &'a str>) -> u64 {
        let totals = self.bucket_bytes.lock();
        buckets
            .into_iter()
            .filter_map(|bucket| totals.get(bucket))
            .sum()
    }

    /// The manager's own serialization (MessagePack), most recent first.
    pub(crate) fn serialize(&self) -> Result<Vec<u8>, String> {
        self.lru.serialize_shard(0).map_err(|e| e.to_string())
    }

    /// Every entry, most recent first.
    pub(crate) fn entries(&self) -> Result<Vec<Entry>, String> {
        decode(&self.serialize()?)
    }

    /// Adds what [`Order::serialize`] wrote behind what is known already, in its order (the
    /// manager's own load, which puts each entry at the back), skipping what `skip` names and
    /// what is known already (used or committed while this runs, which is more recent). Runs
    /// in chunks, each with the totals locked, so serving goes on meanwhile.
    pub(crate) fn load(
        &self,
        saved: &[u8],
        skip: impl Fn(&str, &FileHash) -> bool,
    ) -> Result<usize, String> {
        const CHUNK: usize = 4096;
        let entries: Vec<(CacheEntryKey, usize)> =
            rmp_serde::from_slice(saved).map_err(|e| e.to_string())?;
        let mut loaded = 0;
        for chunk in entries.chunks(CHUNK) {
            let mut totals = self.bucket_bytes.lock();
            let mut nodes = Vec::with_capacity(chunk.len());
            for (key, weight) in chunk {
                let Some(entry) = entry_of(key, *weight) else {
                    continue;
                };
                if self.lru.peek(key) || skip(&entry.bucket, &entry.hash) {
                    continue;
                }
                *totals.entry(entry.bucket).or_default() += entry.weight;
                nodes.push((key, *weight));
            }
            loaded += nodes.len();
            let encoded = rmp_serde::to_vec(&nodes).map_err(|e| e.to_string())?;
            self.lru
                .deserialize_shard(&encoded)
                .map_err(|e| e.to_string())?;
        }
        Ok(loaded)
    }
}

fn decode(saved: &[u8]) -> Result<Vec<Entry>, String> {
    let entries: Vec<(CacheEntryKey, usize)> =
        rmp_serde::from_slice(saved).map_err(|e| e.to_string())?;
    Ok(entries
        .iter()
        .filter_map(|(key, weight)| entry_of(key, *weight))
        .collect())
}

/// Kept with an object's copy in memory or its file kept open: whether a hit served from it is
/// told to the order, which is at most once a second. A hit costs the order a hash, a lock and
/// a move in a list of up to millions of entries (docs/benchmarks.md); the objects hit most
/// then lag in the order by up to a second, while objects unserved for longer stay behind them.
pub(crate) struct UseThrottle(AtomicU64);

impl Clone for UseThrottle {
    fn clone(&self) -> UseThrottle {
        UseThrottle(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

impl UseThrottle {
    pub(crate) fn new() -> UseThrottle {
        UseThrottle(AtomicU64::new(0))
    }

    /// Whether this hit is to be told (the first in this second).
    pub(crate) fn due(&self) -> bool {
        // Plus one, so a new throttle's 0 is never this second.
        let now = coarse_seconds() + 1;
        self.0.load(Ordering::Relaxed) != now && self.0.swap(now, Ordering::Relaxed) != now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_use_is_told_once_a_second_at_most() {
        let throttle = UseThrottle::new();
        assert!(throttle.due());
        assert!(!throttle.due());
        assert!(
            !throttle.clone().due(),
            "a renewed copy keeps the last time"
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(throttle.due());
    }
}
