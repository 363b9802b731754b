//! The disk store's limits as the configuration in force sets them: `store.max_bytes`,
//! `store.min_free_bytes` and which buckets are `retention: cache`, applied on every reload, and
//! the background service that keeps them ([`Eviction`]: evictions, the periodic save, the walk
//! after a start that was not clean). The save at a graceful stop is made once serving ends
//! (`server.rs`).

use std::sync::Arc;

use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::reload::{Commit, GenerationPart};
use originpull_config::{Config, ConfigErrors, Retention};
use originpull_store::capacity::{Capacity, StartState};
use originpull_store::eviction::Eviction;

/// Applies each generation's limits and cache buckets to the store's [`Capacity`].
pub struct CapacityPolicy(pub Arc<Capacity>);

impl CapacityPolicy {
    pub fn apply(capacity: &Capacity, config: &Config) {
        capacity.set_policy(config.capacity, cache_buckets(config));
    }
}

fn cache_buckets(config: &Config) -> impl Iterator<Item = &str> {
    config
        .buckets
        .iter()
        .filter(|bucket| bucket.retention == Retention::Cache)
        .map(|bucket| bucket.name.as_str())
}

impl GenerationPart for CapacityPolicy {
    fn prepare(&self, config: &Config) -> Result<Commit, ConfigErrors> {
        let capacity = self.0.clone();
        let limits = config.capacity;
        let buckets: Vec<String> = cache_buckets(config).map(str::to_string).collect();
        Ok(Box::new(move || {
            capacity.set_policy(limits, buckets.iter().map(String::as_str))
        }))
    }
}

/// Runs [`Eviction`] until the server stops.
pub struct EvictionService {
    pub eviction: Arc<Eviction>,
    pub start: StartState,
}

#[async_trait::async_trait]
impl BackgroundService for EvictionService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let stopping = async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        };
        self.eviction.run(self.start, stopping).await;
    }
}
