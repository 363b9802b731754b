//! A memory tier for hot small objects, in front of any [`BucketStore`].
//!
//! Small objects (up to `max_object_bytes`) that are opened are kept in memory, whole, under
//! TinyUFO's admission and eviction (TinyLFU admission, S3-FIFO eviction), so a hot object is
//! served without opening, reading and closing its file on every request, and its bytes go to
//! the socket with one copy instead of two. Entries are trusted for `revalidate` at most; then
//! the store below is asked again, and the bytes in memory are kept if its metadata (ETag
//! included) is unchanged. A commit through this tier drops the key's entry at once, so a new
//! version is never hidden behind an old one. Only one request at a time reads a given object
//! into memory; requests meanwhile stream it from the store, so a burst of requests for a cold
//! object does not hold one copy per request. Likewise only one request at a time asks the
//! store below whether an entry past its revalidation time is still current; requests
//! meanwhile are served the entry, so a hot object due for revalidation costs the store one
//! request, not one per request in flight (a burst of HEADs on an S3 store).
//!
//! Once the tier is full, an object is read into memory only when it was asked for recently
//! ([`Doorkeeper`]): objects asked for once (most keys of a large bucket under random or
//! scanning traffic) cost no copy into memory, admission and eviction each.
//!
//! Variants (see [`super`]) of up to `max_object_bytes` share the cache. They are keyed by the
//! version they were made from, so they need no revalidation: a new version simply looks up a
//! variant that is not there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tinyufo::TinyUfo;

use super::{BucketStore, Derived, NewObject, ObjectMeta, ObjectWriter, StoreError, StoredObject};
use crate::doorkeeper::Doorkeeper;
use crate::in_flight::InFlight;
use crate::key::{ObjectIds, ObjectKey};
use crate::order::UseThrottle;
use originpull_support::clock::coarse_now;

/// TinyUFO weighs entries in u16 units; ours are KiB, plus one for the entry's own overhead.
const WEIGHT_UNIT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotTierLimits {
    pub max_bytes: usize,
    pub max_object_bytes: usize,
    pub revalidate: Duration,
}

#[derive(Clone)]
struct HotObject {
    bucket: String,
    /// `None` for the object itself, else the variant's name.
    variant: Option<String>,
    meta: ObjectMeta,
    /// What the answer derives from `meta` (its head), made once for all hits from memory, and
    /// kept when the same version is renewed.
    derived: Arc<Derived>,
    body: Bytes,
    loaded_at: Instant,
    /// When its last hit was told to the store below (for its eviction order).
    use_told: UseThrottle,
}

impl HotObject {
    fn new(bucket: &str, variant: Option<&str>, meta: ObjectMeta, body: Bytes) -> HotObject {
        HotObject {
            bucket: bucket.to_string(),
            variant: variant.map(str::to_string),
            derived: Arc::default(),
            meta,
            body,
            loaded_at: coarse_now(),
            use_told: UseThrottle::new(),
        }
    }
}

struct Shared<S> {
    inner: S,
    /// Bumped by every commit, so an `open` that raced with one does not cache what it read.
    commits: AtomicU64,
    cache: TinyUfo<u64, Arc<HotObject>>,
    /// Objects being read into memory right now.
    loading: InFlight<u64>,
    /// Entries past their revalidation time being checked against the store right now.
    revalidating: InFlight<u64>,
    limits: HotTierLimits,
    /// Once the tier is full, takes in only objects asked for recently.
    doorkeeper: Doorkeeper,
    ids: ObjectIds,
}

pub struct HotTier<S> {
    shared: Arc<Shared<S>>,
}

impl<S: BucketStore> HotTier<S> {
    pub fn new(inner: S, limits: HotTierLimits) -> HotTier<S> {
        let capacity_units = (limits.max_bytes / WEIGHT_UNIT).max(1);
        // TinyUFO sizes its frequency sketch from this; bounded so a large tier starts quickly.
        let estimated_entries = (limits.max_bytes / 4096).clamp(16, 1 << 20);
        HotTier {
            shared: Arc::new(Shared {
                inner,
                commits: AtomicU64::new(0),
                cache: TinyUfo::new(capacity_units, estimated_entries),
                loading: InFlight::new(),
                revalidating: InFlight::new(),
                limits,
                doorkeeper: Doorkeeper::new(estimated_entries),
                ids: ObjectIds::default(),
            }),
        }
    }
}

