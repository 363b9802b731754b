//! The local tier: copies of a remote store's objects on this node's disk (`store.local_tier`),
//! so hits of objects too large for the memory tier do not go to the store every time.
//!
//! A copy is made in the background after an object is read from the store, kept in a
//! [`DiskStore`] under `dir/originpull-local-tier`, and served for `revalidate_secs`; then the
//! store is asked (`HEAD`) and the copy kept if the ETag is unchanged, dropped otherwise, so an
//! object deleted or replaced in the store stops being served within `revalidate_secs`. Copies
//! past `max_bytes` are removed least recently used first, in the order the disk store's
//! eviction keeps too (pingora-cache's eviction manager, [`crate::order`]). While the store fails, copies are
//! served whatever their age. One request at a time asks the store about a given copy; requests
//! meanwhile are served the copy, so a hot object costs the store one `HEAD` per
//! `revalidate_secs`, not one per request in flight.
//!
//! Copies survive a restart. Beside each copy's file, `<file>.store-meta` holds the store's
//! metadata of the copied version (its ETag, which is what is served, is not the disk file's own
//! for multipart objects) as JSON, and its modification time is when the copy was last checked
//! against the store. At start the index is rebuilt from these files on a thread of its own, so
//! serving does not wait (a key asked for before its copy is indexed is read from the store):
//! a copy whose file or record is missing, unreadable or does not match the other is removed,
//! and copies past `max_bytes` are evicted, least recently checked first.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{
    BucketStore, DiskStore, NewObject, ObjectMeta, ObjectWriter, StoreError, StoredObject,
};
use crate::in_flight::InFlight;
use crate::key::{FileHash, ObjectKey};
use crate::metrics::STORE_METRICS;
use crate::order::Order;
use originpull_config::LocalTierSettings;
use originpull_support::log_summary::SummarizedLog;

/// Copies that fail while the store fails: one per key a client asks for.
static COPY_FAILURES: SummarizedLog =
    SummarizedLog::new(log::Level::Warn, module_path!(), "local tier copies failed");

/// Bytes read from the store per call while a copy is made.
const COPY_CHUNK: usize = 1024 * 1024;
/// Ends the name of a copy's record, beside its file (not a variant name: it has a `-`).
const RECORD_SUFFIX: &str = ".store-meta";

/// What `<copy file>.store-meta` holds; its modification time is the last check.
#[derive(Serialize, Deserialize)]
struct CopyRecord {
    bucket: String,
    /// The store's metadata of the copied version.
    meta: ObjectMeta,
}

/// The record of the copy whose file is `object_path`.
fn record_path(object_path: &Path) -> PathBuf {
    let mut path = object_path.as_os_str().to_os_string();
    path.push(RECORD_SUFFIX);
    PathBuf::from(path)
}

/// A copy's bucket and the hash of its key (its file's name, its key in the order).
type EntryId = (String, FileHash);

fn entry_id(bucket: &str, key: &ObjectKey) -> EntryId {
    (bucket.to_string(), FileHash::of(key))
}

struct Entry {
    key: ObjectKey,
    /// The store's metadata of the copied version (its ETag is what is served).
    meta: ObjectMeta,
    /// When the copy was made or last found unchanged in the store.
    checked: SystemTime,
}

struct Index {
    entries: HashMap<EntryId, Entry>,
    /// The copies by use, weighed in body bytes.
    order: Order,
    copying: HashSet<EntryId>,
    /// Until the index is rebuilt at start, the copies removed meanwhile (purged, replaced),
    /// which the rebuild must not bring back.
    removed_before_rebuilt: Option<HashSet<EntryId>>,
}

impl Index {
    fn touch(&mut self, id: &EntryId) {
        self.order.used_if_known(&id.0, &id.1);
    }

    fn remove(&mut self, id: &EntryId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.order.remove(&id.0, &id.1);
        Some(entry)
    }

    /// Adds `entry` as the most recently used copy (replacing any copy of `id`).
    fn insert(&mut self, id: EntryId, entry: Entry) {
        self.order
            .set_weight(&id.0, &id.1, |_| Some(entry.meta.size));
        // A copy made again at the same size is still the most recent use.
        self.order.used_if_known(&id.0, &id.1);
        self.entries.insert(id, entry);
    }

