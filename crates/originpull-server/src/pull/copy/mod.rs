//! Background copies from origins into buckets: which copies run, wait, or are skipped.
//!
//! A miss answered with 302 asks for a copy with [`Copies::start_copy_after_redirect`], which
//! never waits. Per key there is at most one copy running or queued (single flight); at most
//! `fill.concurrency` run at once and `fill.queue` wait; past that the copy is skipped and
//! counted as `dropped`. A key whose copy failed is not tried again for `fill.negative_ttl_secs`.
//! Limits come from the configuration of the request asking: a reload applies to copies asked
//! for after it (a queued copy keeps the limits it was queued with).
//!
//! A prefetch job asks with [`Copies::copy_and_wait`], which takes the same path and learns how
//! the copy ended (waiting for one already running instead of starting another). A hit on an
//! object due for revalidation asks with [`Copies::revalidate_if_due`]: a conditional copy that
//! shares the slots and the one-per-key rule but never makes the key look missing.
//!
//! A miss in mirror mode asks with [`Copies::start_mirror`]: it joins the copy of the key that
//! runs (waiting for its end), or starts one now and, for a plain GET, streams its body.
//!
//! Copies run as tokio tasks independent of the client's connection: a client hanging up does
//! not cancel one. On shutdown, copies still running when Pingora stops its runtimes are dropped,
//! and their unfinished temporary files with them.

mod end;
pub mod failures;
mod schedule;
pub mod transfer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pingora::connectors::http::Connector;
use thread_local::ThreadLocal;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::METRICS;
use crate::pull::origin::BucketPull;
pub use end::CopyEnd;
use originpull_config::FillSettings;
use originpull_store::key::{safe_query, ObjectKey};
use originpull_store::{BucketStore, ObjectMeta};
use originpull_support::clock::coarse_now;
use originpull_support::log_summary::SummarizedLog;
use schedule::{CopyJob, CopyKey, CopyKeyRef, Schedule};
use transfer::{copy_object, CopyError, CopyRequest, MirrorEvent, MirrorSink, Validators};

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

/// What the origin is asked for, beyond the key: set when the request named the key through
/// a folder (index document), and the request's query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopySource {
    /// The folder as requested (`docs/`), asked of the origin instead of the key.
    pub folder: Option<String>,
    pub query: Option<String>,
    /// Set for a revalidation of a stored object: its origin validators.
    pub revalidate: Option<Validators>,
}

/// How a mirror-mode miss proceeds.
pub enum MirrorTicket {
    /// This request leads a new copy and streams its body as it arrives.
    Leader(mpsc::Receiver<MirrorEvent>),
    /// A copy of the key runs (or was started for this request without streaming): its end
    /// arrives here, then the object is served from the bucket.
    Follower(oneshot::Receiver<CopyEnd>),
    /// The origin said within the negative TTL that the key does not exist.
    NotFound,
}

/// Lines about copies, which a client asking for many keys makes many of.
static COPY_FAILURES: SummarizedLog =
    SummarizedLog::new(log::Level::Warn, module_path!(), "copy failures");
/// A crawler (or a prefetch) of a large origin makes one copy per object.
static COPIES: SummarizedLog =
    SummarizedLog::new(log::Level::Info, module_path!(), "objects copied");
static QUEUE_FULL: SummarizedLog = SummarizedLog::new(
    log::Level::Warn,
    module_path!(),
    "copies not started (fill queue full)",
);
static REVALIDATION_FAILURES: SummarizedLog =
    SummarizedLog::new(log::Level::Warn, module_path!(), "revalidation failures");
static STORE_CLAIM_FAILURES: SummarizedLog = SummarizedLog::new(
    log::Level::Warn,
    module_path!(),
    "copies not claimed (store failing)",
);
static WAITING_FOR_OTHER_NODES: SummarizedLog = SummarizedLog::new(
    log::Level::Info,
    module_path!(),
    "copies waiting for another node's fetch",
);

/// Body chunks buffered for a mirror client before it is let go to catch up from the bucket
/// (16 × the origin's read size, a few MiB at most).
const MIRROR_BUFFER_CHUNKS: usize = 16;
/// How often a copy whose key another node is fetching looks for the object.
const CLAIM_POLL: Duration = Duration::from_millis(200);

