//! Background copies from origins into buckets: which copies run, wait, or are skipped.
//!
//! A miss answered with 302 asks for a copy with [`Filler::start_copy_after_redirect`], which
//! never waits. Per key there is at most one copy running or queued (single flight); at most
//! `fill.concurrency` run at once and `fill.queue` wait; past that the copy is skipped and
//! counted as `dropped`. A key whose copy failed is not tried again for `fill.negative_ttl_secs`.
//! Limits come from the configuration of the request asking: a reload applies to copies asked
//! for after it (a queued copy keeps the limits it was queued with).
//!
//! A prefetch job asks with [`Filler::copy_and_wait`], which takes the same path and learns how
//! the copy ended (waiting for one already running instead of starting another). A hit on an
//! object due for revalidation asks with [`Filler::revalidate_if_due`]: a conditional copy that
//! shares the slots and the one-per-key rule but never makes the key look missing.
//!
//! Copies run as tokio tasks independent of the client's connection: a client hanging up does
//! not cancel one. On shutdown, copies still running when Pingora stops its runtimes are dropped,
//! and their unfinished temporary files with them.

pub mod copy;
pub mod failures;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pingora::connectors::http::Connector;
use tokio::sync::oneshot;

use crate::config::FillSettings;
use crate::key::{safe_query, ObjectKey};
use crate::metrics::{FillOutcome, METRICS};
use crate::route::Bucket;
use crate::store::{BucketStore, ObjectMeta};
use copy::{copy_object, CopyError, CopyRequest, Validators};

/// What happened to a copy request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDecision {
    Started,
    Queued,
    /// A copy of this key is already running or queued.
    AlreadyInFlight,
    /// A recent copy of this key failed; see `negative_ttl_secs`.
    RecentlyFailed,
    /// Concurrency and queue are full.
    Dropped,
}

/// How a copy ended, for whoever waits on it (a prefetch job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEnd {
    /// Copied now; the object's size.
    Stored {
        bytes: u64,
    },
    /// The object was already in the bucket.
    AlreadyStored,
    Failed {
        reason: String,
    },
}

/// Identifies a copy: bucket name and key.
#[derive(Clone)]
struct CopyKey {
    bucket: Arc<Bucket>,
    key: ObjectKey,
}

impl CopyKey {
    fn new(bucket: &Arc<Bucket>, key: &ObjectKey) -> CopyKey {
        CopyKey {
            bucket: bucket.clone(),
            key: key.clone(),
        }
    }

    fn bucket_name(&self) -> &str {
        &self.bucket.config.name
    }
}

impl PartialEq for CopyKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.bucket_name() == other.bucket_name()
    }
}

impl Eq for CopyKey {}

impl std::hash::Hash for CopyKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bucket_name().hash(state);
        self.key.hash(state);
    }
}

/// What the origin is asked for, beyond the key: set when the request named the key through
/// a folder (index document), and the request's query string.
#[derive(Clone, Default)]
pub struct CopySource {
    /// The folder as requested (`docs/`), asked of the origin instead of the key.
    pub folder: Option<String>,
    pub query: Option<String>,
    /// Set for a revalidation of a stored object: its origin validators.
    pub revalidate: Option<Validators>,
}

struct CopyJob {
    id: CopyKey,
    source: CopySource,
    limits: FillSettings,
}

#[derive(Default)]
struct Schedule {
    running: usize,
    waiting: VecDeque<CopyJob>,
    /// Keys running or waiting (revalidations excepted: their object is in the bucket).
    in_flight: HashSet<CopyKey>,
    /// Keys whose stored object is being revalidated, running or waiting.
    revalidating: HashSet<CopyKey>,
    /// Whoever waits for a key's copy to end.
    waiters: HashMap<CopyKey, Vec<oneshot::Sender<CopyEnd>>>,
    /// Keys whose last copy failed, with when they may be tried again.
    failed_until: HashMap<CopyKey, Instant>,
    /// The same entries in expiry order, so expired ones are dropped without a scan.
    expiries: VecDeque<(Instant, CopyKey)>,
}

