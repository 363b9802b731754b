//! Admin jobs: a purge of every object under a prefix, and a prefetch of a list of keys. A job
//! runs in the background; the API answers with its id and its counters, and can cancel it.
//!
//! A prefetch copies each key that is not stored yet through the same scheduler as misses
//! ([`Copies::copy_and_wait`]: single flight, `fill.concurrency`, queue, negative TTL and the
//! origin guardrails), keeping at most `fill.concurrency` of its keys in the scheduler at once so
//! a long list never fills the queue that misses share. Finished jobs are kept for an hour.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::live::bucket::Bucket;
use crate::pull::copy::{Copies, CopyEnd};
use crate::pull::origin::BucketPull;
use originpull_config::FillSettings;
use originpull_store::key::{encode_origin_path, KeyError, ObjectKey};
use originpull_store::BucketStore;

/// Failures listed per job; the rest are only counted.
const MAX_LISTED_FAILURES: usize = 1000;
/// How long a finished job stays visible.
const KEEP_FINISHED: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Purge,
    Prefetch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Done,
    Cancelled,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub key: String,
    pub reason: String,
}

/// One job's counters, updated as it runs.
pub struct Job {
    pub id: u64,
    pub kind: JobKind,
    pub bucket: String,
    total: AtomicU64,
    done: AtomicU64,
    stored: AtomicU64,
    already_present: AtomicU64,
    purged: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    failures: Mutex<Vec<Failure>>,
    cancelled: AtomicBool,
    finished: Mutex<Option<Instant>>,
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: u64,
    pub kind: JobKind,
    pub bucket: String,
    pub state: JobState,
    pub total: u64,
    pub done: u64,
    pub stored: u64,
    pub already_present: u64,
    pub purged: u64,
    pub failed: u64,
    pub bytes: u64,
    pub failures: Vec<Failure>,
    /// Every failure, listed or not.
    pub failures_count: u64,
}

impl Job {
    fn new(id: u64, kind: JobKind, bucket: &str) -> Job {
        Job {
            id,
            kind,
            bucket: bucket.to_string(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            already_present: AtomicU64::new(0),
            purged: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            failures: Mutex::default(),
            cancelled: AtomicBool::new(false),
            finished: Mutex::default(),
        }
    }

    fn failures(&self) -> MutexGuard<'_, Vec<Failure>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finished_at(&self) -> Option<Instant> {
        *self.finished.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(&self) {
        *self.finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn fail(&self, key: &str, reason: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures();
        if failures.len() < MAX_LISTED_FAILURES {
            failures.push(Failure {
                key: key.to_string(),
                reason: reason.to_string(),
            });
        }
    }

    pub fn view(&self) -> JobView {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let state = match (self.finished_at(), self.is_cancelled()) {
            (_, true) => JobState::Cancelled,
            (Some(_), false) => JobState::Done,
            (None, false) => JobState::Running,
        };
        JobView {
            id: self.id,
            kind: self.kind,
            bucket: self.bucket.clone(),
            state,
            total: get(&self.total),
            done: get(&self.done),
            stored: get(&self.stored),
            already_present: get(&self.already_present),
            purged: get(&self.purged),
            failed: get(&self.failed),
            bytes: get(&self.bytes),
            failures: self.failures().clone(),
            failures_count: get(&self.failed),
        }
    }
}

/// The jobs of this process.
#[derive(Clone, Default)]
pub struct Jobs {
    inner: Arc<Mutex<JobTable>>,
}

#[derive(Default)]
struct JobTable {
    next_id: u64,
    jobs: HashMap<u64, Arc<Job>>,
}

impl Jobs {
    fn lock(&self) -> MutexGuard<'_, JobTable> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn create(&self, kind: JobKind, bucket: &str) -> Arc<Job> {
        let mut table = self.lock();
        table.jobs.retain(|_, job| {
            job.finished_at()
                .is_none_or(|at| at.elapsed() < KEEP_FINISHED)
        });
        table.next_id += 1;
        let job = Arc::new(Job::new(table.next_id, kind, bucket));
        table.jobs.insert(job.id, job.clone());
        job
    }

    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.lock().jobs.get(&id).cloned()
    }

    /// Stops the job from starting anything new; what runs already finishes.
    pub fn cancel(&self, id: u64) -> Option<Arc<Job>> {
        let job = self.get(id)?;
        if job.finished_at().is_none() {
            job.cancelled.store(true, Ordering::Relaxed);
        }
        Some(job)
    }

