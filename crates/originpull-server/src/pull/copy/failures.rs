//! The keys whose copies fail, per bucket: how often and the last reason, for the admin API's
//! progress ("which keys fail most"). A stored copy forgets its key. Bounded: past
//! [`MAX_KEYS_PER_BUCKET`] keys, new failing keys are counted only in the totals.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// Enough to find the worst offenders of a migration without growing with a bad crawl.
const MAX_KEYS_PER_BUCKET: usize = 10_000;

/// One failing key as the progress endpoint lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailingKey {
    pub key: String,
    pub last_reason: String,
    pub count: u64,
}

#[derive(Default)]
struct BucketFailures {
    keys: HashMap<String, (String, u64)>,
}

static FAILURES: LazyLock<Mutex<HashMap<String, BucketFailures>>> = LazyLock::new(Default::default);

fn with_bucket<T>(bucket: &str, f: impl FnOnce(&mut BucketFailures) -> T) -> T {
    let mut all = FAILURES.lock().unwrap_or_else(|p| p.into_inner());
    f(all.entry(bucket.to_string()).or_default())
}

pub fn record_failure(bucket: &str, key: &str, reason: &str) {
    with_bucket(bucket, |b| {
        if let Some((last, count)) = b.keys.get_mut(key) {
            *last = reason.to_string();
            *count += 1;
        } else if b.keys.len() < MAX_KEYS_PER_BUCKET {
            b.keys.insert(key.to_string(), (reason.to_string(), 1));
        }
    });
}

pub fn record_success(bucket: &str, key: &str) {
    with_bucket(bucket, |b| b.keys.remove(key));
}

/// The `limit` keys of `bucket` that failed most, most first.
pub fn top_failing(bucket: &str, limit: usize) -> Vec<FailingKey> {
    with_bucket(bucket, |b| {
        let mut keys: Vec<FailingKey> = b
            .keys
            .iter()
            .map(|(key, (reason, count))| FailingKey {
                key: key.clone(),
                last_reason: reason.clone(),
                count: *count,
            })
            .collect();
        keys.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        keys.truncate(limit);
        keys
    })
}