impl Schedule {
    /// Whether a copy of `id` must not start now: one is running or waiting, or the last one
    /// failed within the negative TTL.
    fn blocked(&self, id: &CopyKey, now: Instant) -> Option<CopyDecision> {
        if self.in_flight.contains(id) {
            Some(CopyDecision::AlreadyInFlight)
        } else if self.failed_until.get(id).is_some_and(|until| *until > now) {
            Some(CopyDecision::RecentlyFailed)
        } else {
            None
        }
    }

    fn remember_failure(&mut self, id: &CopyKey, now: Instant, ttl: Duration) {
        while let Some((expiry, _)) = self.expiries.front() {
            if *expiry > now {
                break;
            }
            if let Some((expiry, key)) = self.expiries.pop_front() {
                // Only if not renewed by a later failure.
                if self.failed_until.get(&key) == Some(&expiry) {
                    self.failed_until.remove(&key);
                }
            }
        }
        if let Some(until) = now.checked_add(ttl) {
            self.failed_until.insert(id.clone(), until);
            self.expiries.push_back((until, id.clone()));
        }
    }
}

struct Shared {
    store: Arc<dyn BucketStore>,
    connector: Connector,
    schedule: Mutex<Schedule>,
}

#[derive(Clone)]
pub struct Filler {
    shared: Arc<Shared>,
}

impl Filler {
    pub fn new(store: Arc<dyn BucketStore>) -> Filler {
        Filler {
            shared: Arc::new(Shared {
                store,
                // One connector for all copies: it owns the connection pool.
                connector: Connector::new(None),
                schedule: Mutex::new(Schedule::default()),
            }),
        }
    }

    /// The miss path's hook: asks for `key` to be copied from `origin` into `bucket` in the
    /// background. Never waits; must be called from within a tokio runtime.
    pub fn start_copy_after_redirect(
        &self,
        bucket: &Arc<Bucket>,
        key: &ObjectKey,
        source: CopySource,
        limits: &FillSettings,
    ) -> CopyDecision {
        self.request_copy(bucket, key, source, limits, None)
    }

    /// A prefetch job's copy of `key`: through the same schedule as misses (single flight,
    /// concurrency, queue, negative TTL, origin guardrails); returns how it ended. A key whose
    /// copy is already running or waiting is waited for, not copied twice.
    pub async fn copy_and_wait(
        &self,
        bucket: &Arc<Bucket>,
        key: &ObjectKey,
        limits: &FillSettings,
    ) -> CopyEnd {
        if let Ok(Some(_)) = self.shared.store.open(&bucket.config.name, key).await {
            return CopyEnd::AlreadyStored;
        }
        let (tx, rx) = oneshot::channel();
        let decision = self.request_copy(bucket, key, CopySource::default(), limits, Some(tx));
        match decision {
            CopyDecision::RecentlyFailed => CopyEnd::Failed {
                reason: format!(
                    "failed within the last {}s (fill.negative_ttl_secs); try again later",
                    limits.negative_ttl_secs
                ),
            },
            CopyDecision::Dropped => CopyEnd::Failed {
                reason: "the copy queue is full (fill.queue)".into(),
            },
            _ => rx.await.unwrap_or_else(|_| CopyEnd::Failed {
                reason: "the copy was abandoned (shutting down)".into(),
            }),
        }
    }