    /// Starts purging every object of `bucket` under `prefix`.
    pub fn start_purge(
        &self,
        store: Arc<dyn BucketStore>,
        copies: Copies,
        bucket: Arc<Bucket>,
        prefix: String,
    ) -> Arc<Job> {
        let job = self.create(JobKind::Purge, &bucket.config.name);
        let running = job.clone();
        tokio::spawn(async move {
            let name = bucket.config.name.as_str();
            match store.list(name, &prefix).await {
                Ok(objects) => {
                    running.total.store(objects.len() as u64, Ordering::Relaxed);
                    for object in objects {
                        if running.is_cancelled() {
                            break;
                        }
                        match store.delete(name, &object.key).await {
                            Ok(removed) => {
                                if let Some(pull) = &bucket.pull {
                                    copies.forget_failure(pull, &object.key);
                                }
                                if let Some(meta) = removed {
                                    running.purged.fetch_add(1, Ordering::Relaxed);
                                    running.bytes.fetch_add(meta.size, Ordering::Relaxed);
                                }
                                running.done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => running.fail(object.key.as_str(), &e.to_string()),
                        }
                    }
                }
                Err(e) => running.fail(&prefix, &format!("cannot list the bucket: {e}")),
            }
            log::info!(
                "job {}: purge of {name}/{prefix}* ended: {} objects removed",
                running.id,
                running.purged.load(Ordering::Relaxed)
            );
            running.finish();
        });
        job
    }

    /// Starts a prefetch of `lines` (keys, or origin URLs whose path is the key) into `bucket`,
    /// starting at most `rate` copies per second when given.
    pub fn start_prefetch(
        &self,
        store: Arc<dyn BucketStore>,
        copies: Copies,
        bucket: Arc<BucketPull>,
        limits: FillSettings,
        lines: Vec<String>,
        rate: Option<u64>,
    ) -> Arc<Job> {
        let job = self.create(JobKind::Prefetch, &bucket.name);
        job.total.store(lines.len() as u64, Ordering::Relaxed);
        let running = job.clone();
        tokio::spawn(async move {
            run_prefetch(&running, store, copies, bucket, limits, lines, rate).await;
            log::info!(
                "job {}: prefetch into {} ended: {} stored, {} already present, {} failed",
                running.id,
                running.bucket,
                running.stored.load(Ordering::Relaxed),
                running.already_present.load(Ordering::Relaxed),
                running.failed.load(Ordering::Relaxed)
            );
            running.finish();
        });
        job
    }
}

async fn run_prefetch(
    job: &Arc<Job>,
    store: Arc<dyn BucketStore>,
    copies: Copies,
    bucket: Arc<BucketPull>,
    limits: FillSettings,
    lines: Vec<String>,
    rate: Option<u64>,
) {
    let interval = rate
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs(1) / r.min(1_000_000) as u32);
    let mut next_start = Instant::now();
    let mut running: JoinSet<()> = JoinSet::new();
    for line in lines {
        if job.is_cancelled() {
            break;
        }
        let key = match key_of_line(&line) {
            Ok(key) => key,
            Err(why) => {
                job.fail(&line, &why);
                continue;
            }
        };
        if let Ok(Some(_)) = store.open(&bucket.name, &key).await {
            job.already_present.fetch_add(1, Ordering::Relaxed);
            job.done.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        while running.len() >= limits.concurrency {
            running.join_next().await;
        }
        if let Some(interval) = interval {
            tokio::time::sleep_until(next_start.into()).await;
            next_start = next_start.max(Instant::now()) + interval;
        }
        // Cancelled while waiting for a slot: this key is not started either.
        if job.is_cancelled() {
            break;
        }
        let (job, copies, bucket, limits) =
            (job.clone(), copies.clone(), bucket.clone(), limits.clone());
        running.spawn(async move {
            match copies.copy_and_wait(&bucket, &key, &limits).await {
                CopyEnd::Stored { bytes } => {
                    job.stored.fetch_add(1, Ordering::Relaxed);
                    job.bytes.fetch_add(bytes, Ordering::Relaxed);
                    job.done.fetch_add(1, Ordering::Relaxed);
                }
                CopyEnd::AlreadyStored | CopyEnd::StoredElsewhere => {
                    job.already_present.fetch_add(1, Ordering::Relaxed);
                    job.done.fetch_add(1, Ordering::Relaxed);
                }
                failed => job.fail(key.as_str(), &failed.reason()),
            }
        });
    }
    while running.join_next().await.is_some() {}
}

/// The key a prefetch line names: a full `http(s)://` URL's path (percent-encoded, as in a
/// request), or the key itself as written (as `find -printf '%P\n'` prints file names), where
/// a leading `/` is the path's, not the key's (`/py/x.html` is the key `py/x.html`). Both go
/// through the data plane's key parser.
pub fn key_of_line(line: &str) -> Result<ObjectKey, String> {
    let path = if line.starts_with("http://") || line.starts_with("https://") {
        let uri: http::Uri = line.parse().map_err(|_| "not a valid URL".to_string())?;
        uri.path().to_string()
    } else {
        encode_origin_path(line.strip_prefix('/').unwrap_or(line))
    };
    ObjectKey::from_request_path(&path).map_err(|e| match e {
        KeyError::Invalid(why) => format!("invalid key: {why}"),
        KeyError::TooLong => "invalid key: longer than 1024 bytes".to_string(),
    })
}
