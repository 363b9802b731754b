//! The bucket store's metrics, registered on the default registry (where the server exports
//! them): what each bucket holds, the disk store's capacity and evictions, and the remote
//! store's requests, failures and local tier.
//! Names and labels here are the operators' contract.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// What each bucket holds, kept by [`crate::CountedStore`].
pub struct BucketGauges {
    pub objects: IntGaugeVec,
    pub bytes: IntGaugeVec,
}

// The macros only fail on a duplicate or malformed name, which is a bug caught by any test run.
#[allow(clippy::expect_used)]
pub static BUCKET_GAUGES: LazyLock<BucketGauges> = LazyLock::new(|| BucketGauges {
    objects: register_int_gauge_vec!(
        "originpull_bucket_objects",
        "Objects stored in the bucket (complete once the background count after start ends).",
        &["bucket"]
    )
    .expect("register originpull_bucket_objects"),
    bytes: register_int_gauge_vec!(
        "originpull_bucket_bytes",
        "Bytes of the objects stored in the bucket.",
        &["bucket"]
    )
    .expect("register originpull_bucket_bytes"),
});

/// The disk store's capacity ([`crate::capacity`]) and its evictions ([`crate::eviction`]).
pub struct CapacityMetrics {
    pub store_bytes: IntGauge,
    pub free_bytes: IntGauge,
    pub over_limit: IntGauge,
    pub evictions: IntCounterVec,
    pub evicted_bytes: IntCounterVec,
}

#[allow(clippy::expect_used)]
pub static CAPACITY_METRICS: LazyLock<CapacityMetrics> = LazyLock::new(|| CapacityMetrics {
    store_bytes: register_int_gauge!(
        "originpull_store_bytes",
        "File bytes of every object and variant in the disk store (all buckets)."
    )
    .expect("register originpull_store_bytes"),
    free_bytes: register_int_gauge!(
        "originpull_store_free_bytes",
        "Free bytes (for unprivileged users) of the file system holding data_dir."
    )
    .expect("register originpull_store_free_bytes"),
    over_limit: register_int_gauge!(
        "originpull_store_over_limit",
        "1 while the disk store is past store.max_bytes or below store.min_free_bytes with \
         nothing left that may be evicted: copies are not started."
    )
    .expect("register originpull_store_over_limit"),
    evictions: register_int_counter_vec!(
        "originpull_evictions_total",
        "Objects evicted from the disk store to keep its limits, by bucket.",
        &["bucket"]
    )
    .expect("register originpull_evictions_total"),
    evicted_bytes: register_int_counter_vec!(
        "originpull_evicted_bytes_total",
        "File bytes (objects and variants) evicted from the disk store, by bucket.",
        &["bucket"]
    )
    .expect("register originpull_evicted_bytes_total"),
});

/// The remote bucket store's requests (S3 backend) by operation: `head`, `get`, `put`,
/// `multipart_start`, `multipart_complete`, `multipart_abort`, `lease`, `list`, `list_uploads`.
/// Registered when that store is built.
pub struct StoreMetrics {
    pub request_seconds: HistogramVec,
    pub errors: IntCounterVec,
    /// `store.local_tier`: opens answered from this node's copy, and those that were not.
    pub local_tier_hits: IntCounter,
    pub local_tier_misses: IntCounter,
    pub local_tier_bytes: IntGauge,
    pub local_tier_evictions: IntCounter,
    /// Multipart uploads aborted, by why: `earlier_run` (journaled by a process of this node
    /// that died with it), `older_than_a_day` (both at start), `retried` (an abort that failed,
    /// done again in the background).
    pub uploads_aborted: IntCounterVec,
    /// 1 while the store is used, 0 while it is marked down after failing repeatedly.
    pub up: IntGauge,
    /// Times the store was marked down.
    pub marked_down: IntCounter,
    /// Operations not sent because the store was marked down, by operation.
    pub skipped: IntCounterVec,
}

#[allow(clippy::expect_used)]
pub static STORE_METRICS: LazyLock<StoreMetrics> = LazyLock::new(|| StoreMetrics {
    request_seconds: register_histogram_vec!(
        "originpull_store_request_seconds",
        "Time to the answer of a request to the remote bucket store (S3), by operation.",
        &["operation"],
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
    )
    .expect("register originpull_store_request_seconds"),
    errors: register_int_counter_vec!(
        "originpull_store_errors_total",
        "Requests to the remote bucket store (S3) that failed (not counting \"not found\" and \
         lost conditional writes), by operation.",
        &["operation"]
    )
    .expect("register originpull_store_errors_total"),
    local_tier_hits: register_int_counter!(
        "originpull_local_tier_hits_total",
        "Objects served from this node's local tier copy."
    )
    .expect("register originpull_local_tier_hits_total"),
    local_tier_misses: register_int_counter!(
        "originpull_local_tier_misses_total",
        "Objects read from the store because the local tier had no current copy."
    )
    .expect("register originpull_local_tier_misses_total"),
    local_tier_bytes: register_int_gauge!(
        "originpull_local_tier_bytes",
        "Bytes of object copies in the local tier now."
    )
    .expect("register originpull_local_tier_bytes"),
    local_tier_evictions: register_int_counter!(
        "originpull_local_tier_evictions_total",
        "Copies removed from the local tier to stay under max_bytes."
    )
    .expect("register originpull_local_tier_evictions_total"),
    uploads_aborted: register_int_counter_vec!(
        "originpull_store_uploads_aborted_total",
        "Multipart uploads nobody would finish, aborted, by reason (earlier_run, \
         older_than_a_day, retried).",
        &["reason"]
    )
    .expect("register originpull_store_uploads_aborted_total"),
    up: register_int_gauge!(
        "originpull_store_up",
        "1 while the remote bucket store (S3) is used, 0 while it is marked down after failing \
         repeatedly."
    )
    .expect("register originpull_store_up"),
    marked_down: register_int_counter!(
        "originpull_store_marked_down_total",
        "Times the remote bucket store (S3) was marked down after failing repeatedly."
    )
    .expect("register originpull_store_marked_down_total"),
    skipped: register_int_counter_vec!(
        "originpull_store_skipped_total",
        "Operations not sent to the remote bucket store (S3) because it was marked down, by \
         operation.",
        &["operation"]
    )
    .expect("register originpull_store_skipped_total"),
});
