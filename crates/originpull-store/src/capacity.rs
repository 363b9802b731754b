//! The disk store's capacity: what its files weigh, the order in which `retention: cache`
//! buckets' objects go when the store is full, and that order's saved state.
//!
//! Every object file (with its variants) is one entry of the eviction engine ([`crate::order`]:
//! pingora-cache's eviction manager, one shard, so the order is exactly least recently used),
//! keyed by bucket and [`FileHash`] and weighed in file bytes: commits admit it, hits of cache
//! buckets move it to the front, purges remove it, variants and new versions change its weight.
//! Objects of `keep` buckets are weighed too (they count toward `store.max_bytes`), but their
//! place in the order means nothing: eviction passes over them. [`super::eviction`] takes
//! entries from the back when a limit is passed and deletes them. One shard has one lock, which
//! a save holds while it copies the keys (1.4 s for a million): so a request only records its
//! hit here, and eviction applies the records to the order ([`Capacity::apply_uses`];
//! docs/benchmarks.md, "A bucket cache that fits its disk").
//!
//! The state survives restarts without a walk: it is saved to `<data_dir>/.eviction/order`
//! every few minutes and at a graceful stop, which also leaves a `clean` mark, and loaded in
//! the background after start ([`Capacity::load_saved`]). (`.eviction` cannot be a bucket:
//! bucket names have no dot.) Without the mark (a crash, or the first start of a store made
//! before this), objects committed or removed since the last save are unknown, so
//! [`Capacity::reconcile`] walks the buckets in the background, admitting the files the state
//! does not know and dropping entries whose file is gone; serving does not wait for it, and a
//! cache bucket's object it has not reached yet is admitted when it is first served.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::key::FileHash;
use crate::metrics::CAPACITY_METRICS;
pub use crate::order::Entry;
use crate::order::Order;
use originpull_config::CapacityLimits;

/// The directory under `data_dir` holding the saved order.
pub const STATE_DIR: &str = ".eviction";
const ORDER_FILE: &str = "order";
const CLEAN_MARK: &str = "clean";
/// The process id of the process whose order is the current one: during a zero-downtime
/// upgrade the new process takes it over at start, and the old one, draining, saves nothing.
const OWNER_FILE: &str = "owner";

/// Eviction frees this share of a limit below it, so that it does not run again at once.
const EVICT_TO_PERCENT: u64 = 95;

/// What limits apply and which buckets may be evicted; replaced by a reload.
#[derive(Debug, Default)]
struct Policy {
    limits: CapacityLimits,
    evictable: HashSet<Arc<str>>,
}

/// A hit waiting to be applied to the order.
struct Use {
    bucket: Arc<str>,
    hash: FileHash,
    /// `Some(bytes)`: read by name, admitted if unknown; `None`: moved up only if known.
    admit_with: Option<u64>,
}

/// Hits waiting for the order at most; past this, hits are not recorded until the next
/// drain (the order only loses precision).
const MAX_PENDING_USES: usize = 65_536;

pub struct Capacity {
    /// Every object file (and its variants), weighed in file bytes.
    order: Order,
    root: PathBuf,
    state_dir: PathBuf,
    policy: RwLock<Arc<Policy>>,
    /// Free bytes of `root`'s file system when last looked at.
    free_bytes: AtomicU64,
    /// Past a limit with nothing left to evict: copies are not started.
    stuck: AtomicBool,
    /// Hits not applied to the order yet. A hit only pushes here, so no request waits for the
    /// order's lock (a save of a million entries holds it for half a second); eviction applies
    /// them ([`Capacity::apply_uses`]) every few milliseconds and before it takes victims.
    uses: parking_lot::Mutex<Vec<Use>>,
    /// Until the saved order is loaded (in the background, see [`Capacity::load_saved`]), what
    /// was removed meanwhile, which the load must not bring back; `None` once loaded.
    removed_while_loading: parking_lot::Mutex<Option<HashSet<(String, FileHash)>>>,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capacity")
            .field("root", &self.root)
            .field("entries", &self.order.len())
            .field("bytes", &self.order.bytes())
            .finish_non_exhaustive()
    }
}