    /// The hit path's hook: when the key's policy has `revalidate_after_secs` and `meta` was
    /// last checked longer ago than that, starts a revalidation. Never waits.
    pub fn revalidate_if_due(
        &self,
        bucket: &Arc<Bucket>,
        key: &ObjectKey,
        meta: &ObjectMeta,
        limits: &FillSettings,
    ) {
        let Some(pull) = &bucket.pull else { return };
        let after = pull.policy_for(key.as_str()).revalidate_after_secs;
        if after == 0 {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now.saturating_sub(meta.checked_at()) >= after {
            self.start_revalidation(bucket, key, meta, limits);
        }
    }

    /// A hit on `meta`, last checked against its origin longer ago than the policy allows:
    /// starts a conditional GET for it unless one (or a copy of the key) is running or waiting.
    /// Never waits.
    pub fn start_revalidation(
        &self,
        bucket: &Arc<Bucket>,
        key: &ObjectKey,
        meta: &ObjectMeta,
        limits: &FillSettings,
    ) {
        let id = CopyKey::new(bucket, key);
        let job = CopyJob {
            id: id.clone(),
            source: CopySource {
                revalidate: Some(Validators {
                    etag: meta.origin_etag.clone(),
                    last_modified: meta.origin_last_modified.clone(),
                }),
                ..CopySource::default()
            },
            limits: limits.clone(),
        };
        {
            let mut schedule = self.shared.lock();
            if schedule.in_flight.contains(&id) || schedule.revalidating.contains(&id) {
                return;
            }
            if schedule.running >= limits.concurrency {
                if schedule.waiting.len() < limits.queue {
                    schedule.revalidating.insert(id);
                    schedule.waiting.push_back(job);
                    METRICS.fill_queue_depth.set(schedule.waiting.len() as i64);
                } else {
                    count_revalidation(bucket, "skipped");
                }
                return;
            }
            schedule.running += 1;
            schedule.revalidating.insert(id);
        }
        // Spawned outside the lock, like a miss's copy.
        self.spawn(job);
    }

    /// Forgets that `key`'s last copy failed (a purge: the next miss copies it again).
    pub fn forget_failure(&self, bucket: &Arc<Bucket>, key: &ObjectKey) {
        let id = CopyKey::new(bucket, key);
        self.shared.lock().failed_until.remove(&id);
    }

    fn request_copy(
        &self,
        bucket: &Arc<Bucket>,
        key: &ObjectKey,
        source: CopySource,
        limits: &FillSettings,
        waiter: Option<oneshot::Sender<CopyEnd>>,
    ) -> CopyDecision {
        let id = CopyKey::new(bucket, key);
        let decision = {
            let mut schedule = self.shared.lock();
            let decision = if let Some(blocked) = schedule.blocked(&id, Instant::now()) {
                blocked
            } else if schedule.revalidating.contains(&id) {
                // Its revalidation is a copy of the key too: one at a time.
                CopyDecision::AlreadyInFlight
            } else if schedule.running < limits.concurrency {
                schedule.running += 1;
                schedule.in_flight.insert(id.clone());
                CopyDecision::Started
            } else if schedule.waiting.len() < limits.queue {
                schedule.in_flight.insert(id.clone());
                schedule.waiting.push_back(CopyJob {
                    id: id.clone(),
                    source: source.clone(),
                    limits: limits.clone(),
                });
                METRICS.fill_queue_depth.set(schedule.waiting.len() as i64);
                CopyDecision::Queued
            } else {
                CopyDecision::Dropped
            };
            if let Some(waiter) = waiter {
                if matches!(
                    decision,
                    CopyDecision::Started | CopyDecision::Queued | CopyDecision::AlreadyInFlight
                ) {
                    schedule.waiters.entry(id.clone()).or_default().push(waiter);
                }
            }
            decision
        };
        match decision {
            CopyDecision::Started => self.spawn(CopyJob {
                id,
                source,
                limits: limits.clone(),
            }),
            CopyDecision::Queued => {}
            CopyDecision::RecentlyFailed => bucket.metrics.count_fill(FillOutcome::NegativeCached),
            CopyDecision::Dropped => {
                log::warn!(
                    "fill queue full: not copying {:?} into {}",
                    key.as_str(),
                    bucket.config.name
                );
                bucket.metrics.count_fill(FillOutcome::Dropped);
            }
            CopyDecision::AlreadyInFlight => {}
        }
        decision
    }

    /// Whether `key` is known to be missing from `bucket`: a copy of it is running or waiting,
    /// or failed within the negative TTL. A hot key's misses then skip the store lookup while
    /// its copy runs. (Between a commit and this state being cleared the answer is a redirect
    /// for an object already stored, which is still a correct answer.)
    pub fn known_missing(&self, bucket: &Arc<Bucket>, key: &ObjectKey) -> bool {
        let id = CopyKey::new(bucket, key);
        self.shared.lock().blocked(&id, Instant::now()).is_some()
    }

    fn spawn(&self, job: CopyJob) {
        let filler = self.clone();
        tokio::spawn(async move {
            let mut job = job;
            loop {
                // Settles the schedule even if the copy panics or its task is dropped.
                let guard = FinishGuard {
                    filler: &filler,
                    job: &job,
                };
                let end = filler.run(&job).await;
                std::mem::forget(guard);
                let revalidation = job.source.revalidate.is_some();
                match filler.finish(&job.id, end, revalidation, &job.limits) {
                    Some(next) => job = next,
                    None => break,
                }
            }
        });
    }

    /// Runs one copy; returns how it ended.
    async fn run(&self, job: &CopyJob) -> CopyEnd {
        let bucket = job.id.bucket_name();
        // A copy that committed between this key's store lookup and its copy request: the
        // object is there, so the origin is not asked again.
        if job.source.revalidate.is_none() {
            if let Ok(Some(_)) = self.shared.store.open(bucket, &job.id.key).await {
                return CopyEnd::AlreadyStored;
            }
        }
        // The policy comes from the generation the miss was routed with; origins and their
        // order are chosen now, with health as it is when the copy runs.
        let Some(pull) = &job.id.bucket.pull else {
            return CopyEnd::Failed {
                reason: "origin-pull is off for this bucket".into(),
            };
        };
        let key = &job.id.key;
        let policy = pull.policy_for(key.as_str());
        let mut path_and_query =
            policy.origin_path(job.source.folder.as_deref().unwrap_or(key.as_str()));
        if let Some(query) = job
            .source
            .query
            .as_deref()
            .filter(|_| pull.pass_query_string)
        {
            path_and_query.push('?');
            path_and_query.push_str(&safe_query(query));
        }
        let request = CopyRequest {
            pull,
            policy,
            key,
            path_and_query,
            conditional: job.source.revalidate.clone(),
        };
        let _in_flight = InFlight::enter();
        let started = Instant::now();
        let metrics = &job.id.bucket.metrics;
        let (result, origin) = copy_object(
            &self.shared.connector,
            self.shared.store.as_ref(),
            bucket,
            &request,
            &job.limits,
        )
        .await;
        metrics
            .fill_duration
            .observe(started.elapsed().as_secs_f64());
        if request.conditional.is_some() {
            return self.revalidated(job, result).await;
        }
        let origin_label = origin.as_ref().map_or("-", |o| o.label.as_str());
        let outcome = match &result {
            Ok(meta) => {
                metrics.fill_bytes.inc_by(meta.size);
                log::info!(
                    "copied {:?} from {origin_label}{} into {bucket}: {} bytes in {:?}",
                    key.as_str(),
                    request.path_and_query,
                    meta.size,
                    started.elapsed()
                );
                FillOutcome::Stored
            }
            Err(e) => {
                log::warn!(
                    "copy of {:?} from {origin_label}{} into {bucket} failed: {e}",
                    key.as_str(),
                    request.path_and_query,
                );
                match e {
                    CopyError::OriginStatus(_) => FillOutcome::OriginStatus,
                    CopyError::Timeout(_)
                    | CopyError::Unreachable {
                        timed_out: true, ..
                    } => FillOutcome::Timeout,
                    CopyError::TooLarge { .. } => FillOutcome::TooLarge,
                    CopyError::Origin(_) | CopyError::Unreachable { .. } => {
                        FillOutcome::OriginError
                    }
                    CopyError::Store(_) => FillOutcome::StoreError,
                    CopyError::Loop => FillOutcome::Loop,
                    CopyError::RedirectRefused(_) => FillOutcome::RedirectRefused,
                }
            }
        };
        metrics.count_fill(outcome);
        if let Some(origin) = &origin {
            METRICS
                .origin_fills
                .with_label_values(&[bucket, origin.label.as_str(), outcome.as_str()])
                .inc();
        }
        match result {
            Ok(meta) => {
                failures::record_success(bucket, key.as_str());
                CopyEnd::Stored { bytes: meta.size }
            }
            Err(e) => {
                let reason = e.to_string();
                failures::record_failure(bucket, key.as_str(), &reason);
                CopyEnd::Failed { reason }
            }
        }
    }

    /// Ends a revalidation: a `304` refreshes the check time, a `200` has replaced the object
    /// (committed whole by the copy), a `404` leaves the object as it is; each is counted.
    async fn revalidated(&self, job: &CopyJob, result: Result<ObjectMeta, CopyError>) -> CopyEnd {
        let bucket = &job.id.bucket;
        let key = &job.id.key;
        let name = job.id.bucket_name();
        let (outcome, end) = match result {
            Ok(meta) => {
                log::info!(
                    "revalidated {:?} in {name}: changed at the origin, replaced",
                    key.as_str()
                );
                bucket.metrics.fill_bytes.inc_by(meta.size);
                ("replaced", CopyEnd::Stored { bytes: meta.size })
            }
            Err(CopyError::OriginStatus(304)) => {
                match self.shared.store.mark_checked(name, key).await {
                    Ok(true) => ("not_modified", CopyEnd::AlreadyStored),
                    Ok(false) => (
                        "not_modified",
                        CopyEnd::Failed {
                            reason: "purged while it was being revalidated".into(),
                        },
                    ),
                    Err(e) => (
                        "failed",
                        CopyEnd::Failed {
                            reason: e.to_string(),
                        },
                    ),
                }
            }
            Err(CopyError::OriginStatus(404)) => {
                log::warn!(
                    "revalidated {:?} in {name}: the origin no longer has it; the stored copy is kept",
                    key.as_str()
                );
                ("origin_missing", CopyEnd::AlreadyStored)
            }
            Err(e) => {
                log::warn!("revalidation of {:?} in {name} failed: {e}", key.as_str());
                (
                    "failed",
                    CopyEnd::Failed {
                        reason: e.to_string(),
                    },
                )
            }
        };
        count_revalidation(bucket, outcome);
        end
    }

    /// Records the end of a copy and hands back the next waiting job, if any, to run in the
    /// same task (keeping `running` unchanged).
    fn finish(
        &self,
        id: &CopyKey,
        end: CopyEnd,
        revalidation: bool,
        limits: &FillSettings,
    ) -> Option<CopyJob> {
        let mut schedule = self.shared.lock();
        if revalidation {
            // The object stays in the bucket whatever happened: no negative entry.
            schedule.revalidating.remove(id);
        } else {
            schedule.in_flight.remove(id);
            if matches!(end, CopyEnd::Failed { .. }) && limits.negative_ttl_secs > 0 {
                let ttl = Duration::from_secs(limits.negative_ttl_secs);
                schedule.remember_failure(id, Instant::now(), ttl);
            } else {
                schedule.failed_until.remove(id);
            }
        }
        for waiter in schedule.waiters.remove(id).unwrap_or_default() {
            let _ = waiter.send(end.clone());
        }
        // A reload may have lowered the concurrency: then this slot is given up.
        if schedule.running <= limits.concurrency {
            if let Some(next) = schedule.waiting.pop_front() {
                METRICS.fill_queue_depth.set(schedule.waiting.len() as i64);
                return Some(next);
            }
        }
        schedule.running -= 1;
        None
    }
}

fn count_revalidation(bucket: &Bucket, outcome: &str) {
    METRICS
        .revalidations
        .with_label_values(&[bucket.config.name.as_str(), outcome])
        .inc();
}

/// Counts a copy in `originpull_fills_in_flight` for as long as it lives.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        METRICS.fills_in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.fills_in_flight.dec();
    }
}

/// Marks a copy as failed if it ends without reaching `finish` (a panic, or its task dropped
/// at shutdown), so its key and slot are not held forever.
struct FinishGuard<'a> {
    filler: &'a Filler,
    job: &'a CopyJob,
}

impl Drop for FinishGuard<'_> {
    fn drop(&mut self) {
        let end = CopyEnd::Failed {
            reason: "the copy stopped unexpectedly".into(),
        };
        let revalidation = self.job.source.revalidate.is_some();
        let next = self
            .filler
            .finish(&self.job.id, end, revalidation, &self.job.limits);
        // After a panic the waiting copy gets a task of its own; at shutdown there is no
        // runtime left and it is dropped with the rest.
        if let (Some(next), Ok(runtime)) = (next, tokio::runtime::Handle::try_current()) {
            let _context = runtime.enter();
            self.filler.spawn(next);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Schedule> {
        // The schedule stays consistent even if a holder panicked: every update is one step.
        self.schedule
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
