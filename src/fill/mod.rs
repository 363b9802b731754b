//! Background copies from origins into buckets: which copies run, wait, or are skipped.
//!
//! A miss answered with 302 asks for a copy with [`Filler::start_copy_after_redirect`], which
//! never waits. Per key there is at most one copy running or queued (single flight); at most
//! `fill.concurrency` run at once and `fill.queue` wait; past that the copy is skipped and
//! counted as `dropped`. A key whose copy failed is not tried again for `fill.negative_ttl_secs`.
//! Limits come from the configuration of the request asking: a reload applies to copies asked
//! for after it (a queued copy keeps the limits it was queued with).
//!
//! Copies run as tokio tasks independent of the client's connection: a client hanging up does
//! not cancel one. On shutdown, copies still running when Pingora stops its runtimes are dropped,
//! and their unfinished temporary files with them.

pub mod origin;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pingora::connectors::http::Connector;

use crate::config::{FillSettings, OriginAddr};
use crate::key::ObjectKey;
use crate::metrics::{FillOutcome, METRICS};
use crate::route::Bucket;
use crate::store::BucketStore;
use origin::{copy_object, CopyError};

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

struct CopyJob {
    id: CopyKey,
    origin: OriginAddr,
    limits: FillSettings,
}

#[derive(Default)]
struct Schedule {
    running: usize,
    waiting: VecDeque<CopyJob>,
    /// Keys running or waiting.
    in_flight: HashSet<CopyKey>,
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
        origin: &OriginAddr,
        key: &ObjectKey,
        limits: &FillSettings,
    ) -> CopyDecision {
        let id = CopyKey::new(bucket, key);
        let decision = {
            let mut schedule = self.shared.lock();
            if let Some(blocked) = schedule.blocked(&id, Instant::now()) {
                blocked
            } else if schedule.running < limits.concurrency {
                schedule.running += 1;
                schedule.in_flight.insert(id.clone());
                CopyDecision::Started
            } else if schedule.waiting.len() < limits.queue {
                schedule.in_flight.insert(id.clone());
                schedule.waiting.push_back(CopyJob {
                    id: id.clone(),
                    origin: origin.clone(),
                    limits: limits.clone(),
                });
                METRICS.fill_queue_depth.set(schedule.waiting.len() as i64);
                CopyDecision::Queued
            } else {
                CopyDecision::Dropped
            }
        };
        match decision {
            CopyDecision::Started => self.spawn(CopyJob {
                id,
                origin: origin.clone(),
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

    /// Whether no copy is running or waiting (a graceful stop waits for this).
    pub fn is_idle(&self) -> bool {
        self.shared.lock().running == 0
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
                let failed = filler.run(&job).await;
                std::mem::forget(guard);
                match filler.finish(&job.id, failed, &job.limits) {
                    Some(next) => job = next,
                    None => break,
                }
            }
        });
    }

    /// Runs one copy; returns whether it failed.
    async fn run(&self, job: &CopyJob) -> bool {
        let bucket = job.id.bucket_name();
        // A copy that committed between this key's store lookup and its copy request: the
        // object is there, so the origin is not asked again.
        if let Ok(Some(_)) = self.shared.store.open(bucket, &job.id.key).await {
            return false;
        }
        let _in_flight = InFlight::enter();
        let started = Instant::now();
        let metrics = &job.id.bucket.metrics;
        let result = copy_object(
            &self.shared.connector,
            self.shared.store.as_ref(),
            bucket,
            &job.origin,
            &job.id.key,
            &job.limits,
        )
        .await;
        metrics
            .fill_duration
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(meta) => {
                metrics.fill_bytes.inc_by(meta.size);
                log::info!(
                    "copied {:?} from {} into {bucket}: {} bytes in {:?}",
                    job.id.key.as_str(),
                    job.origin.authority,
                    meta.size,
                    started.elapsed()
                );
                FillOutcome::Stored
            }
            Err(e) => {
                log::warn!(
                    "copy of {:?} from {} into {bucket} failed: {e}",
                    job.id.key.as_str(),
                    job.origin.authority
                );
                match e {
                    CopyError::OriginStatus(_) => FillOutcome::OriginStatus,
                    CopyError::Timeout(_) => FillOutcome::Timeout,
                    CopyError::TooLarge { .. } => FillOutcome::TooLarge,
                    CopyError::Origin(_) => FillOutcome::OriginError,
                    CopyError::Store(_) => FillOutcome::StoreError,
                }
            }
        };
        metrics.count_fill(outcome);
        result.is_err()
    }

    /// Records the end of a copy and hands back the next waiting job, if any, to run in the
    /// same task (keeping `running` unchanged).
    fn finish(&self, id: &CopyKey, failed: bool, limits: &FillSettings) -> Option<CopyJob> {
        let mut schedule = self.shared.lock();
        schedule.in_flight.remove(id);
        if failed && limits.negative_ttl_secs > 0 {
            let ttl = Duration::from_secs(limits.negative_ttl_secs);
            schedule.remember_failure(id, Instant::now(), ttl);
        } else {
            schedule.failed_until.remove(id);
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
        let next = self.filler.finish(&self.job.id, true, &self.job.limits);
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
