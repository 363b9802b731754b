//! The bucket store interface: what serving and filling need from wherever objects live.
//!
//! It is deliberately narrow (open an object, write a new one, keep and open a variant of one;
//! for the admin API delete one, list a prefix, mark one checked against its origin), each an
//! operation an S3-compatible store has too, so that a backend shared by many edge nodes can
//! sit beside the disk one. A writer computes the ETag itself, as S3 does for a simple upload,
//! and nothing written is visible until `commit` returns.
//!
//! A *variant* is another form of one version of an object, derived from its bytes (today: a
//! compressed encoding, named `br`, `zstd` or `gzip`). It is keyed by the version's ETag, so a
//! new version of the object never serves an old version's variant, and it can always be made
//! again, so a store may lose it (a crash, an eviction) at any time.

pub mod capacity;
pub mod checksum;
pub mod counted;
pub mod disk;
mod doorkeeper;
pub mod eviction;
pub mod hot;
mod in_flight;
pub mod key;
pub mod local_tier;
pub mod md5;
pub mod metrics;
mod open_files;
mod order;
#[cfg(feature = "properties")]
pub mod properties;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "s3")]
pub mod s3_cleanup;
#[cfg(feature = "s3")]
pub mod s3_credentials;
#[cfg(feature = "s3")]
pub mod s3_lease;
#[cfg(feature = "s3")]
pub mod s3_link;
#[cfg(feature = "s3")]
pub mod s3_private;
#[cfg(feature = "s3")]
pub mod s3_uploads;
#[cfg(test)]
mod test_store;
mod write_behind;

use std::any::Any;
use std::sync::OnceLock;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

pub use key::ObjectKey;

pub use counted::{BucketCounts, CountedStore};
pub use disk::DiskStore;
pub use hot::{HotTier, HotTierLimits};

/// Headers an object keeps from its origin and sends again on every hit.
pub const KEPT_ORIGIN_HEADERS: &[&str] = &[
    "cache-control",
    "content-disposition",
    "content-encoding",
    "expires",
];

/// What the store knows about a committed object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub content_type: String,
    /// Hex MD5 of the content, without quotes.
    pub etag: String,
    /// When the object was committed, in seconds since the Unix epoch.
    pub last_modified: u64,
    /// Lower-case names from [`KEPT_ORIGIN_HEADERS`] with their values.
    pub headers: Vec<(String, String)>,
    /// The origin's own validators, kept so a revalidation can ask "changed since?".
    /// (Absent in metadata written before they were kept.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_last_modified: Option<String>,
    /// CRC-64/XZ of the content (see [`checksum`]); absent in objects stored before it was
    /// kept and in objects another tool put into a remote store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64: Option<u64>,
    /// When the object was last known to match its origin (committed, or confirmed by a 304),
    /// in seconds since the Unix epoch; the store fills it in when it opens the object.
    #[serde(default, skip_serializing)]
    pub checked_at: u64,
}

impl ObjectMeta {
    /// The `ETag` header value: the hex MD5 in quotes, as S3 sends it.
    pub fn etag_header(&self) -> String {
        format!("\"{}\"", self.etag)
    }

    /// The `ETag` of the object's `variant` (e.g. `br`): `"<md5>-br"`, distinct per variant.
    pub fn variant_etag_header(&self, variant: &str) -> String {
        format!("\"{}-{variant}\"", self.etag)
    }

    /// Whether `self`, the metadata of a variant, was made from the version `of` (everything
    /// but the size is the same).
    pub fn is_variant_of(&self, of: &ObjectMeta) -> bool {
        self.etag == of.etag
            && self.key == of.key
            && self.last_modified == of.last_modified
            && self.content_type == of.content_type
            && self.headers == of.headers
    }

    pub fn last_modified_time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(self.last_modified)
    }

    /// When the object was last checked against its origin (its commit when never since).
    pub fn checked_at(&self) -> u64 {
        self.checked_at.max(self.last_modified)
    }
}

/// One object as a listing sees it: enough to purge it and to count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: ObjectKey,
    pub size: u64,
}

/// What the writer of a new object supplies; size and ETag come from the bytes written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewObject {
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The origin's `ETag` and `Last-Modified`, as it sent them.
    pub origin_etag: Option<String>,
    pub origin_last_modified: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bucket store I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored object is damaged: {0}")]
    Corrupt(String),
    /// A remote store (S3) failed or could not be reached; it may come back by itself.
    #[error("bucket store unavailable: {0}")]
    Unavailable(String),
}

/// An object opened for reading. Its metadata and bytes come from one version of the object,
/// even if a newer one is committed while it is being read.
#[async_trait]
pub trait StoredObject: Send {
    fn meta(&self) -> &ObjectMeta;