/// How [`Capacity::open`] found the saved state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartState {
    /// Saved at a graceful stop: it knows every file.
    Clean,
    /// Saved earlier (or never): [`Capacity::reconcile`] should run.
    NeedsReconcile,
}

impl Capacity {
    /// Loads the order saved under `root` (the disk store's `data_dir`), if any.
    pub fn open(root: &Path) -> io::Result<(Arc<Capacity>, StartState)> {
        let state_dir = root.join(STATE_DIR);
        std::fs::create_dir_all(&state_dir)?;
        let capacity = Capacity {
            order: Order::new(),
            root: root.to_path_buf(),
            state_dir,
            policy: RwLock::default(),
            free_bytes: AtomicU64::new(0),
            stuck: AtomicBool::new(false),
            uses: parking_lot::Mutex::new(Vec::new()),
            removed_while_loading: parking_lot::Mutex::new(Some(HashSet::new())),
            wake: tokio::sync::Notify::new(),
        };
        let clean = capacity.state_dir.join(CLEAN_MARK);
        let marked_clean = clean.exists();
        // From now on a stop that does not save again is a crash.
        if marked_clean {
            std::fs::remove_file(&clean)?;
        }
        std::fs::write(
            capacity.state_dir.join(OWNER_FILE),
            std::process::id().to_string(),
        )?;
        std::fs::File::open(&capacity.state_dir)?.sync_all()?;
        // Copies ask for room before eviction first looks.
        capacity.look_at_free_bytes();
        capacity.refresh_gauges();
        let start = if marked_clean {
            StartState::Clean
        } else {
            StartState::NeedsReconcile
        };
        Ok((Arc::new(capacity), start))
    }

