//! Eviction: keeps the disk store within `store.max_bytes` and `store.min_free_bytes` by
//! deleting the least recently used objects of `retention: cache` buckets, in the background.
//!
//! [`Eviction::run`] looks when a commit passes `max_bytes`, when a reload changes the limits,
//! and every second (free space can fall for reasons of its own). Past a limit it takes victims
//! from the back of the order ([`Capacity`]) until enough bytes are freed, reads each one's key
//! from its file and deletes it through the whole store, as a purge would: the memory tier
//! forgets it and the bucket counts follow. When nothing evictable is left the store is marked
//! over its limit and copies are not started (an alert rule watches the gauge). Every few
//! minutes the order is saved. At start the saved order is loaded in the background, and after
//! a start that was not clean the buckets are walked once to bring it in line with the disk.
//! Nothing here runs on a request's path.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::capacity::{Capacity, StartState};
use crate::metrics::CAPACITY_METRICS;
use crate::{BucketStore, DiskStore};
use originpull_support::log_summary::SummarizedLog;

/// How often free space and the limits are looked at without a commit's wake-up.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How often the hits recorded by requests are applied to the order.
const APPLY_USES_EVERY: Duration = Duration::from_millis(20);
/// How often the order is saved while running (a crash loses at most this much of it).
pub const SAVE_EVERY: Duration = Duration::from_secs(300);

static DELETE_FAILURES: SummarizedLog =
    SummarizedLog::new(log::Level::Warn, module_path!(), "evictions failed");

pub struct Eviction {
    capacity: Arc<Capacity>,
    disk: DiskStore,
    /// The whole store stack the disk store is the bottom of; evictions go through it.
    top: Arc<dyn BucketStore>,
}

/// What one round freed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    pub objects: u64,
    pub bytes: u64,
}

impl Eviction {
    /// `disk` must be the store at the bottom of `top`, built [`DiskStore::with_capacity`].
    pub fn new(disk: DiskStore, top: Arc<dyn BucketStore>) -> Option<Eviction> {
        let capacity = disk.capacity()?.clone();
        Some(Eviction {
            capacity,
            disk,
            top,
        })
    }

    pub fn capacity(&self) -> &Arc<Capacity> {
        &self.capacity
    }

    /// Frees what the limits ask for now (nothing until the saved order is loaded: victims
    /// would be chosen from part of it).
    pub async fn round(&self) -> Freed {
        if !self.capacity.loaded() {
            return Freed::default();
        }
        let capacity = self.capacity.clone();
        let need = match tokio::task::spawn_blocking(move || capacity.bytes_to_free()).await {
            Ok(need) => need,
            Err(_) => return Freed::default(),
        };
        // Victims are taken out of the order at once, then their keys read on one blocking
        // thread and their files deleted: one at a time, with a thread hop each, eviction fell
        // behind a busy mirror (the store ran at two to three times max_bytes).
        let mut victims = Vec::new();
        let mut taken = 0;
        while taken < need {
            let Some(victim) = self.capacity.take_victim() else {
                self.capacity.set_stuck(true);
                break;
            };
            taken += victim.weight;
            victims.push(victim);
        }
        let disk = self.disk.clone();
        let keyed = tokio::task::spawn_blocking(move || {
            victims
                .into_iter()
                .map(|victim| {
                    let key = disk.key_of(&victim.bucket, &victim.hash);
                    if key.is_none() {
                        // Gone already, or not a whole object: whatever is there goes.
                        disk.remove_files(&victim.bucket, &victim.hash);
                    }
                    (victim, key)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut freed = Freed::default();
        for (victim, key) in keyed {
            if let Some(key) = key {
                if let Err(e) = self.top.delete(&victim.bucket, &key).await {
                    DELETE_FAILURES
                        .note(|| format!("bucket {}: {}: {e}", victim.bucket, key.as_str()));
                }
            }
            freed.objects += 1;
            freed.bytes += victim.weight;
            CAPACITY_METRICS
                .evictions
                .with_label_values(&[&victim.bucket])
                .inc();
            CAPACITY_METRICS
                .evicted_bytes
                .with_label_values(&[&victim.bucket])
                .inc_by(victim.weight);
        }
        self.capacity.refresh_gauges();
        freed
    }

    /// Saves the order, off the calling thread; `clean` for a stop.
    pub async fn save(&self, clean: bool) {
        let capacity = self.capacity.clone();
        match tokio::task::spawn_blocking(move || capacity.save(clean)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                log::info!("the eviction order is another process's now (an upgrade): not saved")
            }
            Ok(Err(e)) => log::warn!("cannot save the eviction order: {e}"),
            Err(e) => log::warn!("cannot save the eviction order: {e}"),
        }
    }

    /// Loads the saved order, then walks the buckets to bring it in line with the disk when
    /// the start was not clean (or the saved order could not be read).
    pub async fn load_and_reconcile(&self, start: StartState) {
        let capacity = self.capacity.clone();
        let started = std::time::Instant::now();
        let start = tokio::task::spawn_blocking(move || capacity.load_saved(start))
            .await
            .unwrap_or(StartState::NeedsReconcile);
        log::debug!(
            "eviction order loaded in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        if start == StartState::Clean {
            return;
        }
        let disk = self.disk.clone();
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || disk.reconcile_capacity()).await {
            Ok(Ok((admitted, dropped))) => log::info!(
                "eviction order brought in line with the disk in {:.1} s: {admitted} objects \
                 added, {dropped} gone dropped; {} objects, {} bytes",
                started.elapsed().as_secs_f64(),
                self.capacity.entries(),
                self.capacity.bytes()
            ),
            Ok(Err(e)) => log::warn!("cannot walk the buckets for the eviction order: {e}"),
            Err(e) => log::warn!("cannot walk the buckets for the eviction order: {e}"),
        }
    }

    /// Keeps the limits until `stopping` resolves: rounds when woken or every second, a save
    /// every [`SAVE_EVERY`]. (The save at a stop is the caller's, once serving has ended.)
    pub async fn run(&self, start: StartState, stopping: impl Future<Output = ()>) {
        tokio::pin!(stopping);
        let reconcile = self.load_and_reconcile(start);
        tokio::pin!(reconcile);
        let mut reconciled = false;
        let mut save = tokio::time::interval(SAVE_EVERY);
        save.tick().await;
        let mut apply = tokio::time::interval(APPLY_USES_EVERY);
        let mut look = tokio::time::interval(LOOK_EVERY);
        loop {
            tokio::select! {
                _ = &mut stopping => return,
                _ = &mut reconcile, if !reconciled => {
                    reconciled = true;
                    continue;
                }
                _ = save.tick() => {
                    self.save(false).await;
                    continue;
                }
                _ = apply.tick() => {
                    let capacity = self.capacity.clone();
                    let _ = tokio::task::spawn_blocking(move || capacity.apply_uses()).await;
                    continue;
                }
                _ = self.capacity.woken() => {}
                _ = look.tick() => {}
            }
            let freed = self.round().await;
            if freed.objects > 0 {
                log::debug!("evicted {} objects, {} bytes", freed.objects, freed.bytes);
            }
        }
    }
}