    fn bytes(&self) -> u64 {
        self.order.bytes()
    }

    /// Takes the least recently used copies out until `max_bytes` holds; returns them (their
    /// files are still to be removed).
    fn evict_past(&mut self, max_bytes: u64) -> Vec<(String, ObjectKey)> {
        let mut evicted = Vec::new();
        while self.order.bytes() > max_bytes {
            let Some(oldest) = self.order.take_least_recent(|_| true) else {
                break;
            };
            if let Some(entry) = self.entries.remove(&(oldest.bucket.clone(), oldest.hash)) {
                evicted.push((oldest.bucket, entry.key));
            }
        }
        evicted
    }
}

struct Shared<S> {
    inner: S,
    disk: DiskStore,
    /// The tier's directory (the disk store's root).
    root: PathBuf,
    index: Mutex<Index>,
    max_bytes: u64,
    revalidate: Duration,
    /// Copies past `revalidate` being checked against the store right now.
    revalidating: InFlight<EntryId>,
}

pub struct LocalTier<S> {
    shared: Arc<Shared<S>>,
}

impl<S: BucketStore> LocalTier<S> {
    /// Opens the tier, keeping the copies an earlier run left; their index is rebuilt in the
    /// background (see the module documentation).
    pub fn open(inner: S, settings: &LocalTierSettings) -> std::io::Result<LocalTier<S>> {
        let tier = LocalTier::open_unindexed(inner, settings)?;
        let rebuilding = tier.shared.clone();
        std::thread::Builder::new()
            .name("local-tier-index".into())
            .spawn(move || rebuilding.rebuild_index())?;
        Ok(tier)
    }

    /// The tier with its index still to be rebuilt.
    fn open_unindexed(inner: S, settings: &LocalTierSettings) -> std::io::Result<LocalTier<S>> {
        let root = settings.dir.join("originpull-local-tier");
        let disk = DiskStore::open(&root)?;
        STORE_METRICS.local_tier_bytes.set(0);
        let shared = Arc::new(Shared {
            inner,
            disk,
            root,
            index: Mutex::new(Index {
                entries: HashMap::new(),
                order: Order::new(),
                copying: HashSet::new(),
                removed_before_rebuilt: Some(HashSet::new()),
            }),
            max_bytes: settings.max_bytes,
            revalidate: Duration::from_secs(settings.revalidate_secs),
            revalidating: InFlight::new(),
        });
        Ok(LocalTier { shared })
    }
}

/// A copy found on disk at start.
struct FoundCopy {
    id: EntryId,
    key: ObjectKey,
    meta: ObjectMeta,
    checked: SystemTime,
}

impl<S: BucketStore> Shared<S> {
    /// Removes a copy's file and record. A reader that has the file open keeps reading it
    /// (Unix semantics).
    fn remove_files(&self, bucket: &str, key: &ObjectKey) {
        let path = self.disk.object_path(bucket, key);
        let _ = std::fs::remove_file(record_path(&path));
        let _ = std::fs::remove_file(&path);
    }

    fn remove_copy(&self, id: &EntryId, key: &ObjectKey) {
        let removed = {
            let mut index = self.index.lock();
            if let Some(removed_before_rebuilt) = &mut index.removed_before_rebuilt {
                removed_before_rebuilt.insert(id.clone());
            }
            index.remove(id)
        };
        if removed.is_some() {
            STORE_METRICS
                .local_tier_bytes
                .set(self.index.lock().bytes() as i64);
            self.remove_files(&id.0, key);
        }
    }

    /// Evicts past `max_bytes`, removing the evicted copies' files; returns how many.
    fn evict(&self, mut index: parking_lot::MutexGuard<'_, Index>) -> usize {
        let evicted = index.evict_past(self.max_bytes);
        STORE_METRICS.local_tier_bytes.set(index.bytes() as i64);
        drop(index);
        let count = evicted.len();
        for (bucket, key) in evicted {
            STORE_METRICS.local_tier_evictions.inc();
            self.remove_files(&bucket, &key);
        }
        count
    }

