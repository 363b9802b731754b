//! `fill:`: limits for the background copies from origins.

use super::errors::Errors;
use super::section::Section;

/// Limits for the background copies from origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillSettings {
    pub concurrency: usize,
    pub queue: usize,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub max_object_bytes: u64,
    pub negative_ttl_secs: u64,
    /// Consecutive failed copies (unreachable, TLS, timeout, 5xx) that mark an origin down.
    pub origin_down_after_failures: u32,
    /// How long a down origin is skipped before it is tried again.
    pub origin_cool_off_secs: u64,
    /// Interval of the TCP connect probe of each origin in use; 0 turns probes off.
    pub origin_probe_interval_ms: u64,
    /// Copies to one origin at once (guardrail).
    pub per_origin_concurrency: usize,
    /// Copies started per second per origin; 0: no cap.
    pub per_origin_rate: u64,
    /// Consecutive failed copies from one origin that open its breaker.
    pub breaker_failures: u32,
    /// How long an open breaker pauses copies to its origin.
    pub breaker_secs: u64,
}

impl Default for FillSettings {
    fn default() -> Self {
        FillSettings {
            concurrency: 32,
            queue: 10_000,
            connect_timeout_ms: 2_000,
            read_timeout_ms: 15_000,
            max_object_bytes: 5 * 1024 * 1024 * 1024,
            negative_ttl_secs: 30,
            origin_down_after_failures: 3,
            origin_cool_off_secs: 10,
            origin_probe_interval_ms: 1_000,
            per_origin_concurrency: 8,
            per_origin_rate: 0,
            breaker_failures: 20,
            breaker_secs: 30,
        }
    }
}

const FILL_KEYS: &[&str] = &[
    "concurrency",
    "queue",
    "connect_timeout_ms",
    "read_timeout_ms",
    "max_object_bytes",
    "negative_ttl_secs",
    "origin_down_after_failures",
    "origin_cool_off_secs",
    "origin_probe_interval_ms",
    "per_origin_concurrency",
    "per_origin_rate",
    "breaker_failures",
    "breaker_secs",
];

pub(crate) fn parse_fill(top: &Section<'_>, errors: &mut Errors) -> FillSettings {
    let d = FillSettings::default();
    let Some(fill) = top.nested("fill", FILL_KEYS, "fill.", errors) else {
        return d;
    };
    FillSettings {
        concurrency: fill.positive("concurrency", d.concurrency as u64, errors) as usize,
        queue: fill
            .typed::<u64>("queue", errors)
            .map_or(d.queue, |q| q as usize),
        connect_timeout_ms: fill.positive("connect_timeout_ms", d.connect_timeout_ms, errors),
        read_timeout_ms: fill.positive("read_timeout_ms", d.read_timeout_ms, errors),
        max_object_bytes: fill.positive("max_object_bytes", d.max_object_bytes, errors),
        negative_ttl_secs: fill
            .at_most("negative_ttl_secs", MAX_NEGATIVE_TTL_SECS, errors)
            .unwrap_or(d.negative_ttl_secs),
        origin_down_after_failures: fill
            .positive(
                "origin_down_after_failures",
                d.origin_down_after_failures.into(),
                errors,
            )
            .min(u32::MAX.into()) as u32,
        origin_cool_off_secs: fill
            .at_most("origin_cool_off_secs", MAX_COOL_OFF_SECS, errors)
            .unwrap_or(d.origin_cool_off_secs),
        origin_probe_interval_ms: fill
            .typed::<u64>("origin_probe_interval_ms", errors)
            .map_or(d.origin_probe_interval_ms, |ms| {
                if ms > 0 && ms < MIN_PROBE_INTERVAL_MS {
                    errors.push(
                        &fill.scope,
                        "fill.origin_probe_interval_ms",
                        format!("must be 0 (off) or at least {MIN_PROBE_INTERVAL_MS}"),
                    );
                }
                ms
            }),
        per_origin_concurrency: fill.positive(
            "per_origin_concurrency",
            d.per_origin_concurrency as u64,
            errors,
        ) as usize,
        per_origin_rate: fill
            .typed::<u64>("per_origin_rate", errors)
            .unwrap_or(d.per_origin_rate),
        breaker_failures: fill
            .positive("breaker_failures", d.breaker_failures.into(), errors)
            .min(u32::MAX.into()) as u32,
        breaker_secs: fill
            .at_most("breaker_secs", MAX_COOL_OFF_SECS, errors)
            .unwrap_or(d.breaker_secs),
    }
}

/// A week: longer would keep failed keys from ever being retried in practice.
const MAX_NEGATIVE_TTL_SECS: u64 = 7 * 24 * 3600;

/// An hour: a longer cool-off would hide an origin that came back.
const MAX_COOL_OFF_SECS: u64 = 3600;
/// Probing more often than this would be a load on the origin, not a health check.
const MIN_PROBE_INTERVAL_MS: u64 = 100;
