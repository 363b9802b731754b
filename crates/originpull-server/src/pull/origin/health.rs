//! Origin health as copies see it: an origin is marked down after consecutive failures
//! (connection or TLS errors, timeouts, 5xx; `fill.origin_down_after_failures`) and is tried
//! again after a cool-off (`fill.origin_cool_off_secs`); any success marks it up. Health belongs to the origin, not to a configuration generation: a reload that
//! keeps an origin keeps its state, through one registry keyed by bucket and origin.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use crate::metrics::METRICS;
use originpull_support::clock::coarse_now;

/// The process's start, so instants fit in an atomic as milliseconds.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    coarse_now().saturating_duration_since(*EPOCH).as_millis() as u64
}

/// One origin's health; shared by every generation that lists the origin.
pub struct OriginHealth {
    consecutive_failures: AtomicU32,
    /// Milliseconds since [`EPOCH`] until which the origin is down; 0 when up.
    down_until_ms: AtomicU64,
    up_gauge: IntGauge,
    bucket: String,
    origin: String,
}

impl OriginHealth {
    /// Whether copies and redirects should use the origin now.
    pub fn is_up(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.down_until_ms.swap(0, Ordering::Relaxed) != 0 {
            log::info!(
                "origin {} of bucket {} is up again",
                self.origin,
                self.bucket
            );
        }
        self.up_gauge.set(1);
    }

    /// An active probe reached the origin: that ends a cool-off already over (the origin is
    /// reachable again) but leaves an origin in its cool-off, or failing copies, alone.
    pub fn record_probe_success(&self) {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        if until != 0 && now_ms() >= until {
            self.record_success();
        }
    }

    /// Counts a failed copy (or probe); the `down_after`-th in a row marks the origin down for `cool_off`
    /// (and so does each further one, after the cool-off lets a copy try it again).
    pub fn record_failure(&self, down_after: u32, cool_off: Duration) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= down_after {
            // At least 1: 0 means up.
            let until = (now_ms() + cool_off.as_millis() as u64).max(1);
            if self.down_until_ms.swap(until, Ordering::Relaxed) == 0 {
                log::warn!(
                    "origin {} of bucket {} marked down after {failures} failed copies; tried again in {cool_off:?}",
                    self.origin,
                    self.bucket
                );
            }
            self.up_gauge.set(0);
        }
    }
}

impl Drop for OriginHealth {
    fn drop(&mut self) {
        // The origin left the configuration: its series goes with it.
        let _ = METRICS
            .origin_up
            .remove_label_values(&[&self.bucket, &self.origin]);
    }
}

/// (bucket, `scheme://authority`).
type OriginId = (String, String);

/// Live health entries; an entry dies with the last generation that uses its origin.
static REGISTRY: LazyLock<Mutex<HashMap<OriginId, Weak<OriginHealth>>>> =
    LazyLock::new(Default::default);

/// The health of `origin` (a `scheme://authority`) in `bucket`, shared with earlier generations.
pub fn health_of(bucket: &str, origin: &str) -> Arc<OriginHealth> {
    let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    registry.retain(|_, weak| weak.strong_count() > 0);
    let id = (bucket.to_string(), origin.to_string());
    if let Some(live) = registry.get(&id).and_then(Weak::upgrade) {
        return live;
    }
    let up_gauge = METRICS.origin_up.with_label_values(&[bucket, origin]);
    up_gauge.set(1);
    let health = Arc::new(OriginHealth {
        consecutive_failures: AtomicU32::new(0),
        down_until_ms: AtomicU64::new(0),
        up_gauge,
        bucket: bucket.to_string(),
        origin: origin.to_string(),
    });
    registry.insert(id, Arc::downgrade(&health));
    health
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL_OFF: Duration = Duration::from_secs(60);

    #[test]
    fn down_after_consecutive_failures_up_after_a_success() {
        let health = health_of("health-test-1", "http://a.example");
        for _ in 1..3 {
            health.record_failure(3, COOL_OFF);
            assert!(health.is_up());
        }
        health.record_failure(3, COOL_OFF);
        assert!(!health.is_up());
        health.record_success();
        assert!(health.is_up());
    }

    #[test]
    fn a_success_resets_the_count() {
        let health = health_of("health-test-2", "http://a.example");
        for _ in 1..3 {
            health.record_failure(3, COOL_OFF);
        }
        health.record_success();
        health.record_failure(3, COOL_OFF);
        assert!(health.is_up());
    }

    #[test]
    fn back_after_the_cool_off() {
        let health = health_of("health-test-4", "http://a.example");
        health.record_failure(1, Duration::from_millis(30));
        assert!(!health.is_up());
        std::thread::sleep(Duration::from_millis(60));
        assert!(health.is_up());
    }

    #[test]
    fn generations_share_one_state() {
        let first = health_of("health-test-3", "http://a.example");
        let second = health_of("health-test-3", "http://a.example");
        assert!(Arc::ptr_eq(&first, &second));
        let other = health_of("health-test-3", "https://a.example");
        assert!(!Arc::ptr_eq(&first, &other));
    }
}