    /// The copy, served under the store's metadata.
    async fn open_copy(&self, id: &EntryId, key: &ObjectKey) -> Option<Box<dyn StoredObject>> {
        let meta = {
            let mut index = self.index.lock();
            index.touch(id);
            index.entries.get(id)?.meta.clone()
        };
        match self.disk.open(&id.0, key).await {
            Ok(Some(object)) if object.meta().size == meta.size => {
                STORE_METRICS.local_tier_hits.inc();
                Some(Box::new(LocalCopy { object, meta }))
            }
            _ => {
                self.remove_copy(id, key);
                None
            }
        }
    }

    /// Records that the copy of `id` was found unchanged in the store just now, in the index
    /// and in its record's modification time (which a restart reads back).
    fn mark_checked(&self, id: &EntryId, key: &ObjectKey) {
        let now = SystemTime::now();
        if let Some(entry) = self.index.lock().entries.get_mut(id) {
            entry.checked = now;
        }
        let record = record_path(&self.disk.object_path(&id.0, key));
        if let Err(e) = std::fs::File::options()
            .write(true)
            .open(&record)
            .and_then(|file| file.set_modified(now))
        {
            log::warn!(
                "local tier: recording the check of {}: {e}",
                record.display()
            );
        }
    }

    /// Copies the current version from the store to disk, then evicts past `max_bytes`.
    async fn make_copy(self: Arc<Self>, bucket: String, key: ObjectKey) {
        let id = entry_id(&bucket, &key);
        if !self.index.lock().copying.insert(id.clone()) {
            return;
        }
        let result = self.copy_once(&bucket, &key).await;
        let mut index = self.index.lock();
        index.copying.remove(&id);
        match result {
            Ok(Some(meta)) => {
                let entry = Entry {
                    key: key.clone(),
                    meta,
                    checked: SystemTime::now(),
                };
                index.insert(id, entry);
                self.evict(index);
            }
            Ok(None) => {}
            Err(e) => {
                drop(index);
                COPY_FAILURES
                    .note(|| format!("local tier: copying {:?} of {bucket}: {e}", key.as_str()));
            }
        }
    }

    /// Rebuilds the index from the copies on disk (see the module documentation). Copies
    /// indexed meanwhile (made since the start) are newer and stay as they are.
    fn rebuild_index(&self) {
        let (mut found, dropped) = self.find_copies();
        found.sort_by_key(|copy| copy.checked);
        let mut kept = 0;
        let mut index = self.index.lock();
        let removed = index.removed_before_rebuilt.take().unwrap_or_default();
        // Most recent first.
        let made_since_start = index.order.entries().unwrap_or_default();
        for copy in found {
            if index.entries.contains_key(&copy.id) || index.copying.contains(&copy.id) {
                continue;
            }
            if removed.contains(&copy.id) {
                self.remove_files(&copy.id.0, &copy.key);
                continue;
            }
            kept += 1;
            let entry = Entry {
                key: copy.key,
                meta: copy.meta,
                checked: copy.checked,
            };
            index.insert(copy.id, entry);
        }
        // Copies made since the start were used after every rebuilt one.
        for made in made_since_start.into_iter().rev() {
            index.touch(&(made.bucket, made.hash));
        }
        let evicted = self.evict(index);
        log::info!(
            "local tier: {kept} copies kept from the last run, {evicted} of them evicted past \
             max_bytes, {dropped} files of damaged or partial copies removed"
        );
    }

    /// Walks `root/<bucket>/objects/`, pairing each copy's file with its record; removes the
    /// files of copies that are not whole. Returns the whole copies and how many were removed.
    fn find_copies(&self) -> (Vec<FoundCopy>, usize) {
        let entries = |dir: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        let (mut found, mut dropped) = (Vec::new(), 0);
        for bucket_dir in entries(&self.root) {
            let Some(bucket) = bucket_dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            for level1 in entries(&bucket_dir.join("objects")) {
                for level2 in entries(&level1) {
                    for path in entries(&level2) {
                        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                        if name.contains('.') && !name.ends_with(RECORD_SUFFIX) {
                            continue;
                        }
                        match self.check_copy(bucket, &path) {
                            Some(Some(copy)) => found.push(copy),
                            Some(None) => {}
                            None => {
                                dropped += 1;
                                let _ = std::fs::remove_file(&path);
                                let _ =
                                    std::fs::remove_file(match name.strip_suffix(RECORD_SUFFIX) {
                                        Some(_) => path.with_extension(""),
                                        None => record_path(&path),
                                    });
                            }
                        }
                    }
                }
            }
        }
        (found, dropped)
    }