    /// Loads the saved order behind what serving has added since the start (blocking: a
    /// million entries take seconds, so it runs in the background while serving goes on).
    /// Returns how the start should be treated: a saved order that cannot be read needs the
    /// walk even after a clean stop.
    pub fn load_saved(&self, start: StartState) -> StartState {
        let path = self.state_dir.join(ORDER_FILE);
        let loaded = match std::fs::read(&path) {
            Ok(saved) => self
                .order
                .load(&saved, |bucket, hash| {
                    self.removed_while_loading
                        .lock()
                        .as_ref()
                        .is_some_and(|removed| removed.contains(&(bucket.to_string(), *hash)))
                })
                .map_err(|why| format!("unreadable ({why})")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err("missing".to_string()),
            Err(e) => Err(e.to_string()),
        };
        *self.removed_while_loading.lock() = None;
        self.refresh_gauges();
        match loaded {
            Ok(entries) => {
                log::info!("eviction order loaded: {entries} objects");
                start
            }
            Err(why) => {
                if start == StartState::Clean {
                    log::warn!(
                        "{}: the saved eviction order is {why}; the buckets are walked to \
                         rebuild it",
                        path.display()
                    );
                }
                StartState::NeedsReconcile
            }
        }
    }

    /// Whether the saved order has been loaded (eviction waits for it).
    pub fn loaded(&self) -> bool {
        self.removed_while_loading.lock().is_none()
    }

    /// Applies `limits` and which buckets are `retention: cache`; wakes eviction.
    pub fn set_policy<'a>(
        &self,
        limits: CapacityLimits,
        evictable: impl IntoIterator<Item = &'a str>,
    ) {
        let policy = Policy {
            limits,
            evictable: evictable.into_iter().map(Arc::from).collect(),
        };
        *self.policy.write() = Arc::new(policy);
        self.stuck.store(false, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// The bucket's name, shared, if it is a cache bucket.
    fn evictable(&self, bucket: &str) -> Option<Arc<str>> {
        self.policy.read().evictable.get(bucket).cloned()
    }

    /// A hit of `bucket`'s object, whose file (and variants) weigh `bytes`, read by name: an
    /// object the order does not know (stored before a crash) is admitted.
    pub fn served(&self, bucket: &str, hash: &FileHash, bytes: u64) {
        if let Some(bucket) = self.evictable(bucket) {
            self.push_use(Use {
                bucket,
                hash: *hash,
                admit_with: Some(bytes),
            });
        }
    }

    /// A hit of `bucket`'s object served without its name (a file kept open, the memory
    /// tier): moved to the front if the order knows it. (Admitting it could bring back an
    /// object evicted a moment ago, whose copy in memory outlives its file.) `hash` is only
    /// worked out for cache buckets.
    pub fn served_if_known(&self, bucket: &str, hash: impl FnOnce() -> Option<FileHash>) {
        let Some(bucket) = self.evictable(bucket) else {
            return;
        };
        if let Some(hash) = hash() {
            self.push_use(Use {
                bucket,
                hash,
                admit_with: None,
            });
        }
    }

    fn push_use(&self, hit: Use) {
        let mut uses = self.uses.lock();
        if uses.len() < MAX_PENDING_USES {
            uses.push(hit);
        }
    }

    /// Applies the hits recorded since the last call to the order, in the order they came.
    pub fn apply_uses(&self) {
        let uses = std::mem::take(&mut *self.uses.lock());
        for hit in uses {
            match hit.admit_with {
                Some(bytes) => {
                    self.order.used(&hit.bucket, &hit.hash, bytes);
                }
                None => self.order.used_if_known(&hit.bucket, &hit.hash),
            }
        }
    }

    /// A new version of the object was renamed into place; `weigh` reads what its file and
    /// variants weigh now (run with the order's totals locked, so a variant written meanwhile
    /// is counted once). A copy counts as a use.
    pub fn committed(&self, bucket: &str, hash: &FileHash, weigh: impl FnOnce() -> u64) {
        self.order.set_weight(bucket, hash, |_| Some(weigh()));
        self.order.used_if_known(bucket, hash);
        if self.past_a_limit() {
            self.wake.notify_one();
        }
    }

    /// A variant of the object was written; `weigh` as for [`Capacity::committed`]. A variant
    /// of an object the order does not know waits for the object's entry.
    pub(crate) fn variant_written(
        &self,
        bucket: &str,
        hash: &FileHash,
        weigh: impl FnOnce() -> u64,
    ) {
        self.order
            .set_weight(bucket, hash, |known| known.map(|_| weigh()));
    }

    /// The object's file and variants were removed.
    pub(crate) fn removed(&self, bucket: &str, hash: &FileHash) {
        if let Some(removed) = self.removed_while_loading.lock().as_mut() {
            removed.insert((bucket.to_string(), *hash));
        }
        self.order.remove(bucket, hash);
    }

    /// File bytes of every object and variant the order knows.
    pub fn bytes(&self) -> u64 {
        self.order.bytes()
    }

    pub fn entries(&self) -> usize {
        self.order.len()
    }

    /// File bytes of `bucket`'s objects and variants.
    pub fn bucket_bytes(&self, bucket: &str) -> u64 {
        self.order.bucket_bytes(bucket)
    }

    /// Free bytes of the file system holding the store, looked up now.
    fn look_at_free_bytes(&self) -> u64 {
        match rustix::fs::statvfs(&self.root) {
            Ok(stat) => {
                let free = stat.f_bavail.saturating_mul(stat.f_frsize);
                self.free_bytes.store(free, Ordering::Relaxed);
                free
            }
            // Unknown: keep the last figure rather than evict for nothing.
            Err(_) => self.free_bytes.load(Ordering::Relaxed),
        }
    }

    fn past_a_limit(&self) -> bool {
        let limits = self.policy.read().limits;
        limits.max_bytes > 0 && self.bytes() > limits.max_bytes
    }

    /// Bytes eviction should free now: past `max_bytes`, down to 95% of it; below
    /// `min_free_bytes` free, up to it plus 5%. 0 when within both limits.
    pub fn bytes_to_free(&self) -> u64 {
        self.apply_uses();
        let free = self.look_at_free_bytes();
        self.refresh_gauges();
        let limits = self.policy.read().limits;
        let mut need = 0;
        if limits.max_bytes > 0 && self.bytes() > limits.max_bytes {
            need = self.bytes() - limits.max_bytes * EVICT_TO_PERCENT / 100;
        }
        if limits.min_free_bytes > 0 && free < limits.min_free_bytes {
            let wanted =
                limits.min_free_bytes + limits.min_free_bytes * (100 - EVICT_TO_PERCENT) / 100;
            need = need.max(wanted - free);
        }
        if need == 0 {
            self.set_stuck(false);
        }
        need
    }

    /// Takes the least recently used object of a cache bucket out of the order (its files are
    /// the caller's to delete); `None` when no cache bucket has any.
    pub fn take_victim(&self) -> Option<Entry> {
        let policy = self.policy.read().clone();
        if policy.evictable.is_empty() {
            return None;
        }
        self.apply_uses();
        self.order
            .take_least_recent(|bucket| policy.evictable.contains(bucket))
    }

    /// Marks the store past a limit with nothing left to evict (or no longer).
    pub fn set_stuck(&self, stuck: bool) {
        if self.stuck.swap(stuck, Ordering::Relaxed) != stuck {
            CAPACITY_METRICS.over_limit.set(i64::from(stuck));
            if stuck {
                log::warn!(
                    "{}: the store is past store.max_bytes or below store.min_free_bytes and \
                     holds nothing more that may be evicted (retention: cache); copies are not \
                     started until there is room",
                    self.root.display()
                );
            }
        }
    }

    /// Whether a copy of `bytes` (0 when not known) fits, evicting every cache bucket's
    /// objects if need be.
    pub fn has_room(&self, bytes: u64) -> bool {
        let policy = self.policy.read().clone();
        let limits = policy.limits;
        if !limits.any() {
            return true;
        }
        if self.stuck.load(Ordering::Relaxed) {
            return false;
        }
        let evictable = self
            .order
            .bytes_of(policy.evictable.iter().map(|bucket| &**bucket));
        if limits.max_bytes > 0
            && self.bytes().saturating_sub(evictable).saturating_add(bytes) > limits.max_bytes
        {
            return false;
        }
        let free = self.free_bytes.load(Ordering::Relaxed);
        !(limits.min_free_bytes > 0
            && free.saturating_add(evictable) < limits.min_free_bytes.saturating_add(bytes))
    }

    /// Waits until a commit passes a limit or the policy changes.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    pub fn refresh_gauges(&self) {
        CAPACITY_METRICS.store_bytes.set(self.bytes() as i64);
        CAPACITY_METRICS
            .free_bytes
            .set(self.free_bytes.load(Ordering::Relaxed) as i64);
    }

    /// Saves the order (blocking: run it off the serving threads); `clean` also marks it as
    /// knowing every file, for a stop. A process whose order another process has taken over
    /// (the new one of an upgrade) saves nothing: `Ok(false)`.
    pub fn save(&self, clean: bool) -> io::Result<bool> {
        let owner = std::fs::read_to_string(self.state_dir.join(OWNER_FILE)).unwrap_or_default();
        if owner.trim() != std::process::id().to_string() {
            return Ok(false);
        }
        self.apply_uses();
        let saved = self.order.serialize().map_err(io::Error::other)?;
        let path = self.state_dir.join(ORDER_FILE);
        let tmp = self
            .state_dir
            .join(format!("{ORDER_FILE}.{}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&saved)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if clean {
            std::fs::File::create(self.state_dir.join(CLEAN_MARK))?.sync_all()?;
        }
        std::fs::File::open(&self.state_dir)?.sync_all()?;
        Ok(true)
    }

    /// Brings the order in line with `found`, every object file on disk with the bytes of
    /// its file and variants (walked in the background after a start that was not clean):
    /// admits the objects the order does not know, corrects weights, and drops entries whose
    /// file is gone (`exists` looks again, for files committed after the walk passed their
    /// directory). Returns (admitted, dropped).
    pub fn reconcile(
        &self,
        found: &HashMap<(String, FileHash), u64>,
        exists: impl Fn(&str, &FileHash) -> bool,
    ) -> io::Result<(usize, usize)> {
        let mut admitted = 0;
        for ((bucket, hash), bytes) in found {
            let mut added = false;
            self.order.set_weight(bucket, hash, |known| {
                added = known.is_none();
                Some(*bytes)
            });
            admitted += usize::from(added);
        }
        let mut dropped = 0;
        for entry in self.order.entries().map_err(io::Error::other)? {
            if !found.contains_key(&(entry.bucket.clone(), entry.hash))
                && !exists(&entry.bucket, &entry.hash)
            {
                self.removed(&entry.bucket, &entry.hash);
                dropped += 1;
            }
        }
        self.refresh_gauges();
        Ok((admitted, dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ObjectKey;

    fn hash(key: &str) -> FileHash {
        FileHash::of(&ObjectKey::from_stored(key).unwrap())
    }

    fn limits(max_bytes: u64) -> CapacityLimits {
        CapacityLimits {
            max_bytes,
            min_free_bytes: 0,
        }
    }

    fn victims(capacity: &Capacity) -> Vec<(String, FileHash)> {
        std::iter::from_fn(|| capacity.take_victim())
            .map(|e| (e.bucket, e.hash))
            .collect()
    }

    #[test]
    fn victims_are_the_least_recently_used_of_cache_buckets_only() {
        let dir = tempfile::tempdir().unwrap();
        let (capacity, start) = Capacity::open(dir.path()).unwrap();
        assert_eq!(start, StartState::NeedsReconcile);
        capacity.set_policy(limits(1000), ["img"]);
        for i in 0..300 {
            capacity.committed("img", &hash(&format!("{i}")), || 10);
            capacity.committed("site", &hash(&format!("{i}")), || 10);
        }
        // Served since: objects 0, 10, 20, ...
        for i in (0..300).step_by(10) {
            capacity.served("img", &hash(&format!("{i}")), 10);
            capacity.served_if_known("img", || Some(hash(&format!("{i}"))));
        }
        assert_eq!(capacity.bytes(), 6000);
        assert_eq!(capacity.bucket_bytes("img"), 3000);
        let order = victims(&capacity);
        let unserved: Vec<_> = (0..300)
            .filter(|i| i % 10 != 0)
            .chain((0..300).step_by(10))
            .map(|i| ("img".to_string(), hash(&format!("{i}"))))
            .collect();
        assert_eq!(order, unserved);
        assert_eq!(capacity.bucket_bytes("img"), 0);
        assert_eq!(
            capacity.bytes(),
            3000,
            "the keep bucket's objects stay counted"
        );
    }

    #[test]
    fn weights_follow_versions_variants_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let (capacity, _) = Capacity::open(dir.path()).unwrap();
        let a = hash("a");
        capacity.committed("b", &a, || 100);
        capacity.variant_written("b", &a, || 130);
        capacity.variant_written("b", &a, || 120);
        assert_eq!(capacity.bytes(), 120);
        capacity.committed("b", &a, || 50);
        assert_eq!((capacity.bytes(), capacity.bucket_bytes("b")), (50, 50));
        // A variant of an object the order does not know waits for the object.
        capacity.variant_written("b", &hash("unknown"), || 70);
        assert_eq!(capacity.bytes(), 50);
        capacity.removed("b", &a);
        capacity.removed("b", &a);
        assert_eq!((capacity.bytes(), capacity.entries()), (0, 0));
        assert_eq!(capacity.bucket_bytes("b"), 0);
    }

    #[test]
    fn a_hit_by_name_admits_an_unknown_object_of_a_cache_bucket_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let (capacity, _) = Capacity::open(dir.path()).unwrap();
        capacity.set_policy(limits(0), ["img"]);
        capacity.served("img", &hash("x"), 40);
        capacity.served("site", &hash("x"), 40);
        capacity.served_if_known("img", || Some(hash("y")));
        assert_eq!(capacity.entries(), 0, "applied later, off the request");
        capacity.apply_uses();
        assert_eq!((capacity.entries(), capacity.bytes()), (1, 40));
        assert_eq!(capacity.bucket_bytes("img"), 40);
    }

    #[test]
    fn the_order_and_weights_survive_a_save_and_the_clean_mark_is_used_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (capacity, _) = Capacity::open(dir.path()).unwrap();
            capacity.set_policy(limits(1), ["img"]);
            for i in 0..50 {
                capacity.committed("img", &hash(&i.to_string()), || 100 + i);
            }
            capacity.served("img", &hash("7"), 0);
            assert!(capacity.save(true).unwrap());
        }
        let (capacity, start) = Capacity::open(dir.path()).unwrap();
        assert_eq!(start, StartState::Clean);
        assert!(!capacity.loaded());
        // Served, committed and purged while the saved order loads: the first two are more
        // recent than anything saved, the purged one is not brought back.
        capacity.set_policy(limits(1), ["img"]);
        capacity.served("img", &hash("3"), 103);
        // Eviction applies recorded hits every few milliseconds.
        capacity.apply_uses();
        capacity.committed("img", &hash("new"), || 1000);
        capacity.removed("img", &hash("9"));
        assert_eq!(capacity.load_saved(start), StartState::Clean);
        assert!(capacity.loaded());
        assert_eq!(capacity.entries(), 50);
        assert_eq!(
            capacity.bucket_bytes("img"),
            (100..150).sum::<u64>() - 109 + 1000
        );
        let order: Vec<_> = victims(&capacity).into_iter().map(|(_, h)| h).collect();
        let expected: Vec<_> = (0..50)
            .filter(|i| ![3, 7, 9].contains(i))
            .map(|i| i.to_string())
            .chain(["7".into(), "3".into(), "new".into()])
            .map(|i| hash(&i))
            .collect();
        assert_eq!(order, expected);
        drop(capacity);
        let (capacity, start) = Capacity::open(dir.path()).unwrap();
        assert_eq!(
            start,
            StartState::NeedsReconcile,
            "the clean mark is used once"
        );
        assert_eq!(capacity.load_saved(start), StartState::NeedsReconcile);
        assert_eq!(capacity.entries(), 50);
    }

    #[test]
    fn a_process_whose_order_was_taken_over_saves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _) = Capacity::open(dir.path()).unwrap();
        old.committed("img", &hash("a"), || 10);
        assert!(old.save(false).unwrap());
        // The new process of an upgrade starts (here: claims the order under another pid).
        let (new, _) = Capacity::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(STATE_DIR).join(OWNER_FILE), "1").unwrap();
        new.committed("img", &hash("b"), || 20);
        assert!(!old.save(true).unwrap(), "the draining process saved");
        assert!(!dir.path().join(STATE_DIR).join(CLEAN_MARK).exists());
    }

    #[test]
    fn a_damaged_saved_state_starts_empty_and_asks_for_a_walk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(STATE_DIR)).unwrap();
        std::fs::write(dir.path().join(STATE_DIR).join(ORDER_FILE), b"\x93garbage").unwrap();
        std::fs::write(dir.path().join(STATE_DIR).join(CLEAN_MARK), b"").unwrap();
        let (capacity, start) = Capacity::open(dir.path()).unwrap();
        assert_eq!(start, StartState::Clean);
        assert_eq!(capacity.load_saved(start), StartState::NeedsReconcile);
        assert_eq!(capacity.entries(), 0);
    }

    #[test]
    fn reconcile_admits_what_the_disk_has_and_drops_what_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (capacity, _) = Capacity::open(dir.path()).unwrap();
        capacity.committed("img", &hash("kept"), || 10);
        capacity.committed("img", &hash("lost"), || 20);
        capacity.committed("img", &hash("racing"), || 30);
        let found = HashMap::from([
            (("img".to_string(), hash("kept")), 15),
            (("img".to_string(), hash("new")), 40),
        ]);
        // "racing" was committed after the walk passed its directory: its file exists.
        let (admitted, dropped) = capacity
            .reconcile(&found, |_, h| *h == hash("racing"))
            .unwrap();
        assert_eq!((admitted, dropped), (1, 1));
        assert_eq!(capacity.bytes(), 15 + 40 + 30);
        assert_eq!(capacity.bucket_bytes("img"), 85);
    }

    #[test]
    fn room_counts_what_eviction_could_free_and_the_stuck_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (capacity, _) = Capacity::open(dir.path()).unwrap();
        capacity.set_policy(limits(1000), ["img"]);
        capacity.committed("site", &hash("k"), || 600);
        capacity.committed("img", &hash("c"), || 300);
        assert!(capacity.has_room(400), "300 evictable + 100 free");
        assert!(!capacity.has_room(401));
        assert_eq!(capacity.bytes_to_free(), 0);
        capacity.committed("img", &hash("d"), || 200);
        // 1100 > 1000: down to 950.
        assert_eq!(capacity.bytes_to_free(), 150);
        capacity.set_stuck(true);
        assert!(!capacity.has_room(0));
        capacity.set_policy(limits(0), ["img"]);
        assert!(capacity.has_room(u64::MAX), "no limit, no refusal");
    }
}