impl<S> Shared<S> {
    fn id(&self, bucket: &str, key: &ObjectKey) -> u64 {
        self.ids.of(bucket, key)
    }

    fn variant_id(&self, bucket: &str, key: &ObjectKey, variant: &str) -> u64 {
        self.ids.of_variant(bucket, key, variant)
    }

    /// The cached `variant` made from version `of`, if any.
    fn lookup_variant(
        &self,
        id: u64,
        bucket: &str,
        of: &ObjectMeta,
        variant: &str,
    ) -> Option<Arc<HotObject>> {
        let hot = self.cache.get(&id)?;
        let same = hot.bucket == bucket
            && hot.variant.as_deref() == Some(variant)
            && hot.meta.is_variant_of(of);
        same.then_some(hot)
    }

    /// Caches a variant no larger than `max_object_bytes`, and returns it.
    fn put_variant(
        &self,
        id: u64,
        bucket: &str,
        variant: &str,
        meta: ObjectMeta,
        body: Bytes,
    ) -> Arc<HotObject> {
        let hot = Arc::new(HotObject::new(bucket, Some(variant), meta, body));
        self.put_weighed(id, hot.clone());
        hot
    }

    /// The cached object for exactly this bucket and key, and whether it is still within its
    /// revalidation time.
    fn lookup(&self, id: u64, bucket: &str, key: &ObjectKey) -> Option<(Arc<HotObject>, bool)> {
        let hot = self.cache.get(&id)?;
        let same = hot.bucket == bucket && hot.variant.is_none() && hot.meta.key == key.as_str();
        let fresh = coarse_now().saturating_duration_since(hot.loaded_at) < self.limits.revalidate;
        same.then_some((hot, fresh))
    }

    fn weight(size: u64) -> u16 {
        (size as usize / WEIGHT_UNIT + 1).min(u16::MAX as usize) as u16
    }

    /// Caches `hot` unless a commit happened since `commits_before` (what was read may be old).
    fn put(&self, id: u64, hot: &Arc<HotObject>, commits_before: u64) {
        if self.commits.load(Ordering::Acquire) == commits_before {
            self.put_weighed(id, hot.clone());
        }
    }

    fn put_weighed(&self, id: u64, hot: Arc<HotObject>) {
        let weight = Self::weight(hot.meta.size);
        let evicted = self.cache.put(id, hot, weight);
        self.doorkeeper.note_evictions(evicted.len());
    }
}

#[async_trait]
impl<S: BucketStore> crate::StoreLayer for HotTier<S> {
    fn below(&self) -> &dyn BucketStore {
        &self.shared.inner
    }

    fn open_in_memory(&self, bucket: &str, key: &ObjectKey) -> Option<Box<dyn StoredObject>> {
        let shared = &self.shared;
        match shared.lookup(shared.id(bucket, key), bucket, key) {
            Some((hot, true)) => {
                shared.served_from_memory(&hot, bucket, key);
                Some(Box::new(MemoryObject(hot)))
            }
            _ => None,
        }
    }

    async fn open(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        let shared = &self.shared;
        let id = shared.id(bucket, key);
        let (stale, _revalidation) = match shared.lookup(id, bucket, key) {
            Some((hot, true)) => {
                shared.served_from_memory(&hot, bucket, key);
                return Ok(Some(Box::new(MemoryObject(hot))));
            }
            Some((hot, false)) => match shared.revalidating.try_claim(&id) {
                Some(claim) => (Some(hot), Some(claim)),
                // Another request is asking the store: this one is served what it will most
                // likely confirm.
                None => {
                    shared.served_from_memory(&hot, bucket, key);
                    return Ok(Some(Box::new(MemoryObject(hot))));
                }
            },
            None => (None, None),
        };
        let commits_before = shared.commits.load(Ordering::Acquire);
        let Some(mut object) = shared.inner.open(bucket, key).await? else {
            shared.cache.remove(&id);
            return Ok(None);
        };
        let size = object.meta().size;
        if size > shared.limits.max_object_bytes as u64 {
            return Ok(Some(object));
        }
        if let Some(stale) = stale.filter(|stale| stale.meta == *object.meta()) {
            // Unchanged in the store: the bytes in memory are still right.
            let renewed = Arc::new(HotObject {
                loaded_at: coarse_now(),
                ..HotObject::clone(&stale)
            });
            shared.put(id, &renewed, commits_before);
            return Ok(Some(Box::new(MemoryObject(renewed))));
        }
        if !shared.doorkeeper.admits(id) {
            return Ok(Some(object));
        }
        let Some(_loading) = shared.loading.try_claim(&id) else {
            return Ok(Some(object));
        };
        let body = object.read_whole().await?;
        let hot = Arc::new(HotObject::new(bucket, None, object.meta().clone(), body));
        shared.put(id, &hot, commits_before);
        Ok(Some(Box::new(MemoryObject(hot))))
    }