    /// Judges the file at `path` in `bucket`: `Some(Some(copy))` for a record whose copy is
    /// whole, `Some(None)` for a copy's file with a record (judged with its record), `None`
    /// for a file or record that is not part of a whole copy.
    fn check_copy(&self, bucket: &str, path: &Path) -> Option<Option<FoundCopy>> {
        let Some(object_path) = path
            .to_str()
            .and_then(|p| p.strip_suffix(RECORD_SUFFIX))
            .map(PathBuf::from)
        else {
            // A copy's file: whole only with its record.
            return record_path(path).exists().then_some(None);
        };
        let bytes = std::fs::read(path).ok()?;
        let record: CopyRecord = serde_json::from_slice(&bytes).ok()?;
        let checked = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        let key = ObjectKey::from_stored(&record.meta.key).ok()?;
        if record.bucket != bucket || self.disk.object_path(bucket, &key) != object_path {
            return None;
        }
        let on_disk = self.disk.committed_meta(&object_path, &key).ok()??;
        if on_disk.size != record.meta.size {
            return None;
        }
        Some(Some(FoundCopy {
            id: entry_id(bucket, &key),
            key,
            meta: record.meta,
            checked,
        }))
    }

    /// Writes the record of a copy just committed: into the bucket's `tmp/`, then renamed
    /// beside the copy's file.
    async fn write_record(
        &self,
        bucket: &str,
        key: &ObjectKey,
        meta: &ObjectMeta,
    ) -> Result<(), StoreError> {
        let record = CopyRecord {
            bucket: bucket.to_string(),
            meta: meta.clone(),
        };
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode the copy's record: {e}")))?;
        let tmp = self.disk.tmp_path(bucket);
        tokio::fs::write(&tmp, bytes).await?;
        let renamed =
            tokio::fs::rename(&tmp, record_path(&self.disk.object_path(bucket, key))).await;
        if renamed.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        Ok(renamed?)
    }

    async fn copy_once(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        let Some(mut source) = self.inner.open(bucket, key).await? else {
            return Ok(None);
        };
        let meta = source.meta().clone();
        if meta.size > self.max_bytes {
            return Ok(None);
        }
        let mut writer = self.disk.create(bucket, key).await?;
        let mut offset = 0;
        while offset < meta.size {
            let chunk = source.read_at(offset, COPY_CHUNK).await?;
            if chunk.is_empty() {
                return Err(StoreError::Corrupt(format!("{:?} ended early", meta.key)));
            }
            offset += chunk.len() as u64;
            writer.write(chunk).await?;
        }
        let object = NewObject {
            content_type: Some(meta.content_type.clone()),
            headers: meta.headers.clone(),
            origin_etag: meta.origin_etag.clone(),
            origin_last_modified: meta.origin_last_modified.clone(),
        };
        writer.commit(object).await?;
        if let Err(e) = self.write_record(bucket, key, &meta).await {
            // Not indexed, and without its record not kept by a restart either.
            let _ = std::fs::remove_file(self.disk.object_path(bucket, key));
            return Err(e);
        }
        Ok(Some(meta))
    }
}

#[async_trait]
impl<S: BucketStore> crate::StoreLayer for LocalTier<S> {
    fn below(&self) -> &dyn BucketStore {
        &self.shared.inner
    }

