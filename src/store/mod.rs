//! The bucket store interface: what serving and filling need from wherever objects live.
//!
//! It is deliberately narrow (open an object, write a new one) so that an S3-compatible backend
//! shared by many edge nodes can sit beside the disk one. A writer computes the ETag itself, as
//! S3 does for a simple upload, and nothing written is visible until `commit` returns.

pub mod disk;
pub mod hot;
pub mod local_tier;
pub mod s3;
mod write_behind;

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::key::ObjectKey;

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
}

impl ObjectMeta {
    /// The `ETag` header value: the hex MD5 in quotes, as S3 sends it.
    pub fn etag_header(&self) -> String {
        format!("\"{}\"", self.etag)
    }

    pub fn last_modified_time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(self.last_modified)
    }
}

/// What the writer of a new object supplies; size and ETag come from the bytes written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewObject {
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
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
    /// Reads up to `max` bytes of the content starting at `offset`; an empty result means the
    /// content ended before `offset`.
    async fn read_at(&mut self, offset: u64, max: usize) -> Result<Bytes, StoreError>;
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
