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
    }
}

/// A week: longer would keep failed keys from ever being retried in practice.
const MAX_NEGATIVE_TTL_SECS: u64 = 7 * 24 * 3600;
