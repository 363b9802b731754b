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

pub mod copy;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pingora::connectors::http::Connector;

use crate::config::FillSettings;
use crate::key::{safe_query, ObjectKey};
use crate::metrics::{FillOutcome, METRICS};
use crate::route::Bucket;
use crate::store::BucketStore;
use copy::{copy_object, CopyError, CopyRequest, MirrorEvent, MirrorSink};
use tokio::sync::{mpsc, watch};

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

/// What the origin is asked for, beyond the key: set when the request named the key through
/// a folder (index document), and the request's query string.
#[derive(Clone, Default)]
pub struct CopySource {
    /// The folder as requested (`docs/`), asked of the origin instead of the key.
    pub folder: Option<String>,
    pub query: Option<String>,
}

/// How a copy ended, as the clients waiting for it (mirror mode) need to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillEnd {
    /// The object is in the bucket (stored now, or found there when the copy started).
    Stored,
    /// The origin answered 404 or 410.
    NotFound,
    /// Larger than `max_object_bytes`: not stored.
    TooLarge,
    /// The origin did not answer in time.
    Timeout,
    /// The origin failed otherwise (5xx, unreachable, TLS, a cut-off body, a loop...).
    OriginFailed,
    /// The bucket store failed.
    StoreFailed,
}

impl FillEnd {
    fn of(result: &Result<crate::store::ObjectMeta, CopyError>) -> FillEnd {
        result
            .as_ref()
            .err()
            .map_or(FillEnd::Stored, FillEnd::of_error)
    }

    pub fn of_error(error: &CopyError) -> FillEnd {
        match error {
            CopyError::OriginStatus(404 | 410) => FillEnd::NotFound,
            CopyError::TooLarge { .. } => FillEnd::TooLarge,
            CopyError::Timeout(_)
            | CopyError::Unreachable {
                timed_out: true, ..
            } => FillEnd::Timeout,
            CopyError::Store(_) => FillEnd::StoreFailed,
            _ => FillEnd::OriginFailed,
        }
    }
}

struct CopyJob {
    id: CopyKey,
    source: CopySource,
    limits: FillSettings,
    /// The mirror client streaming this copy's body, if any.
    sink: Option<MirrorSink>,
}

#[derive(Default)]
struct Schedule {
    running: usize,
    waiting: VecDeque<CopyJob>,
    /// Keys running or waiting, each with the channel that tells waiting clients its end.
    in_flight: HashMap<CopyKey, watch::Sender<Option<FillEnd>>>,
    /// Keys whose last copy failed, with when they may be tried again and how it ended.
    failed_until: HashMap<CopyKey, (Instant, FillEnd)>,
    /// The same entries in expiry order, so expired ones are dropped without a scan.
    expiries: VecDeque<(Instant, CopyKey)>,
}

impl Schedule {
    /// Whether a copy of `id` must not start now: one is running or waiting, or the last one
    /// failed within the negative TTL.
    fn blocked(&self, id: &CopyKey, now: Instant) -> Option<CopyDecision> {
        if self.in_flight.contains_key(id) {
            Some(CopyDecision::AlreadyInFlight)
        } else if self.recent_failure(id, now).is_some() {
            Some(CopyDecision::RecentlyFailed)
        } else {
            None
        }
    }

    fn recent_failure(&self, id: &CopyKey, now: Instant) -> Option<FillEnd> {
        self.failed_until
            .get(id)
            .filter(|(until, _)| *until > now)
            .map(|(_, end)| *end)
    }

    fn remember_failure(&mut self, id: &CopyKey, end: FillEnd, now: Instant, ttl: Duration) {
        while let Some((expiry, _)) = self.expiries.front() {
            if *expiry > now {
                break;
            }
            if let Some((expiry, key)) = self.expiries.pop_front() {
                // Only if not renewed by a later failure.
                if self.failed_until.get(&key).map(|(until, _)| until) == Some(&expiry) {
                    self.failed_until.remove(&key);
                }
            }
        }
        if let Some(until) = now.checked_add(ttl) {
            self.failed_until.insert(id.clone(), (until, end));
            self.expiries.push_back((until, id.clone()));
        }
    }

    /// Marks `id` in flight; returns the sender its end is announced on.
    fn enter(&mut self, id: &CopyKey) {
        self.in_flight.insert(id.clone(), watch::channel(None).0);
    }
}

/// How a mirror-mode miss proceeds.
pub enum MirrorTicket {
    /// This request leads a new copy and streams its body as it arrives.
    Leader(mpsc::Receiver<MirrorEvent>),
    /// A copy of the key runs (or was started for this request without streaming): its end
    /// arrives here, then the object is served from the bucket.
    Follower(watch::Receiver<Option<FillEnd>>),
    /// The origin said within the negative TTL that the key does not exist.
    NotFound,
}

