//! Active health checks: every `fill.origin_probe_interval_ms`, each origin that is in use gets
//! a TCP connect. One that cannot be reached counts a failure, as a failed copy does, so a
//! primary that starts refusing connections is marked down within a few intervals even when no
//! copy is running; redirects then point at a backup. An origin past its cool-off that accepts
//! again is marked up. Only connecting is checked (cheap for the origin, and what failover
//! needs); 5xx and TLS failures are seen by copies.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::task::JoinSet;

use crate::live::reload::ConfigHandle;
use crate::pull::origin::Origin;
use originpull_config::{FillSettings, OriginHost};

/// The background service that probes the origins of the live configuration.
pub struct OriginProbes(pub ConfigHandle);

/// How often a configuration with probes off is looked at again (a reload may turn them on).
const IDLE_CHECK: Duration = Duration::from_secs(1);

#[async_trait::async_trait]
impl BackgroundService for OriginProbes {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let live = self.0.current();
            let limits = live.config.fill.clone();
            let wait = match limits.origin_probe_interval_ms {
                0 => IDLE_CHECK,
                ms => {
                    probe_all(
                        live.routes
                            .buckets()
                            .filter_map(|b| b.pull.as_ref())
                            .flat_map(|p| p.origins()),
                        &limits,
                    )
                    .await;
                    Duration::from_millis(ms)
                }
            };
            drop(live);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Probes each distinct origin once, all at the same time.
async fn probe_all<'a>(origins: impl Iterator<Item = &'a Arc<Origin>>, limits: &FillSettings) {
    let mut probes = JoinSet::new();
    {
        // An origin listed by a bucket and one of its rules is probed once.
        let mut seen = HashSet::new();
        for origin in origins {
            if seen.insert(Arc::as_ptr(origin) as usize) {
                probes.spawn(probe(origin.clone(), limits.clone()));
            }
        }
    }
    while probes.join_next().await.is_some() {}
}

async fn probe(origin: Arc<Origin>, limits: FillSettings) {
    let timeout = Duration::from_millis(limits.connect_timeout_ms);
    let reachable = tokio::time::timeout(timeout, connect(&origin)).await;
    if matches!(reachable, Ok(Ok(()))) {
        origin.health.record_probe_success();
    } else if origin.health.is_up() {
        origin.health.record_failure(
            limits.origin_down_after_failures,
            Duration::from_secs(limits.origin_cool_off_secs),
        );
    }
}

async fn connect(origin: &Origin) -> std::io::Result<()> {
    let addr = origin.addr();
    let target: SocketAddr = match &addr.host {
        OriginHost::Ipv4(ip) => SocketAddr::from((*ip, addr.port)),
        OriginHost::Ipv6(ip) => SocketAddr::from((*ip, addr.port)),
        OriginHost::Domain(name) => tokio::net::lookup_host((name.as_str(), addr.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{name} has no addresses")))?,
    };
    tokio::net::TcpStream::connect(target).await.map(drop)
}