    async fn create(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Box<dyn ObjectWriter>, StoreError> {
        let inner = self.shared.inner.create(bucket, key).await?;
        Ok(Box::new(InvalidatingWriter {
            inner,
            shared: self.shared.clone(),
            id: self.shared.id(bucket, key),
        }))
    }

    async fn open_variant(
        &self,
        bucket: &str,
        key: &ObjectKey,
        of: &ObjectMeta,
        variant: &str,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        let shared = &self.shared;
        let id = shared.variant_id(bucket, key, variant);
        if let Some(hot) = shared.lookup_variant(id, bucket, of, variant) {
            return Ok(Some(Box::new(MemoryObject(hot))));
        }
        let Some(mut object) = shared.inner.open_variant(bucket, key, of, variant).await? else {
            return Ok(None);
        };
        let size = object.meta().size;
        if size > shared.limits.max_object_bytes as u64 || !shared.doorkeeper.admits(id) {
            return Ok(Some(object));
        }
        // Small, and read by one request or a few at worst: no loading claim needed.
        let body = object.read_whole().await?;
        let hot = shared.put_variant(id, bucket, variant, object.meta().clone(), body);
        Ok(Some(Box::new(MemoryObject(hot))))
    }

    async fn put_variant(
        &self,
        bucket: &str,
        key: &ObjectKey,
        of: &ObjectMeta,
        variant: &str,
        body: Bytes,
    ) -> Result<(), StoreError> {
        let shared = &self.shared;
        shared
            .inner
            .put_variant(bucket, key, of, variant, body.clone())
            .await?;
        if body.len() <= shared.limits.max_object_bytes {
            let meta = ObjectMeta {
                size: body.len() as u64,
                ..of.clone()
            };
            let id = shared.variant_id(bucket, key, variant);
            shared.put_variant(id, bucket, variant, meta, body);
        }
        Ok(())
    }

    async fn delete(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        let removed = self.shared.inner.delete(bucket, key).await;
        self.shared.forget(bucket, key);
        removed
    }

    async fn mark_checked(&self, bucket: &str, key: &ObjectKey) -> Result<bool, StoreError> {
        let marked = self.shared.inner.mark_checked(bucket, key).await;
        // The cached metadata carries the old check time.
        self.shared.forget(bucket, key);
        marked
    }
}

impl<S: BucketStore> Shared<S> {
    /// A hit served from memory: the store below orders its objects by use (at most once a
    /// second per object, see [`UseThrottle`]).
    fn served_from_memory(&self, hot: &HotObject, bucket: &str, key: &ObjectKey) {
        if hot.use_told.due() {
            self.inner.served_above(bucket, key);
        }
    }
}

impl<S> Shared<S> {
    /// Drops the key's entry and keeps a racing `open` from caching what it read before.
    fn forget(&self, bucket: &str, key: &ObjectKey) {
        self.commits.fetch_add(1, Ordering::AcqRel);
        self.cache.remove(&self.id(bucket, key));
    }
}

struct MemoryObject(Arc<HotObject>);

#[async_trait]
impl StoredObject for MemoryObject {
    fn meta(&self) -> &ObjectMeta {
        &self.0.meta
    }

    fn derived(&self) -> Option<&Derived> {
        Some(&self.0.derived)
    }

    async fn read_at(&mut self, offset: u64, max: usize) -> Result<Bytes, StoreError> {
        let body = &self.0.body;
        let start = (offset.min(body.len() as u64)) as usize;
        let end = start.saturating_add(max).min(body.len());
        Ok(body.slice(start..end))
    }
}

/// Drops the key's cached entry when a new version is committed.
struct InvalidatingWriter<S> {
    inner: Box<dyn ObjectWriter>,
    shared: Arc<Shared<S>>,
    id: u64,
}

#[async_trait]
impl<S: BucketStore> ObjectWriter for InvalidatingWriter<S> {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.inner.write(chunk).await
    }

    fn written(&self) -> u64 {
        self.inner.written()
    }