/// Body chunks buffered for a mirror client before it is let go to catch up from the bucket
/// (16 × the origin's read size, a few MiB at most).
const MIRROR_BUFFER_CHUNKS: usize = 16;
/// How often a copy whose key another node is fetching looks for the object.
const CLAIM_POLL: Duration = Duration::from_millis(200);

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
        let id = CopyKey::new(bucket, key);
        let decision = {
            let mut schedule = self.shared.lock();
            if let Some(blocked) = schedule.blocked(&id, Instant::now()) {
                blocked
            } else if schedule.running < limits.concurrency {
                schedule.running += 1;
                schedule.enter(&id);
                CopyDecision::Started
            } else if schedule.waiting.len() < limits.queue {
                schedule.enter(&id);
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
            }
        };
        match decision {
            CopyDecision::Started => self.spawn(CopyJob {
                id,
                source,
                limits: limits.clone(),
                sink: None,
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

    /// The mirror-mode miss: joins the copy of `key` that runs, or starts one now (a client
    /// is waiting, so it is not queued behind background copies). With `stream`, the request
    /// leads the new copy and gets its body as it arrives; otherwise it waits for the end.
    pub fn start_mirror(
        &self,
        bucket: &Arc<Bucket>,
        key: &ObjectKey,
        source: CopySource,
        limits: &FillSettings,
        stream: bool,
    ) -> MirrorTicket {
        let id = CopyKey::new(bucket, key);
        let (sink, ticket) = {
            let mut schedule = self.shared.lock();
            if let Some(running) = schedule.in_flight.get(&id) {
                return MirrorTicket::Follower(running.subscribe());
            }
            // Only "not found" is remembered for mirror clients; other failures are retried.
            if schedule.recent_failure(&id, Instant::now()) == Some(FillEnd::NotFound) {
                drop(schedule);
                bucket.metrics.count_fill(FillOutcome::NegativeCached);
                return MirrorTicket::NotFound;
            }
            schedule.running += 1;
            schedule.enter(&id);
            if stream {
                let (sink, events) = MirrorSink::channel(MIRROR_BUFFER_CHUNKS);
                (Some(sink), MirrorTicket::Leader(events))
            } else {
                let end = schedule.in_flight.get(&id).map(|tx| tx.subscribe());
                match end {
                    Some(end) => (None, MirrorTicket::Follower(end)),
                    None => return MirrorTicket::NotFound,
                }
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

    /// The connection pool copies use, for other requests to origins (mirror mode's HEAD).
    pub fn connector(&self) -> &Connector {
        &self.shared.connector
    }

    /// The end of the copy of `key` that runs now, if one does.
    pub fn running_copy(
        &self,
        bucket: &Arc<Bucket>,
        key: &ObjectKey,
    ) -> Option<watch::Receiver<Option<FillEnd>>> {
        let id = CopyKey::new(bucket, key);
        self.shared
            .lock()
            .in_flight
            .get(&id)
            .map(|tx| tx.subscribe())
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
                    id: job.id.clone(),
                    limits: job.limits.clone(),
                };
                let end = filler.run(&mut job).await;
                std::mem::forget(guard);
                match filler.finish(&job.id, end, &job.limits) {
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
    ) -> Result<crate::store::FillClaim, FillEnd> {
        let store = &self.shared.store;
        let mut waiting = false;
        loop {
            match store.claim_fill(bucket, &id.key).await {
                Ok(Some(claim)) => {
                    // Committed by another node just before its claim was released.
                    if let Ok(Some(_)) = store.open(bucket, &id.key).await {
                        id.bucket.metrics.count_fill(FillOutcome::StoredElsewhere);
                        return Err(FillEnd::Stored);
                    }
                    return Ok(claim);
                }
                Ok(None) if !waiting => {
                    waiting = true;
                    log::info!(
                        "copy of {:?} in {bucket}: another node is fetching it; waiting for it to land",
                        id.key.as_str()
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn!(
                        "claiming the copy of {:?} in {bucket}: {e}",
                        id.key.as_str()
                    );
                    id.bucket.metrics.count_fill(FillOutcome::StoreError);
                    return Err(FillEnd::StoreFailed);
                }
            }
            tokio::time::sleep(CLAIM_POLL).await;
            if let Ok(Some(_)) = store.open(bucket, &id.key).await {
                id.bucket.metrics.count_fill(FillOutcome::StoredElsewhere);
                return Err(FillEnd::Stored);
            }
        }
    }

    /// Runs one copy; returns how it ended, which a streaming client also learns.
    async fn run(&self, job: &mut CopyJob) -> FillEnd {
        let bucket = job.id.bucket_name();
        // A copy that committed between this key's store lookup and its copy request: the
        // object is there, so the origin is not asked again (a streaming client is let go to
        // read it from the bucket).
        if let Ok(Some(_)) = self.shared.store.open(bucket, &job.id.key).await {
            return FillEnd::Stored;
        }
        let _claim = match self.claim_fill(bucket, &job.id).await {
            Ok(claim) => claim,
            Err(end) => return end,
        };
        // The policy comes from the generation the miss was routed with; origins and their
        // order are chosen now, with health as it is when the copy runs.
        let Some(pull) = &job.id.bucket.pull else {
            return FillEnd::OriginFailed;
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
            &mut job.sink,
        )
        .await;
        let end = FillEnd::of(&result);
        if let Some(mut sink) = job.sink.take() {
            sink.offer(match end {
                FillEnd::Stored => MirrorEvent::End,
                other => MirrorEvent::Failed(other),
            });
        }
        metrics
            .fill_duration
            .observe(started.elapsed().as_secs_f64());
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
        end
    }

    /// Records the end of a copy and hands back the next waiting job, if any, to run in the
    /// same task (keeping `running` unchanged).
    fn finish(&self, id: &CopyKey, end: FillEnd, limits: &FillSettings) -> Option<CopyJob> {
        let mut schedule = self.shared.lock();
        if let Some(waiting_clients) = schedule.in_flight.remove(id) {
            waiting_clients.send_replace(Some(end));
        }
        if end != FillEnd::Stored && limits.negative_ttl_secs > 0 {
            let ttl = Duration::from_secs(limits.negative_ttl_secs);
            schedule.remember_failure(id, end, Instant::now(), ttl);
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
    id: CopyKey,
    limits: FillSettings,
}

impl Drop for FinishGuard<'_> {
    fn drop(&mut self) {
        let next = self
            .filler
            .finish(&self.id, FillEnd::OriginFailed, &self.limits);
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
