//! The local tier: copies of a remote store's objects on this node's disk (`store.local_tier`),
//! so hits of objects too large for the memory tier do not go to the store every time.
//!
//! A copy is made in the background after an object is read from the store, kept in a
//! [`DiskStore`] under `dir/originpull-local-tier` (emptied at start: the copies are a cache),
//! and served for `revalidate_secs`; then the store is asked (`HEAD`) and the copy kept if the
//! ETag is unchanged, dropped otherwise, so an object deleted or replaced in the store stops
//! being served within `revalidate_secs`. Copies past `max_bytes` are removed least recently
//! used first. While the store fails, copies are served whatever their age.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::{
    BucketStore, DiskStore, FillClaim, ListedObject, NewObject, ObjectMeta, ObjectWriter,
    StoreError, StoredObject,
};
use crate::config::LocalTierSettings;
use crate::key::ObjectKey;
use crate::metrics::STORE_METRICS;

/// Bytes read from the store per call while a copy is made.
const COPY_CHUNK: usize = 1024 * 1024;

type EntryId = (String, String);

struct Entry {
    key: ObjectKey,
    /// The store's metadata of the copied version (its ETag is what is served).
    meta: ObjectMeta,
    checked: Instant,
    last_used: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<EntryId, Entry>,
    by_use: BTreeMap<u64, EntryId>,
    bytes: u64,
    clock: u64,
    copying: std::collections::HashSet<EntryId>,
}

impl Index {
    fn touch(&mut self, id: &EntryId) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(entry) = self.entries.get_mut(id) {
            self.by_use.remove(&entry.last_used);
            entry.last_used = clock;
            self.by_use.insert(clock, id.clone());
        }
    }

    fn remove(&mut self, id: &EntryId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.by_use.remove(&entry.last_used);
        self.bytes -= entry.meta.size;
        Some(entry)
    }
}

struct Shared<S> {
    inner: S,
    disk: DiskStore,
    index: Mutex<Index>,
    max_bytes: u64,
    revalidate: Duration,
}

pub struct LocalTier<S> {
    shared: Arc<Shared<S>>,
}

impl<S: BucketStore> LocalTier<S> {
    pub fn open(inner: S, settings: &LocalTierSettings) -> std::io::Result<LocalTier<S>> {
        let root = settings.dir.join("originpull-local-tier");
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        let disk = DiskStore::open(&root)?;
        STORE_METRICS.local_tier_bytes.set(0);
        Ok(LocalTier {
            shared: Arc::new(Shared {
                inner,
                disk,
                index: Mutex::new(Index::default()),
                max_bytes: settings.max_bytes,
                revalidate: Duration::from_secs(settings.revalidate_secs),
            }),
        })
    }
}

impl<S: BucketStore> Shared<S> {
    fn remove_copy(&self, id: &EntryId, key: &ObjectKey) {
        let removed = self.index.lock().remove(id);
        if removed.is_some() {
            STORE_METRICS
                .local_tier_bytes
                .set(self.index.lock().bytes as i64);
            // A reader that has the file open keeps reading it (Unix semantics).
            let _ = std::fs::remove_file(self.disk.object_path(&id.0, key));
        }
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

    /// Copies the current version from the store to disk, then evicts past `max_bytes`.
    async fn make_copy(self: Arc<Self>, bucket: String, key: ObjectKey) {
        let id = (bucket.clone(), key.as_str().to_string());
        if !self.index.lock().copying.insert(id.clone()) {
            return;
        }
        let result = self.copy_once(&bucket, &key).await;
        self.index.lock().copying.remove(&id);
        match result {
            Ok(Some(meta)) => {
                let mut index = self.index.lock();
                index.remove(&id);
                index.bytes += meta.size;
                index.entries.insert(
                    id.clone(),
                    Entry {
                        key: key.clone(),
                        meta,
                        checked: Instant::now(),
                        last_used: 0,
                    },
                );
                index.touch(&id);
                let mut evicted = Vec::new();
                while index.bytes > self.max_bytes {
                    let Some((_, oldest)) = index.by_use.pop_first() else {
                        break;
                    };
                    if let Some(entry) = index.entries.remove(&oldest) {
                        index.bytes -= entry.meta.size;
                        evicted.push((oldest.0, entry.key));
                    }
                }
                STORE_METRICS.local_tier_bytes.set(index.bytes as i64);
                drop(index);
                for (bucket, key) in evicted {
                    STORE_METRICS.local_tier_evictions.inc();
                    // A reader that has the file open keeps reading it (Unix semantics).
                    let _ = std::fs::remove_file(self.disk.object_path(&bucket, &key));
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!("local tier: copying {:?} of {bucket}: {e}", key.as_str()),
        }
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
        Ok(Some(meta))
    }
}

#[async_trait]
impl<S: BucketStore> BucketStore for LocalTier<S> {
    async fn open(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        let shared = &self.shared;
        let id: EntryId = (bucket.to_string(), key.as_str().to_string());
        let cached = shared
            .index
            .lock()
            .entries
            .get(&id)
            .map(|e| (e.checked.elapsed() < shared.revalidate, e.meta.etag.clone()));
        if let Some((true, _)) = cached {
            if let Some(copy) = shared.open_copy(&id, key).await {
                return Ok(Some(copy));
            }
        }
        match shared.inner.open(bucket, key).await {
            Ok(Some(object)) => {
                if let Some((_, etag)) = &cached {
                    if *etag == object.meta().etag {
                        if let Some(entry) = shared.index.lock().entries.get_mut(&id) {
                            entry.checked = Instant::now();
                        }
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
        self.shared
            .remove_copy(&(bucket.to_string(), key.as_str().to_string()), key);
        self.shared.inner.create(bucket, key).await
    }

    async fn claim_fill(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<FillClaim>, StoreError> {
        self.shared.inner.claim_fill(bucket, key).await
    }

    async fn open_variant(
        &self,
        bucket: &str,
        key: &ObjectKey,
        of: &ObjectMeta,
        variant: &str,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        self.shared
            .inner
            .open_variant(bucket, key, of, variant)
            .await
    }

    async fn put_variant(
        &self,
        bucket: &str,
        key: &ObjectKey,
        of: &ObjectMeta,
        variant: &str,
        body: Bytes,
    ) -> Result<(), StoreError> {
        self.shared
            .inner
            .put_variant(bucket, key, of, variant, body)
            .await
    }

    async fn delete(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        let id: EntryId = (bucket.to_string(), key.as_str().to_string());
        self.shared.remove_copy(&id, key);
        self.shared.inner.delete(bucket, key).await
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        self.shared.inner.list(bucket, prefix).await
    }

    async fn mark_checked(&self, bucket: &str, key: &ObjectKey) -> Result<bool, StoreError> {
        self.shared.inner.mark_checked(bucket, key).await
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