    async fn commit(self: Box<Self>, object: NewObject) -> Result<ObjectMeta, StoreError> {
        let meta = self.inner.commit(object).await?;
        self.shared.commits.fetch_add(1, Ordering::AcqRel);
        self.shared.cache.remove(&self.id);
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskStore;

    fn key(k: &str) -> ObjectKey {
        ObjectKey::from_request_path(&format!("/{k}")).unwrap()
    }

    async fn put(store: &dyn BucketStore, k: &str, body: &[u8]) {
        let mut w = store.create("b-1", &key(k)).await.unwrap();
        w.write(Bytes::copy_from_slice(body)).await.unwrap();
        w.commit(NewObject::default()).await.unwrap();
    }

    /// A tier over a disk store in `dir`, whose entries are trusted for `revalidate`.
    fn tier(dir: &tempfile::TempDir, revalidate: Duration) -> HotTier<DiskStore> {
        tier_and_file(dir, revalidate, "unused").0
    }

    /// [`tier`], and the path of the file that would hold key `k` of bucket `b-1`.
    fn tier_and_file(
        dir: &tempfile::TempDir,
        revalidate: Duration,
        k: &str,
    ) -> (HotTier<DiskStore>, std::path::PathBuf) {
        let disk = DiskStore::open(dir.path()).unwrap();
        let path = disk.object_path("b-1", &key(k));
        (HotTier::new(disk, limits(revalidate)), path)
    }

    fn limits(revalidate: Duration) -> HotTierLimits {
        HotTierLimits {
            max_bytes: 1 << 20,
            max_object_bytes: 64 * 1024,
            revalidate,
        }
    }

    #[tokio::test]
    async fn serves_from_memory_and_sees_new_versions_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (hot, path) = tier_and_file(&dir, Duration::from_secs(60), "a");
        put(&hot, "a", b"one").await;
        for _ in 0..3 {
            let mut o = hot.open("b-1", &key("a")).await.unwrap().unwrap();
            assert_eq!(&o.read_at(0, 10).await.unwrap()[..], b"one");
        }
        // Removed behind its back: still served from memory within the revalidation time...
        std::fs::remove_file(&path).unwrap();
        assert!(hot.open("b-1", &key("a")).await.unwrap().is_some());
        // ...but a commit through the tier replaces it at once.
        put(&hot, "a", b"two").await;
        let mut o = hot.open("b-1", &key("a")).await.unwrap().unwrap();
        assert_eq!(&o.read_at(0, 10).await.unwrap()[..], b"two");
        assert_eq!(&o.read_at(1, 1).await.unwrap()[..], b"w");
        assert!(o.read_at(3, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn entries_expire_after_the_revalidation_time() {
        let dir = tempfile::tempdir().unwrap();
        let (hot, path) = tier_and_file(&dir, Duration::from_millis(50), "a");
        put(&hot, "a", b"one").await;
        assert!(hot.open("b-1", &key("a")).await.unwrap().is_some());
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(hot.open("b-1", &key("a")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_unchanged_object_keeps_its_bytes_in_memory_past_revalidation() {
        let dir = tempfile::tempdir().unwrap();
        let hot = tier(&dir, Duration::from_millis(50));
        put(&hot, "a", b"one").await;
        let mut first = hot.open("b-1", &key("a")).await.unwrap().unwrap();
        let first_bytes = first.read_at(0, 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        let mut again = hot.open("b-1", &key("a")).await.unwrap().unwrap();
        let again_bytes = again.read_at(0, 10).await.unwrap();
        assert_eq!(again_bytes, first_bytes);
        // The same allocation: revalidation read the metadata, not the body.
        assert_eq!(again_bytes.as_ptr(), first_bytes.as_ptr());
    }

    #[tokio::test]
    async fn a_version_written_behind_the_tier_shows_after_revalidation() {
        let dir = tempfile::tempdir().unwrap();
        let hot = tier(&dir, Duration::from_millis(50));
        put(&hot, "a", b"one").await;
        assert!(hot.open("b-1", &key("a")).await.unwrap().is_some());
        // Another writer (another process on the same store) commits a new version.
        let other = DiskStore::open(dir.path()).unwrap();
        put(&other, "a", b"second").await;
        tokio::time::sleep(Duration::from_millis(80)).await;
        let mut o = hot.open("b-1", &key("a")).await.unwrap().unwrap();
        assert_eq!(&o.read_at(0, 10).await.unwrap()[..], b"second");
    }

    #[tokio::test]
    async fn variants_are_served_from_memory_for_their_version_only() {
        let dir = tempfile::tempdir().unwrap();
        let (hot, path) = tier_and_file(&dir, Duration::from_secs(60), "a");
        put(&hot, "a", b"one").await;
        let v1 = hot
            .open("b-1", &key("a"))
            .await
            .unwrap()
            .unwrap()
            .meta()
            .clone();
        hot.put_variant("b-1", &key("a"), &v1, "gzip", Bytes::from_static(b"g1"))
            .await
            .unwrap();
        // Gone from disk, still served from memory: the put cached it.
        let variant_file = format!("{}.gzip", path.display());
        std::fs::remove_file(&variant_file).unwrap();
        let mut v = hot
            .open_variant("b-1", &key("a"), &v1, "gzip")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&v.read_at(0, 10).await.unwrap()[..], b"g1");
        assert_eq!(v.meta().size, 2);
        // Not the object itself, and not another version's.
        assert_eq!(
            &hot.open("b-1", &key("a"))
                .await
                .unwrap()
                .unwrap()
                .read_at(0, 10)
                .await
                .unwrap()[..],
            b"one"
        );
        put(&hot, "a", b"two").await;
        let v2 = hot
            .open("b-1", &key("a"))
            .await
            .unwrap()
            .unwrap()
            .meta()
            .clone();
        assert!(hot
            .open_variant("b-1", &key("a"), &v2, "gzip")
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_burst_past_the_revalidation_time_asks_the_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let below =
            crate::test_store::SlowCountedOpens::open(dir.path(), Duration::from_millis(200));
        let hot = Arc::new(HotTier::new(below, limits(Duration::from_millis(50))));
        put(&*hot, "a", b"one").await;
        assert!(hot.open("b-1", &key("a")).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        let opens_before = hot.shared.inner.opens();
        let burst: Vec<_> = (0..20)
            .map(|_| {
                let hot = hot.clone();
                tokio::spawn(async move {
                    let mut o = hot.open("b-1", &key("a")).await.unwrap().unwrap();
                    o.read_at(0, 10).await.unwrap()
                })
            })
            .collect();
        for request in burst {
            assert_eq!(&request.await.unwrap()[..], b"one");
        }
        assert_eq!(
            hot.shared.inner.opens() - opens_before,
            1,
            "one revalidation"
        );
    }

    #[tokio::test]
    async fn once_full_the_tier_takes_in_only_objects_asked_for_before() {
        let dir = tempfile::tempdir().unwrap();
        let hot = HotTier::new(
            DiskStore::open(dir.path()).unwrap(),
            HotTierLimits {
                max_bytes: 64 * 1024,
                ..limits(Duration::from_secs(60))
            },
        );
        let body = vec![1u8; 2000];
        let in_memory = |k: &str| hot.open_in_memory("b-1", &key(k)).is_some();
        // While it has room, a first read is kept.
        put(&hot, "first", &body).await;
        hot.open("b-1", &key("first")).await.unwrap().unwrap();
        assert!(in_memory("first"));
        // Fill it past its size: evictions make it full.
        let mut n = 0;
        while !hot.shared.doorkeeper.is_on() {
            let k = format!("fill{n}");
            put(&hot, &k, &body).await;
            hot.open("b-1", &key(&k)).await.unwrap().unwrap();
            n += 1;
            assert!(n < 1000, "never full");
        }
        put(&hot, "new", &body).await;
        let mut once = hot.open("b-1", &key("new")).await.unwrap().unwrap();
        assert_eq!(once.read_at(0, 4000).await.unwrap().len(), 2000);
        assert!(!in_memory("new"), "read once: served from the store only");
        // Read again, it is up to TinyUFO's own admission (frequency against the victim's).
        for _ in 0..5 {
            hot.open("b-1", &key("new")).await.unwrap().unwrap();
        }
        assert!(in_memory("new"), "read again: kept");
    }

    #[tokio::test]
    async fn large_objects_bypass_memory() {
        let dir = tempfile::tempdir().unwrap();
        let hot = tier(&dir, Duration::from_secs(60));
        let big = vec![7u8; 100 * 1024];
        put(&hot, "big", &big).await;
        let mut o = hot.open("b-1", &key("big")).await.unwrap().unwrap();
        assert_eq!(o.read_at(0, 200 * 1024).await.unwrap().len(), 100 * 1024);
    }
}
