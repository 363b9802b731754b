//! For the tiers' unit tests: a disk store whose `open` is slow and counted, standing in for
//! a remote store where each look-up is a request (a HEAD on S3).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::key::ObjectKey;
use crate::{BucketStore, DiskStore, StoreError, StoredObject};

pub(crate) struct SlowCountedOpens {
    disk: DiskStore,
    delay: Duration,
    opens: AtomicUsize,
}

impl SlowCountedOpens {
    pub(crate) fn open(dir: &Path, delay: Duration) -> SlowCountedOpens {
        SlowCountedOpens {
            disk: DiskStore::open(dir).expect("open the disk store"),
            delay,
            opens: AtomicUsize::new(0),
        }
    }

    /// How many times `open` was called.
    pub(crate) fn opens(&self) -> usize {
        self.opens.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl crate::StoreLayer for SlowCountedOpens {
    fn below(&self) -> &dyn BucketStore {
        &self.disk
    }

    async fn open(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.disk.open(bucket, key).await
    }
}