struct Shared {
    store: Arc<dyn BucketStore>,
    /// Each thread's own connector, that is its own pool of origin connections. With one pool
    /// for all threads, a connection released on one worker and taken by a copy on the other
    /// was often lost: Pingora 0.9.1 hands a pooled connection over only if its idle watcher,
    /// running on the releasing thread, has let go of it by then, and otherwise closes it
    /// ("failed to acquire reusable stream"): 2,000 mirrored misses from 16 clients opened 107
    /// origin connections, now 15 (`docs/benchmarks.md`). As nginx's workers do, each
    /// worker keeps its own idle connections; a copy runs on the thread that started it.
    connectors: ThreadLocal<Connector>,
    schedule: Mutex<Schedule>,
    /// Whether any key is in flight or remembered as failed, as the schedule's lock last left
    /// it: every hit asks [`Copies::copy_blocked`], and while nothing is blocked it answers
    /// without taking the lock, which both worker threads would otherwise write per request.
    anything_blocked: AtomicBool,
}

/// The copy schedule: every copy from an origin into a bucket is asked for here (see the module
/// documentation); cloned handles share one schedule.
#[derive(Clone)]
pub struct Copies {
    shared: Arc<Shared>,
}

impl Copies {
    pub fn new(store: Arc<dyn BucketStore>) -> Copies {
        Copies {
            shared: Arc::new(Shared {
                store,
                connectors: ThreadLocal::new(),
                schedule: Mutex::new(Schedule::default()),
                anything_blocked: AtomicBool::new(false),
            }),
        }
    }

    /// The miss path's hook: asks for `key` to be copied from `origin` into `bucket` in the
    /// background. Never waits; must be called from within a tokio runtime.
    pub fn start_copy_after_redirect(
        &self,
        bucket: &Arc<BucketPull>,
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
        bucket: &Arc<BucketPull>,
        key: &ObjectKey,
        limits: &FillSettings,
    ) -> CopyEnd {
        if let Ok(Some(_)) = self.shared.store.open(&bucket.name, key).await {
            return CopyEnd::AlreadyStored;
        }
        let (tx, rx) = oneshot::channel();
        let decision = self.request_copy(bucket, key, CopySource::default(), limits, Some(tx));
        match decision {
            CopyDecision::RecentlyFailed => CopyEnd::RecentlyFailed {
                negative_ttl_secs: limits.negative_ttl_secs,
            },
            CopyDecision::Dropped => CopyEnd::Dropped,
            _ => rx.await.unwrap_or(CopyEnd::Abandoned),
        }
    }

    /// The hit path's hook: when the key's policy has `revalidate_after_secs` and `meta` was
    /// last checked longer ago than that, starts a revalidation. Never waits.
    pub fn revalidate_if_due(
        &self,
        bucket: &Arc<BucketPull>,
        key: &ObjectKey,
        meta: &ObjectMeta,
        limits: &FillSettings,
    ) {
        let after = bucket.policy_for(key.as_str()).revalidate_after_secs;
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
        bucket: &Arc<BucketPull>,
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
            sink: None,
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
    pub fn forget_failure(&self, bucket: &BucketPull, key: &ObjectKey) {
        let id = CopyKeyRef::new(bucket, key);
        self.shared.lock().failed_until.remove(&id);
    }

    fn request_copy(
        &self,
        bucket: &Arc<BucketPull>,
        key: &ObjectKey,
        source: CopySource,
        limits: &FillSettings,
        waiter: Option<oneshot::Sender<CopyEnd>>,
    ) -> CopyDecision {
        let id = CopyKey::new(bucket, key);
        let decision = {
            let mut schedule = self.shared.lock();
            let decision = if let Some(blocked) = schedule.blocked(&id, coarse_now()) {
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
                    sink: None,
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
                sink: None,
            }),
            CopyDecision::Queued => {}
            CopyDecision::RecentlyFailed | CopyDecision::AlreadyInFlight => {
                self.note_blocked_copy(bucket, decision)
            }
            CopyDecision::Dropped => {
                QUEUE_FULL.note(|| {
                    format!(
                        "fill queue full: not copying {:?} into {}",
                        key.as_str(),
                        bucket.name
                    )
                });
                count(bucket, &CopyEnd::Dropped);
            }
        }
        decision
    }

