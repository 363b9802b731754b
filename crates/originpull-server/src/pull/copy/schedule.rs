//! The copy schedule's state, under one lock: the copies running and waiting (at most one per
//! key), who waits for each to end, and the keys whose last copy failed (the negative cache,
//! bounded, expired in order).

use std::collections::VecDeque;
use std::hash::{Hash, Hasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::{Equivalent, HashMap, HashSet};
use tokio::sync::oneshot;

use super::transfer::MirrorSink;
use super::{CopyDecision, CopyEnd, CopySource};
use crate::pull::origin::BucketPull;
use originpull_config::FillSettings;
use originpull_store::key::ObjectKey;

/// Keys whose failed copy is remembered (negative cache) at most: about 100 bytes each, so
/// the table stays under ~10 MiB whatever a scanner asks for.
const MAX_REMEMBERED_FAILURES: usize = 100_000;

/// Identifies a copy: bucket name and key.
#[derive(Clone)]
pub(super) struct CopyKey {
    pub(super) bucket: Arc<BucketPull>,
    pub(super) key: ObjectKey,
}

impl CopyKey {
    pub(super) fn new(bucket: &Arc<BucketPull>, key: &ObjectKey) -> CopyKey {
        CopyKey {
            bucket: bucket.clone(),
            key: key.clone(),
        }
    }

    pub(super) fn bucket_name(&self) -> &str {
        &self.bucket.name
    }
}

impl PartialEq for CopyKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.bucket_name() == other.bucket_name()
    }
}

impl Eq for CopyKey {}

impl Hash for CopyKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        CopyKeyRef::new(&self.bucket, &self.key).hash(state);
    }
}

/// A [`CopyKey`] borrowed from a request: what a look-up needs, so the check every hit makes
/// ([`Copies::copy_blocked`]) clones neither the bucket nor the key.
pub(super) struct CopyKeyRef<'a> {
    bucket: &'a str,
    key: &'a ObjectKey,
}

impl<'a> CopyKeyRef<'a> {
    pub(super) fn new(bucket: &'a BucketPull, key: &'a ObjectKey) -> CopyKeyRef<'a> {
        CopyKeyRef {
            bucket: &bucket.name,
            key,
        }
    }
}

impl Hash for CopyKeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bucket.hash(state);
        self.key.hash(state);
    }
}

impl Equivalent<CopyKey> for CopyKeyRef<'_> {
    fn equivalent(&self, id: &CopyKey) -> bool {
        *self.key == id.key && self.bucket == id.bucket_name()
    }
}

pub(super) struct CopyJob {
    pub(super) id: CopyKey,
    pub(super) source: CopySource,
    pub(super) limits: FillSettings,
    /// The mirror client streaming this copy's body, if any.
    pub(super) sink: Option<MirrorSink>,
}

#[derive(Default)]
pub(super) struct Schedule {
    pub(super) running: usize,
    pub(super) waiting: VecDeque<CopyJob>,
    /// Keys running or waiting (revalidations excepted: their object is in the bucket).
    /// (These tables hash with std's keyed SipHash: their keys come from clients.)
    pub(super) in_flight: HashSet<CopyKey, RandomState>,
    /// Keys whose stored object is being revalidated, running or waiting.
    pub(super) revalidating: HashSet<CopyKey, RandomState>,
    /// Whoever waits for a key's copy to end.
    pub(super) waiters: HashMap<CopyKey, Vec<oneshot::Sender<CopyEnd>>, RandomState>,
    /// Keys whose last copy failed, with when they may be tried again and whether the origin
    /// said the key does not exist.
    pub(super) failed_until: HashMap<CopyKey, (Instant, bool), RandomState>,
    /// The same entries in expiry order, so expired ones are dropped without a scan.
    pub(super) expiries: VecDeque<(Instant, CopyKey)>,
}

impl Schedule {
    /// Whether a copy of `id` must not start now: one is running or waiting, or the last one
    /// failed within the negative TTL.
    pub(super) fn blocked<Q>(&self, id: &Q, now: Instant) -> Option<CopyDecision>
    where
        Q: Hash + Equivalent<CopyKey>,
    {
        if self.in_flight.contains(id) {
            Some(CopyDecision::AlreadyInFlight)
        } else if self.recent_failure(id, now).is_some() {
            Some(CopyDecision::RecentlyFailed)
        } else {
            None
        }
    }

    /// Whether the last copy of `id` failed within the negative TTL: `Some(not_found)`.
    pub(super) fn recent_failure<Q>(&self, id: &Q, now: Instant) -> Option<bool>
    where
        Q: Hash + Equivalent<CopyKey>,
    {
        if self.failed_until.is_empty() {
            return None;
        }
        self.failed_until
            .get(id)
            .filter(|(until, _)| *until > now)
            .map(|(_, end)| *end)
    }

    pub(super) fn remember_failure(
        &mut self,
        id: &CopyKey,
        not_found: bool,
        now: Instant,
        ttl: Duration,
    ) {
        while let Some((expiry, _)) = self.expiries.front() {
            if *expiry > now {
                break;
            }
            self.drop_oldest_failure();
        }
        // A scanner asking for millions of missing keys must not grow this table without
        // bound: past the cap, the entries closest to expiry go first.
        while self.failed_until.len() >= MAX_REMEMBERED_FAILURES {
            if !self.drop_oldest_failure() {
                break;
            }
        }
        if let Some(until) = now.checked_add(ttl) {
            self.failed_until.insert(id.clone(), (until, not_found));
            self.expiries.push_back((until, id.clone()));
        }
    }

    /// Drops the entry closest to expiry (unless a later failure renewed it); false when none.
    fn drop_oldest_failure(&mut self) -> bool {
        let Some((expiry, key)) = self.expiries.pop_front() else {
            return false;
        };
        if self.failed_until.get(&key).map(|(until, _)| until) == Some(&expiry) {
            self.failed_until.remove(&key);
        }
        true
    }

    /// A channel that hears how the copy of `id` ends.
    pub(super) fn wait_for(&mut self, id: &CopyKey) -> oneshot::Receiver<CopyEnd> {
        let (tx, rx) = oneshot::channel();
        self.waiters.entry(id.clone()).or_default().push(tx);
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use originpull_config::Config;

    #[test]
    fn the_negative_cache_is_capped() {
        let config = Config::parse(
            "listen: 127.0.0.1:1\ndata_dir: d\ndomain_suffix: a.example\nbuckets:\n  - name: b-1\n    origin_pull:\n      enabled: true\n      origin: o.example\n",
        )
        .unwrap();
        let bucket = Arc::new(BucketPull::for_tests(&config.buckets[0]));
        let mut schedule = Schedule::default();
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        for i in 0..MAX_REMEMBERED_FAILURES + 1000 {
            let key = ObjectKey::from_request_path(&format!("/k{i}")).unwrap();
            schedule.remember_failure(&CopyKey::new(&bucket, &key), true, now, ttl);
        }
        assert_eq!(schedule.failed_until.len(), MAX_REMEMBERED_FAILURES);
        // The newest are kept, the oldest went first.
        let newest =
            ObjectKey::from_request_path(&format!("/k{}", MAX_REMEMBERED_FAILURES + 999)).unwrap();
        let oldest = ObjectKey::from_request_path("/k0").unwrap();
        assert!(schedule
            .recent_failure(&CopyKey::new(&bucket, &newest), now)
            .is_some());
        assert!(schedule
            .recent_failure(&CopyKey::new(&bucket, &oldest), now)
            .is_none());
    }
}
