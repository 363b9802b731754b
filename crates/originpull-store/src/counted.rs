//! Objects and bytes per bucket, kept in step with every commit and delete that goes through the
//! store, without a walk of the bucket at start.
//!
//! [`CountedStore`] wraps any [`BucketStore`]: a commit adds the object (or the size difference,
//! when it replaces one), a delete takes it away. The objects already on disk at start are
//! counted once, in the background, by [`BucketCounts::count_bucket`]; until that walk ends a
//! bucket's count is marked incomplete, and the changes seen meanwhile are added to what the
//! walk finds. (An object committed while the walk runs can be seen by both: the count is exact
//! for what happened before the walk started and after it ended.) The totals are exported as
//! `originpull_bucket_objects` and `originpull_bucket_bytes`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use super::{BucketStore, NewObject, ObjectMeta, ObjectWriter, StoreError};
use crate::key::ObjectKey;
use crate::metrics::BUCKET_GAUGES;

/// One bucket's count as the admin API reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketCount {
    pub objects: i64,
    pub bytes: i64,
    /// Whether the walk of what was stored before start has finished.
    pub complete: bool,
}

#[derive(Default)]
struct Tally {
    /// What the walk found; `None` until it finished.
    walked: Option<(i64, i64)>,
    /// Commits and deletes since start.
    objects: i64,
    bytes: i64,
    walking: bool,
}

impl Tally {
    fn count(&self) -> BucketCount {
        let (objects, bytes) = self.walked.unwrap_or((0, 0));
        BucketCount {
            objects: objects + self.objects,
            bytes: bytes + self.bytes,
            complete: self.walked.is_some(),
        }
    }
}

/// The per-bucket counts, shared by the store wrapper, the start-up walk and the admin API.
#[derive(Clone, Default)]
pub struct BucketCounts {
    tallies: Arc<Mutex<HashMap<String, Tally>>>,
}

impl BucketCounts {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Tally>> {
        // Every update is one step, so a panicked holder leaves consistent numbers.
        self.tallies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, bucket: &str) -> BucketCount {
        self.lock()
            .get(bucket)
            .map(Tally::count)
            .unwrap_or_default()
    }

    fn adjust(&self, bucket: &str, objects: i64, bytes: i64) {
        let mut tallies = self.lock();
        let tally = tallies.entry(bucket.to_string()).or_default();
        tally.objects += objects;
        tally.bytes += bytes;
        export(bucket, tally);
    }

    /// Counts what `bucket` held before start (once per bucket; later calls return at once).
    pub async fn count_bucket(&self, store: &dyn BucketStore, bucket: &str) {
        {
            let mut tallies = self.lock();
            let tally = tallies.entry(bucket.to_string()).or_default();
            if tally.walking || tally.walked.is_some() {
                return;
            }
            tally.walking = true;
        }
        let walked = match store.list(bucket, "").await {
            Ok(objects) => {
                let bytes = objects.iter().map(|o| o.size as i64).sum();
                Some((objects.len() as i64, bytes))
            }
            Err(e) => {
                log::error!("bucket {bucket}: cannot count the stored objects: {e}");
                None
            }
        };
        let mut tallies = self.lock();
        let tally = tallies.entry(bucket.to_string()).or_default();
        tally.walking = false;
        if let Some((objects, bytes)) = walked {
            // Deltas recorded so far were about objects the walk may not have seen as they
            // were: they stay, the walk adds what was there before.
            tally.walked = Some((objects, bytes));
            log::info!("bucket {bucket}: {objects} objects, {bytes} bytes stored at start");
        }
        export(bucket, tally);
    }
}

fn export(bucket: &str, tally: &Tally) {
    let count = tally.count();
    BUCKET_GAUGES
        .objects
        .with_label_values(&[bucket])
        .set(count.objects);
    BUCKET_GAUGES
        .bytes
        .with_label_values(&[bucket])
        .set(count.bytes);
}

/// A store that keeps [`BucketCounts`] in step with its commits and deletes.
pub struct CountedStore<S> {
    inner: Arc<S>,
    counts: BucketCounts,
}

impl<S: BucketStore> CountedStore<S> {
    pub fn new(inner: S, counts: BucketCounts) -> CountedStore<S> {
        CountedStore {
            inner: Arc::new(inner),
            counts,
        }
    }
}

#[async_trait]
impl<S: BucketStore> crate::StoreLayer for CountedStore<S> {
    fn below(&self) -> &dyn BucketStore {
        self.inner.as_ref()
    }

    async fn create(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Box<dyn ObjectWriter>, StoreError> {
        let writer = self.inner.create(bucket, key).await?;
        Ok(Box::new(CountingWriter {
            writer,
            store: self.inner.clone(),
            counts: self.counts.clone(),
            bucket: bucket.to_string(),
            key: key.clone(),
        }))
    }

    async fn delete(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        let removed = self.inner.delete(bucket, key).await?;
        if let Some(meta) = &removed {
            self.counts.adjust(bucket, -1, -(meta.size as i64));
        }
        Ok(removed)
    }
}

struct CountingWriter<S> {
    writer: Box<dyn ObjectWriter>,
    store: Arc<S>,
    counts: BucketCounts,
    bucket: String,
    key: ObjectKey,
}

#[async_trait]
impl<S: BucketStore> ObjectWriter for CountingWriter<S> {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.writer.write(chunk).await
    }

    fn written(&self) -> u64 {
        self.writer.written()
    }

    async fn commit(self: Box<Self>, object: NewObject) -> Result<ObjectMeta, StoreError> {
        // Copies of one key never overlap (single flight), so the version replaced is the one
        // there now. A damaged file was never counted.
        let replaced = match self.store.open(&self.bucket, &self.key).await {
            Ok(Some(old)) => Some(old.meta().size),
            _ => None,
        };
        let meta = self.writer.commit(object).await?;
        match replaced {
            Some(old) => self
                .counts
                .adjust(&self.bucket, 0, meta.size as i64 - old as i64),
            None => self.counts.adjust(&self.bucket, 1, meta.size as i64),
        }
        Ok(meta)
    }
}