    /// Why a copy of `key` would not start now, if it would not: one is running or waiting, or
    /// one failed within the negative TTL. The key is then known to be missing from `bucket`,
    /// so a hot key's misses skip the store lookup while its copy runs, and the miss need not
    /// ask for a copy (see [`Copies::note_blocked_copy`]). (Between a commit and this state
    /// being cleared the answer is a redirect for an object already stored, which is still a
    /// correct answer.)
    pub fn copy_blocked(&self, bucket: &BucketPull, key: &ObjectKey) -> Option<CopyDecision> {
        // A key blocked by a copy that starts meanwhile is caught when its miss asks for the
        // copy, under the lock.
        if !self.shared.anything_blocked.load(Ordering::Acquire) {
            return None;
        }
        let id = CopyKeyRef::new(bucket, key);
        self.shared.lock().blocked(&id, coarse_now())
    }

    /// Counts a miss whose copy [`Copies::copy_blocked`] found blocked, as asking for the copy
    /// would have, without taking the schedule's lock again.
    pub fn note_blocked_copy(&self, bucket: &BucketPull, blocked: CopyDecision) {
        if blocked == CopyDecision::RecentlyFailed {
            count(
                bucket,
                &CopyEnd::RecentlyFailed {
                    negative_ttl_secs: 0,
                },
            );
        }
    }

    /// The mirror-mode miss: joins the copy of `key` that runs, or starts one now (a client
    /// is waiting, so it is not queued behind background copies). With `stream`, the request
    /// leads the new copy and gets its body as it arrives; otherwise it waits for the end.
    pub fn start_mirror(
        &self,
        bucket: &Arc<BucketPull>,
        key: &ObjectKey,
        source: CopySource,
        limits: &FillSettings,
        stream: bool,
    ) -> MirrorTicket {
        let id = CopyKey::new(bucket, key);
        let (sink, ticket) = {
            let mut schedule = self.shared.lock();
            if schedule.in_flight.contains(&id) || schedule.revalidating.contains(&id) {
                return MirrorTicket::Follower(schedule.wait_for(&id));
            }
            // Only "not found" is remembered for mirror clients; other failures are retried.
            if schedule.recent_failure(&id, coarse_now()) == Some(true) {
                drop(schedule);
                count(
                    bucket,
                    &CopyEnd::RecentlyFailed {
                        negative_ttl_secs: 0,
                    },
                );
                return MirrorTicket::NotFound;
            }
            schedule.running += 1;
            schedule.in_flight.insert(id.clone());
            if stream {
                let (sink, events) = MirrorSink::channel(MIRROR_BUFFER_CHUNKS);
                (Some(sink), MirrorTicket::Leader(events))
            } else {
                (None, MirrorTicket::Follower(schedule.wait_for(&id)))
            }
        };
        self.spawn(CopyJob {
            id,
            source,
            limits: limits.clone(),
            sink,
        });
        ticket
    }

    /// This thread's connector (and pool of origin connections) for copies and other requests
    /// to origins (mirror mode's HEAD).
    pub fn connector(&self) -> &Connector {
        self.shared.connectors.get_or(|| Connector::new(None))
    }

    /// Makes this thread's connector now: making one loads the system's trusted roots (tens of
    /// milliseconds), which a worker's first copy would otherwise wait for.
    pub fn prepare_this_thread(&self) {
        self.connector();
    }

    /// How the copy of `key` that runs now ends, if one runs.
    pub fn running_copy(
        &self,
        bucket: &Arc<BucketPull>,
        key: &ObjectKey,
    ) -> Option<oneshot::Receiver<CopyEnd>> {
        let id = CopyKey::new(bucket, key);
        let mut schedule = self.shared.lock();
        schedule
            .in_flight
            .contains(&id)
            .then(|| schedule.wait_for(&id))
    }

    /// Whether no copy is running or waiting (a graceful stop waits for this).
    pub fn is_idle(&self) -> bool {
        self.shared.lock().running == 0
    }