    /// Where a layer above keeps what it derives from this version of the object (the head of
    /// its answer), when the store keeps the object between requests (the memory tier, a file
    /// the disk store keeps open): it is then derived once per version instead of once per
    /// request. `None` for the others.
    fn derived(&self) -> Option<&Derived> {
        None
    }

    /// Whether reads go over the network (a remote store), so one may wait for a while: the
    /// answer then sends what it has as soon as it has it, instead of gathering it.
    fn is_remote(&self) -> bool {
        false
    }

    /// Reads up to `max` bytes of the content starting at `offset`; an empty result means the
    /// content ended before `offset`.
    async fn read_at(&mut self, offset: u64, max: usize) -> Result<Bytes, StoreError>;

    /// The whole content, read in order from its first byte (so a store that checks content as
    /// it is read, see [`checksum`], checks it); `Corrupt` if it ends before `meta().size`.
    async fn read_whole(&mut self) -> Result<Bytes, StoreError> {
        let size = self.meta().size;
        let first = self.read_at(0, size as usize).await?;
        if first.len() as u64 == size {
            // The usual case: one read, no copy.
            return Ok(first);
        }
        let mut body = BytesMut::with_capacity(size as usize);
        body.extend_from_slice(&first);
        while (body.len() as u64) < size {
            let chunk = self
                .read_at(body.len() as u64, size as usize - body.len())
                .await?;
            if chunk.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "object {:?} is shorter than its size",
                    self.meta().key
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

/// What the layers above derive from one version of an object, kept beside it by a store that
/// keeps objects between requests: one value of one type, made by the first who asks (as
/// pingora-cache keeps its `CacheMeta` beside a cached body). The store never looks inside.
#[derive(Default)]
pub struct Derived(OnceLock<Box<dyn Any + Send + Sync>>);

impl Derived {
    /// The value derived for this version, made by `make` if nobody has yet; `None` if the
    /// slot holds a value of another type (a second user of the slot, which there is not).
    pub fn get_or_init<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Option<&T> {
        self.0.get_or_init(|| Box::new(make())).downcast_ref::<T>()
    }
}

/// A new object being written; dropping it without `commit` discards everything written.
#[async_trait]
pub trait ObjectWriter: Send {
    /// The object's metadata, when known before its bytes: a store that sends it with the
    /// upload's first request (S3 multipart) needs it then; `commit` still receives it.
    fn describe(&mut self, _object: &NewObject) {}
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError>;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Makes the object visible, whole, under its key, replacing any earlier version.
    async fn commit(self: Box<Self>, object: NewObject) -> Result<ObjectMeta, StoreError>;
}

#[async_trait]
pub trait BucketStore: Send + Sync + 'static {
    /// Opens `key` in `bucket` if memory holds it, still fresh, without waiting for anything:
    /// the memory tier's hit, at no more cost than a look-up. `None` means "ask [`open`]".
    ///
    /// [`open`]: BucketStore::open
    fn open_in_memory(&self, _bucket: &str, _key: &ObjectKey) -> Option<Box<dyn StoredObject>> {
        None
    }

    /// A layer above served `key` from its own copy (the memory tier): a store that evicts
    /// by use counts it as a hit.
    fn served_above(&self, _bucket: &str, _key: &ObjectKey) {}

    /// Whether a new object of `bytes` (0 when not known) fits within the store's limits,
    /// once whatever may be evicted is; a copy that does not is not started.
    fn has_room(&self, _bucket: &str, _bytes: u64) -> bool {
        true
    }

    /// Opens `key` in `bucket`; `Ok(None)` when there is no such object.
    async fn open(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError>;

    /// Starts a new object for `key` in `bucket`.
    async fn create(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Box<dyn ObjectWriter>, StoreError>;

    /// Opens the `variant` (a lower-case name such as `br`) kept for the version of `key`
    /// described by `of`; `Ok(None)` when none is kept for that version. Its metadata is `of`'s
    /// with `size` the variant's.
    async fn open_variant(
        &self,
        bucket: &str,
        key: &ObjectKey,
        of: &ObjectMeta,
        variant: &str,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError>;

    /// Keeps `body` as the `variant` of the version `of` of `key`, replacing any `variant` kept
    /// for an older version.
    async fn put_variant(
        &self,
        bucket: &str,
        key: &ObjectKey,
        of: &ObjectMeta,
        variant: &str,
        body: Bytes,
    ) -> Result<(), StoreError>;

    /// Removes `key` from `bucket`; returns the removed object's metadata, `None` when there
    /// was none. (S3: HEAD then DeleteObject.)
    async fn delete(&self, bucket: &str, key: &ObjectKey)
        -> Result<Option<ObjectMeta>, StoreError>;

    /// Every object of `bucket` whose key starts with `prefix` (all with an empty prefix), in
    /// no particular order. (S3: ListObjectsV2 with a prefix.)
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError>;

    /// Records that `key` was just confirmed unchanged at its origin (a 304), without
    /// rewriting it; `false` when there is no such object. (S3: a copy onto itself with new
    /// metadata.)
    async fn mark_checked(&self, bucket: &str, key: &ObjectKey) -> Result<bool, StoreError>;

    /// Claims the one origin fetch of `key` among every node sharing this store, until the
    /// claim is dropped; `Ok(None)` while another node holds it. A store private to this node
    /// needs no claim: the filler's own single flight is enough.
    async fn claim_fill(
        &self,
        _bucket: &str,
        _key: &ObjectKey,
    ) -> Result<Option<FillClaim>, StoreError> {
        Ok(Some(FillClaim::default()))
    }
}

/// A store that wraps another ([`CountedStore`], [`HotTier`], [`local_tier::LocalTier`]):
/// it implements only the methods whose behaviour it changes, and every other goes to the
/// store below unchanged. Every `StoreLayer` is a [`BucketStore`].
#[async_trait]
pub trait StoreLayer: Send + Sync + 'static {
    /// The store this one wraps.
    fn below(&self) -> &dyn BucketStore;

    fn open_in_memory(&self, bucket: &str, key: &ObjectKey) -> Option<Box<dyn StoredObject>> {
        self.below().open_in_memory(bucket, key)
    }

    fn served_above(&self, bucket: &str, key: &ObjectKey) {
        self.below().served_above(bucket, key)
    }

    fn has_room(&self, bucket: &str, bytes: u64) -> bool {
        self.below().has_room(bucket, bytes)
    }

    async fn open(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        self.below().open(bucket, key).await
    }

    async fn create(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Box<dyn ObjectWriter>, StoreError> {
        self.below().create(bucket, key).await
    }

    async fn open_variant(
        &self,
        bucket: &str,
        key: &ObjectKey,
        of: &ObjectMeta,
        variant: &str,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        self.below().open_variant(bucket, key, of, variant).await
    }

    async fn put_variant(
        &self,
        bucket: &str,
        key: &ObjectKey,
        of: &ObjectMeta,
        variant: &str,
        body: Bytes,
    ) -> Result<(), StoreError> {
        self.below()
            .put_variant(bucket, key, of, variant, body)
            .await
    }

    async fn delete(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        self.below().delete(bucket, key).await
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        self.below().list(bucket, prefix).await
    }

    async fn mark_checked(&self, bucket: &str, key: &ObjectKey) -> Result<bool, StoreError> {
        self.below().mark_checked(bucket, key).await
    }

    async fn claim_fill(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<FillClaim>, StoreError> {
        self.below().claim_fill(bucket, key).await
    }
}

#[async_trait]
impl<L: StoreLayer> BucketStore for L {
    fn open_in_memory(&self, bucket: &str, key: &ObjectKey) -> Option<Box<dyn StoredObject>> {
        StoreLayer::open_in_memory(self, bucket, key)
    }

    fn served_above(&self, bucket: &str, key: &ObjectKey) {
        StoreLayer::served_above(self, bucket, key)
    }

    fn has_room(&self, bucket: &str, bytes: u64) -> bool {
        StoreLayer::has_room(self, bucket, bytes)
    }

    async fn open(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        StoreLayer::open(self, bucket, key).await
    }

    async fn create(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Box<dyn ObjectWriter>, StoreError> {
        StoreLayer::create(self, bucket, key).await
    }

    async fn open_variant(
        &self,
        bucket: &str,
        key: &ObjectKey,
        of: &ObjectMeta,
        variant: &str,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        StoreLayer::open_variant(self, bucket, key, of, variant).await
    }

    async fn put_variant(
        &self,
        bucket: &str,
        key: &ObjectKey,
        of: &ObjectMeta,
        variant: &str,
        body: Bytes,
    ) -> Result<(), StoreError> {
        StoreLayer::put_variant(self, bucket, key, of, variant, body).await
    }

    async fn delete(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        StoreLayer::delete(self, bucket, key).await
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        StoreLayer::list(self, bucket, prefix).await
    }

    async fn mark_checked(&self, bucket: &str, key: &ObjectKey) -> Result<bool, StoreError> {
        StoreLayer::mark_checked(self, bucket, key).await
    }

    async fn claim_fill(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<FillClaim>, StoreError> {
        StoreLayer::claim_fill(self, bucket, key).await
    }
}

/// The right to fetch one key from the origin; released when dropped.
#[derive(Default)]
pub struct FillClaim {
    /// Held for its `Drop`, which releases the claim.
    _release: Option<Box<dyn Send + Sync>>,
}

impl FillClaim {
    /// A claim whose release is `guard`'s `Drop`.
    pub fn held_by(guard: impl Send + Sync + 'static) -> FillClaim {
        FillClaim {
            _release: Some(Box::new(guard)),
        }
    }
}