    async fn open(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        let shared = &self.shared;
        let id = entry_id(bucket, key);
        let cached = shared
            .index
            .lock()
            .entries
            .get(&id)
            // A clock set back makes the copy due: one HEAD too many, never a stale copy.
            .map(|e| {
                let fresh = e.checked.elapsed().is_ok_and(|age| age < shared.revalidate);
                (fresh, e.meta.etag.clone())
            });
        let _revalidation = match cached {
            Some((true, _)) => {
                if let Some(copy) = shared.open_copy(&id, key).await {
                    return Ok(Some(copy));
                }
                None
            }
            Some((false, _)) => {
                let claim = shared.revalidating.try_claim(&id);
                if claim.is_none() {
                    // Another request is asking the store: this one is served the copy.
                    if let Some(copy) = shared.open_copy(&id, key).await {
                        return Ok(Some(copy));
                    }
                }
                claim
            }
            None => None,
        };
        match shared.inner.open(bucket, key).await {
            Ok(Some(object)) => {
                if let Some((_, etag)) = &cached {
                    if *etag == object.meta().etag {
                        shared.mark_checked(&id, key);
                        if let Some(copy) = shared.open_copy(&id, key).await {
                            return Ok(Some(copy));
                        }
                    } else {
                        shared.remove_copy(&id, key);
                    }
                }
                STORE_METRICS.local_tier_misses.inc();
                tokio::spawn(shared.clone().make_copy(bucket.to_string(), key.clone()));
                Ok(Some(object))
            }
            Ok(None) => {
                shared.remove_copy(&id, key);
                Ok(None)
            }
            Err(e @ StoreError::Unavailable(_)) => {
                // The store is down: a copy of any age beats a redirect.
                if cached.is_some() {
                    if let Some(copy) = shared.open_copy(&id, key).await {
                        return Ok(Some(copy));
                    }
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn create(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Box<dyn ObjectWriter>, StoreError> {
        // A new version replaces the copy at once rather than after `revalidate_secs`.
        self.shared.remove_copy(&entry_id(bucket, key), key);
        self.shared.inner.create(bucket, key).await
    }

    async fn delete(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        let id = entry_id(bucket, key);
        self.shared.remove_copy(&id, key);
        self.shared.inner.delete(bucket, key).await
    }
}

/// A copy on disk, described as the store describes the object (its ETag).
struct LocalCopy {
    object: Box<dyn StoredObject>,
    meta: ObjectMeta,
}

#[async_trait]
impl StoredObject for LocalCopy {
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    async fn read_at(&mut self, offset: u64, max: usize) -> Result<Bytes, StoreError> {
        self.object.read_at(offset, max).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUCKET: &str = "b-1";

    fn key(k: &str) -> ObjectKey {
        ObjectKey::from_request_path(&format!("/{k}")).unwrap()
    }

    /// A tier in `dir` in front of `remote` (a disk store standing in for the S3 store).
    fn tier(remote: &Path, dir: &Path, max_bytes: u64) -> LocalTier<DiskStore> {
        let settings = LocalTierSettings {
            dir: dir.to_path_buf(),
            max_bytes,
            revalidate_secs: 30,
        };
        LocalTier::open(DiskStore::open(remote).unwrap(), &settings).unwrap()
    }

    async fn wait_for(mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not done in 5 s");
    }

    fn indexed(tier: &LocalTier<DiskStore>) -> Vec<String> {
        let mut keys: Vec<String> = (tier.shared.index.lock().entries.values())
            .map(|entry| entry.key.as_str().to_string())
            .collect();
        keys.sort();
        keys
    }

    /// Puts `name` (10 bytes) in the remote store and reads it through `tier`, which copies it.
    async fn copy_through(tier: &LocalTier<DiskStore>, name: &str) {
        let mut writer = tier.shared.inner.create(BUCKET, &key(name)).await.unwrap();
        writer.write(Bytes::from(vec![b'x'; 10])).await.unwrap();
        writer.commit(NewObject::default()).await.unwrap();
        assert!(tier.open(BUCKET, &key(name)).await.unwrap().is_some());
        wait_for(|| indexed(tier).contains(&name.to_string())).await;
    }

    #[tokio::test]
    async fn a_burst_for_a_copy_due_for_revalidation_asks_the_store_once() {
        let (remote, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let settings = LocalTierSettings {
            dir: dir.path().to_path_buf(),
            max_bytes: 1000,
            revalidate_secs: 30,
        };
        let below =
            crate::test_store::SlowCountedOpens::open(remote.path(), Duration::from_millis(200));
        let tier = Arc::new(LocalTier::open(below, &settings).unwrap());
        let mut writer = tier.shared.inner.create(BUCKET, &key("a")).await.unwrap();
        writer.write(Bytes::from_static(b"one")).await.unwrap();
        writer.commit(NewObject::default()).await.unwrap();
        assert!(tier.open(BUCKET, &key("a")).await.unwrap().is_some());
        let id = entry_id(BUCKET, &key("a"));
        wait_for(|| tier.shared.index.lock().entries.contains_key(&id)).await;
        // Checked long enough ago to be due.
        tier.shared
            .index
            .lock()
            .entries
            .get_mut(&id)
            .unwrap()
            .checked = SystemTime::now() - Duration::from_secs(60);
        let opens_before = tier.shared.inner.opens();
        let burst: Vec<_> = (0..20)
            .map(|_| {
                let tier = tier.clone();
                tokio::spawn(async move {
                    let mut o = tier.open(BUCKET, &key("a")).await.unwrap().unwrap();
                    o.read_at(0, 10).await.unwrap()
                })
            })
            .collect();
        for request in burst {
            assert_eq!(&request.await.unwrap()[..], b"one");
        }
        assert_eq!(tier.shared.inner.opens() - opens_before, 1, "one HEAD");
    }

    #[tokio::test]
    async fn whole_copies_are_indexed_again_and_broken_ones_removed() {
        let (remote, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = tier(remote.path(), dir.path(), 1000);
        for name in ["whole", "truncated", "no-record", "no-file"] {
            copy_through(&first, name).await;
        }
        let disk = first.shared.disk.clone();
        let path = |name: &str| disk.object_path(BUCKET, &key(name));
        let checked_long_ago = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(record_path(&path("whole")))
            .unwrap()
            .set_modified(checked_long_ago)
            .unwrap();
        let truncated = std::fs::File::options()
            .write(true)
            .open(path("truncated"))
            .unwrap();
        truncated.set_len(5).unwrap();
        std::fs::remove_file(record_path(&path("no-record"))).unwrap();
        std::fs::remove_file(path("no-file")).unwrap();
        drop(first);

        let second = tier(remote.path(), dir.path(), 1000);
        wait_for(|| !indexed(&second).is_empty()).await;
        assert_eq!(indexed(&second), ["whole"]);
        let entry_checked =
            second.shared.index.lock().entries[&entry_id(BUCKET, &key("whole"))].checked;
        let skew = entry_checked
            .duration_since(checked_long_ago)
            .or_else(|_| checked_long_ago.duration_since(entry_checked))
            .unwrap();
        // Within the file system's timestamp granularity.
        assert!(skew < Duration::from_secs(2), "the check time survives");
        assert_eq!(second.shared.index.lock().bytes(), 10);
        for name in ["truncated", "no-record", "no-file"] {
            assert!(!path(name).exists(), "{name}'s file removed");
            assert!(
                !record_path(&path(name)).exists(),
                "{name}'s record removed"
            );
        }
    }

    #[tokio::test]
    async fn a_copy_purged_before_the_index_is_rebuilt_is_not_brought_back() {
        let (remote, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = tier(remote.path(), dir.path(), 1000);
        for name in ["kept", "purged"] {
            copy_through(&first, name).await;
        }
        let disk = first.shared.disk.clone();
        drop(first);

        let settings = LocalTierSettings {
            dir: dir.path().to_path_buf(),
            max_bytes: 1000,
            revalidate_secs: 30,
        };
        let remote_store = DiskStore::open(remote.path()).unwrap();
        let second = LocalTier::open_unindexed(remote_store, &settings).unwrap();
        second.delete(BUCKET, &key("purged")).await.unwrap();
        second.shared.rebuild_index();
        assert_eq!(indexed(&second), ["kept"]);
        let purged = disk.object_path(BUCKET, &key("purged"));
        assert!(!purged.exists() && !record_path(&purged).exists());
        assert!(second.open(BUCKET, &key("purged")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_smaller_max_bytes_evicts_the_least_recently_checked_at_start() {
        let (remote, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = tier(remote.path(), dir.path(), 1000);
        for name in ["old", "new"] {
            copy_through(&first, name).await;
        }
        let record = record_path(&first.shared.disk.object_path(BUCKET, &key("old")));
        std::fs::File::options()
            .write(true)
            .open(&record)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        drop(first);

        let second = tier(remote.path(), dir.path(), 15);
        wait_for(|| second.shared.index.lock().bytes() == 10).await;
        // Evicted files go after the index: give the removal its moment.
        wait_for(|| !record.exists()).await;
        assert_eq!(indexed(&second), ["new"]);
    }
}