    fn spawn(&self, job: CopyJob) {
        let copies = self.clone();
        tokio::spawn(async move {
            let mut job = job;
            loop {
                // Settles the schedule even if the copy panics or its task is dropped.
                let guard = FinishGuard {
                    copies: &copies,
                    id: job.id.clone(),
                    limits: job.limits.clone(),
                    revalidation: job.source.revalidate.is_some(),
                };
                let end = copies.run(&mut job).await;
                std::mem::forget(guard);
                let revalidation = job.source.revalidate.is_some();
                match copies.finish(&job.id, end, revalidation, &job.limits) {
                    Some(next) => job = next,
                    None => break,
                }
            }
        });
    }

    /// Waits for this key's fleet-wide fill claim (see `BucketStore::claim_fill`). While another
    /// node holds it, the object is looked for until it lands (`Err(Stored)`: waiting mirror
    /// clients then read it from the bucket) or the claim comes free (the holder failed).
    async fn claim_fill(
        &self,
        bucket: &str,
        id: &CopyKey,
    ) -> Result<originpull_store::FillClaim, CopyEnd> {
        let store = &self.shared.store;
        let mut waiting = false;
        loop {
            match store.claim_fill(bucket, &id.key).await {
                Ok(Some(claim)) => {
                    // Committed by another node just before its claim was released.
                    if let Ok(Some(_)) = store.open(bucket, &id.key).await {
                        return Err(CopyEnd::StoredElsewhere);
                    }
                    return Ok(claim);
                }
                Ok(None) if !waiting => {
                    waiting = true;
                    WAITING_FOR_OTHER_NODES.note(|| {
                        format!(
                            "copy of {:?} in {bucket}: another node is fetching it; waiting for it to land",
                            id.key.as_str()
                        )
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    STORE_CLAIM_FAILURES.note(|| {
                        format!(
                            "claiming the copy of {:?} in {bucket}: {e}",
                            id.key.as_str()
                        )
                    });
                    return Err(CopyEnd::StoreUnavailable(e.to_string()));
                }
            }
            tokio::time::sleep(CLAIM_POLL).await;
            if let Ok(Some(_)) = store.open(bucket, &id.key).await {
                return Err(CopyEnd::StoredElsewhere);
            }
        }
    }

    /// Runs one copy; returns how it ended, which a streaming client also learns, however it
    /// ended (found stored, not claimed, fetched or failed).
    async fn run(&self, job: &mut CopyJob) -> CopyEnd {
        let end = self.copy(job).await;
        if let Some(mut sink) = job.sink.take() {
            sink.offer(match &end {
                stored if stored.is_stored() => MirrorEvent::End,
                failed => MirrorEvent::Failed(failed.clone()),
            });
        }
        end
    }

    async fn copy(&self, job: &mut CopyJob) -> CopyEnd {
        let bucket = job.id.bucket_name();
        // A copy that committed between this key's store lookup and its copy request: the
        // object is there, so the origin is not asked again.
        if job.source.revalidate.is_none() {
            if let Ok(Some(_)) = self.shared.store.open(bucket, &job.id.key).await {
                return CopyEnd::AlreadyStored;
            }
        }
        // A revalidation's object is in the store already: only new copies claim the key
        // fleet-wide (a claim would find the object and stop there).
        let _claim = if job.source.revalidate.is_none() {
            match self.claim_fill(bucket, &job.id).await {
                Ok(claim) => Some(claim),
                Err(end) => {
                    count(&job.id.bucket, &end);
                    return end;
                }
            }
        } else {
            None
        };
        // The policy comes from the generation the miss was routed with; origins and their
        // order are chosen now, with health as it is when the copy runs.
        let pull = &job.id.bucket;
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
            self.connector(),
            self.shared.store.as_ref(),
            bucket,
            &request,
            &job.limits,
            &mut job.sink,
        )
        .await;
        metrics
            .fill_duration
            .observe(started.elapsed().as_secs_f64());
        if request.conditional.is_some() {
            return self.revalidated(job, result).await;
        }
        let origin_label = origin.as_ref().map_or("-", |o| o.label.as_str());
        let end = match result {
            Ok(meta) => {
                metrics.fill_bytes.inc_by(meta.size);
                COPIES.note(|| {
                    format!(
                        "copied {:?} from {origin_label}{} into {bucket}: {} bytes in {:?}",
                        key.as_str(),
                        request.path_and_query,
                        meta.size,
                        started.elapsed()
                    )
                });
                failures::record_success(bucket, key.as_str());
                CopyEnd::Stored { bytes: meta.size }
            }
            Err(e) => {
                // A scanner asking for missing keys makes one failed copy per key.
                COPY_FAILURES.note(|| {
                    format!(
                        "copy of {:?} from {origin_label}{} into {bucket} failed: {e}",
                        key.as_str(),
                        request.path_and_query,
                    )
                });
                failures::record_failure(bucket, key.as_str(), &e.to_string());
                CopyEnd::from(e)
            }
        };
        count(&job.id.bucket, &end);
        if let (Some(origin), Some(outcome)) = (&origin, end.metric_label()) {
            METRICS
                .origin_fills
                .with_label_values(&[bucket, origin.label.as_str(), outcome])
                .inc();
        }
        end
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
                        CopyEnd::OriginError("purged while it was being revalidated".into()),
                    ),
                    Err(e) => ("failed", CopyEnd::StoreFailed(e.to_string())),
                }
            }
            Err(CopyError::OriginStatus(404)) => {
                REVALIDATION_FAILURES.note(|| {
                    format!(
                        "revalidated {:?} in {name}: the origin no longer has it; the stored copy is kept",
                        key.as_str()
                    )
                });
                ("origin_missing", CopyEnd::AlreadyStored)
            }
            Err(e) => {
                REVALIDATION_FAILURES
                    .note(|| format!("revalidation of {:?} in {name} failed: {e}", key.as_str()));
                ("failed", CopyEnd::from(e))
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
            if end.is_remembered() && limits.negative_ttl_secs > 0 {
                let ttl = Duration::from_secs(limits.negative_ttl_secs);
                schedule.remember_failure(id, end.is_not_found(), coarse_now(), ttl);
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

/// Counts how a copy of `bucket`'s ended, in `originpull_fills_total`.
fn count(bucket: &BucketPull, end: &CopyEnd) {
    if let Some(outcome) = end.metric_label() {
        bucket.metrics.count_copy(outcome);
    }
}

fn count_revalidation(bucket: &BucketPull, outcome: &str) {
    METRICS
        .revalidations
        .with_label_values(&[bucket.name.as_str(), outcome])
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
    copies: &'a Copies,
    id: CopyKey,
    limits: FillSettings,
    revalidation: bool,
}

impl Drop for FinishGuard<'_> {
    fn drop(&mut self) {
        let end = CopyEnd::Abandoned;
        let next = self
            .copies
            .finish(&self.id, end, self.revalidation, &self.limits);
        // After a panic the waiting copy gets a task of its own; at shutdown there is no
        // runtime left and it is dropped with the rest.
        if let (Some(next), Ok(runtime)) = (next, tokio::runtime::Handle::try_current()) {
            let _context = runtime.enter();
            self.copies.spawn(next);
        }
    }
}

impl Shared {
    fn lock(&self) -> ScheduleGuard<'_> {
        // The schedule stays consistent even if a holder panicked: every update is one step.
        let schedule = self
            .schedule
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ScheduleGuard {
            schedule,
            anything_blocked: &self.anything_blocked,
        }
    }
}

/// The schedule, locked; on release it updates [`Shared::anything_blocked`] (only when that
/// changes, so the flag's cache line stays shared between the cores that read it).
struct ScheduleGuard<'a> {
    schedule: MutexGuard<'a, Schedule>,
    anything_blocked: &'a AtomicBool,
}

impl std::ops::Deref for ScheduleGuard<'_> {
    type Target = Schedule;

    fn deref(&self) -> &Schedule {
        &self.schedule
    }
}

impl std::ops::DerefMut for ScheduleGuard<'_> {
    fn deref_mut(&mut self) -> &mut Schedule {
        &mut self.schedule
    }
}

impl Drop for ScheduleGuard<'_> {
    fn drop(&mut self) {
        let blocked = !self.schedule.in_flight.is_empty() || !self.schedule.failed_until.is_empty();
        if self.anything_blocked.load(Ordering::Relaxed) != blocked {
            self.anything_blocked.store(blocked, Ordering::Release);
        }
    }
}
