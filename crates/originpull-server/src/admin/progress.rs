//! How far each bucket's migration has come: objects and bytes stored (counted in the
//! background after start, then kept exact by the store, see [`originpull_store::counted`]), copies
//! stored and failed since start, the share of requests served from the bucket since start and
//! over the last five minutes, and the keys that fail most.
//!
//! [`ProgressService`] is the background service that starts the counts and samples the request
//! counters every [`SAMPLE_EVERY`], so the five-minute ratio needs no work on the request path.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::live::reload::ConfigHandle;
use crate::metrics::{RequestResult, METRICS};
use crate::pull::copy::failures::{top_failing, FailingKey};
use originpull_store::{BucketCounts, BucketStore};

pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_secs(300);
/// How many failing keys the progress lists.
pub const TOP_FAILING: usize = 100;

/// Requests served from the bucket, and all requests that were a hit or a miss.
#[derive(Debug, Clone, Copy, Default)]
struct Served {
    from_bucket: u64,
    total: u64,
}

impl Served {
    fn now(bucket: &str) -> Served {
        let count = |r: RequestResult| {
            METRICS
                .requests
                .with_label_values(&[bucket, r.as_str()])
                .get()
        };
        let from_bucket = count(RequestResult::Hit) + count(RequestResult::NotModified);
        Served {
            from_bucket,
            total: from_bucket + count(RequestResult::Redirect),
        }
    }

    fn since(self, earlier: Served) -> Served {
        Served {
            from_bucket: self.from_bucket.saturating_sub(earlier.from_bucket),
            total: self.total.saturating_sub(earlier.total),
        }
    }

    /// `None` when nothing was requested.
    fn ratio(self) -> Option<f64> {
        (self.total > 0).then(|| self.from_bucket as f64 / self.total as f64)
    }
}

/// One bucket's samples, oldest first.
type Timeline = VecDeque<(Instant, Served)>;

/// Samples of the request counters, per bucket, over the last [`WINDOW`].
#[derive(Clone, Default)]
pub struct Samples {
    per_bucket: Arc<Mutex<HashMap<String, Timeline>>>,
}

impl Samples {
    fn record(&self, bucket: &str) {
        let now = Instant::now();
        let mut all = self.per_bucket.lock().unwrap_or_else(|p| p.into_inner());
        let samples = all.entry(bucket.to_string()).or_default();
        samples.push_back((now, Served::now(bucket)));
        while samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
        {
            samples.pop_front();
        }
    }

    /// The oldest sample within the window (the counters since then are the window's).
    fn window_start(&self, bucket: &str) -> Option<Served> {
        let all = self.per_bucket.lock().unwrap_or_else(|p| p.into_inner());
        all.get(bucket)?.front().map(|(_, served)| *served)
    }
}

/// `GET /v1/buckets/{bucket}/progress`, and each entry of `GET /v1/buckets`.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub bucket: String,
    pub objects: i64,
    pub bytes: i64,
    /// Whether the count of what was stored before start has finished.
    pub count_complete: bool,
    pub copies_stored: u64,
    pub copies_failed: u64,
    /// Requests served from the bucket / (those + redirects to the origin); `null` when none.
    pub served_from_bucket_ratio: Option<f64>,
    pub served_from_bucket_ratio_5m: Option<f64>,
    pub failing_keys: Vec<FailingKey>,
}

pub fn progress_of(bucket: &str, counts: &BucketCounts, samples: &Samples) -> Progress {
    let count = counts.get(bucket);
    let fills = |outcome: &str| METRICS.fills.with_label_values(&[bucket, outcome]).get();
    // Copies that asked an origin and stored nothing (not those never started or stored by
    // another node).
    let copies_failed = [
        "origin_status",
        "origin_error",
        "timeout",
        "too_large",
        "store_error",
        "loop",
        "redirect_refused",
    ]
    .into_iter()
    .map(fills)
    .sum();
    let served = Served::now(bucket);
    let window = samples
        .window_start(bucket)
        .map_or(served, |start| served.since(start));
    Progress {
        bucket: bucket.to_string(),
        objects: count.objects,
        bytes: count.bytes,
        count_complete: count.complete,
        copies_stored: fills("stored"),
        copies_failed,
        served_from_bucket_ratio: served.ratio(),
        served_from_bucket_ratio_5m: window.ratio(),
        failing_keys: top_failing(bucket, TOP_FAILING),
    }
}

/// Counts each bucket's stored objects once (buckets added by a reload too), then samples the
/// request counters for the five-minute ratio.
pub struct ProgressService {
    pub config: ConfigHandle,
    pub store: Arc<dyn BucketStore>,
    pub counts: BucketCounts,
    pub samples: Samples,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ProgressService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let live = self.config.current();
            for bucket in &live.config.buckets {
                self.samples.record(&bucket.name);
                // Each bucket is walked once, in its own task, so start-up never waits for it.
                let (store, counts, name) =
                    (self.store.clone(), self.counts.clone(), bucket.name.clone());
                tokio::spawn(async move { counts.count_bucket(store.as_ref(), &name).await });
            }
        }
    }
}
