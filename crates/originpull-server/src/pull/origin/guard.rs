//! Guardrails that protect an origin from its own migration: at most
//! `fill.per_origin_concurrency` copies to it at once, at most `fill.per_origin_rate` started per
//! second, and a breaker that pauses copies to it for `fill.breaker_secs` after
//! `fill.breaker_failures` consecutive failed copies (misses are still redirected meanwhile;
//! a copy with another origin to try passes it over).
//!
//! Every copy, whether a miss's, a prefetch job's or a revalidation, passes [`OriginGuard::admit`]
//! before it talks to an origin. Like [`super::health`], a guard belongs to the origin (bucket +
//! `scheme://authority`), not to a configuration generation, so a reload keeps its state; the
//! limits are read from the configuration of each copy.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::sync::Notify;

use crate::metrics::METRICS;
use originpull_config::FillSettings;

#[derive(Default)]
struct GuardState {
    in_flight: usize,
    /// When the next copy may start under the rate cap.
    next_start: Option<Instant>,
    consecutive_failures: u32,
    /// Until when the breaker is open.
    open_until: Option<Instant>,
}

/// One origin's guardrails.
pub struct OriginGuard {
    state: Mutex<GuardState>,
    /// Woken when a copy ends, so a waiting one can take its place.
    slot_freed: Notify,
    breaker_gauge: IntGauge,
}

/// A copy's place among the origin's `per_origin_concurrency`; given back when dropped.
pub struct GuardPermit {
    guard: Arc<OriginGuard>,
}

impl Drop for GuardPermit {
    fn drop(&mut self) {
        self.guard.lock().in_flight -= 1;
        self.guard.slot_freed.notify_one();
    }
}

impl OriginGuard {
    fn lock(&self) -> MutexGuard<'_, GuardState> {
        // Every update is one step: a panicked holder leaves a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the breaker is open now.
    pub fn is_open(&self) -> bool {
        self.lock()
            .open_until
            .is_some_and(|until| until > Instant::now())
    }

    /// Waits until a copy may start: the breaker closed, a concurrency slot free, and the rate
    /// cap's next start reached.
    pub async fn admit(self: &Arc<Self>, limits: &FillSettings) -> GuardPermit {
        loop {
            let open_until = self.lock().open_until;
            match open_until {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until.into()).await;
                }
                _ => break,
            }
        }
        loop {
            // Registered before checking, so a slot freed in between is not missed.
            let freed = self.slot_freed.notified();
            {
                let mut state = self.lock();
                if state.in_flight < limits.per_origin_concurrency {
                    state.in_flight += 1;
                    break;
                }
            }
            freed.await;
        }
        let permit = GuardPermit {
            guard: self.clone(),
        };
        if limits.per_origin_rate > 0 {
            let interval = Duration::from_secs(1) / limits.per_origin_rate.min(1_000_000) as u32;
            let start = {
                let mut state = self.lock();
                let now = Instant::now();
                let start = state.next_start.map_or(now, |next| next.max(now));
                state.next_start = Some(start + interval);
                start
            };
            tokio::time::sleep_until(start.into()).await;
        }
        permit
    }

    /// Records how a copy from the origin ended; `failed` only for failures that say the origin
    /// is unwell (unreachable, timeout, 5xx), not for an answer about one object (404).
    pub fn record(self: &Arc<Self>, failed: bool, limits: &FillSettings, label: &str) {
        let mut state = self.lock();
        if !failed {
            state.consecutive_failures = 0;
            if state.open_until.take().is_some() {
                self.breaker_gauge.set(0);
            }
            return;
        }
        state.consecutive_failures += 1;
        if state.consecutive_failures < limits.breaker_failures {
            return;
        }
        let pause = Duration::from_secs(limits.breaker_secs);
        let was_open = state.open_until.is_some_and(|until| until > Instant::now());
        state.open_until = Some(Instant::now() + pause);
        state.consecutive_failures = 0;
        self.breaker_gauge.set(1);
        if !was_open {
            log::warn!(
                "origin {label}: breaker open after {} failed copies; copies to it pause for {pause:?}",
                limits.breaker_failures
            );
        }
        // The gauge closes on time even if no copy comes to close it.
        let guard = self.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(pause).await;
                if !guard.is_open() {
                    guard.breaker_gauge.set(0);
                }
            });
        }
    }
}

/// (bucket, `scheme://authority`).
type OriginId = (String, String);

/// Guards live for the process: a handful per origin ever configured.
static REGISTRY: LazyLock<Mutex<HashMap<OriginId, Arc<OriginGuard>>>> =
    LazyLock::new(Default::default);

/// The guard of `origin` (a `scheme://authority`) in `bucket`.
pub fn guard_of(bucket: &str, origin: &str) -> Arc<OriginGuard> {
    let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    registry
        .entry((bucket.to_string(), origin.to_string()))
        .or_insert_with(|| {
            let breaker_gauge = METRICS
                .origin_breaker_open
                .with_label_values(&[bucket, origin]);
            breaker_gauge.set(0);
            Arc::new(OriginGuard {
                state: Mutex::default(),
                slot_freed: Notify::new(),
                breaker_gauge,
            })
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(concurrency: usize, failures: u32) -> FillSettings {
        FillSettings {
            per_origin_concurrency: concurrency,
            breaker_failures: failures,
            breaker_secs: 60,
            ..FillSettings::default()
        }
    }

    #[tokio::test]
    async fn a_slot_is_given_back_when_the_permit_drops() {
        let guard = guard_of("guard-test-1", "http://a.example");
        let limits = limits(1, 5);
        let first = guard.admit(&limits).await;
        let second = tokio::time::timeout(Duration::from_millis(50), guard.admit(&limits)).await;
        assert!(second.is_err(), "a second copy waits for the first");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), guard.admit(&limits)).await;
        assert!(third.is_ok());
    }

    #[tokio::test]
    async fn the_breaker_opens_after_consecutive_failures_and_a_success_closes_it() {
        let guard = guard_of("guard-test-2", "http://a.example");
        let limits = limits(4, 3);
        guard.record(true, &limits, "a");
        guard.record(true, &limits, "a");
        guard.record(false, &limits, "a");
        guard.record(true, &limits, "a");
        guard.record(true, &limits, "a");
        assert!(!guard.is_open(), "a success resets the count");
        guard.record(true, &limits, "a");
        assert!(guard.is_open());
        guard.record(false, &limits, "a");
        assert!(!guard.is_open());
    }
}
