//! The live configuration and its hot reload.
//!
//! Requests read one immutable generation ([`LiveConfig`]) through an `ArcSwap`; a reload
//! validates the whole new file first and then swaps in a new generation, so requests in flight
//! finish with the old one and no request ever sees half a change. Reloads are triggered by
//! SIGHUP and by changes to the file, watched through its directory so that an editor's
//! write-to-temp-then-rename is seen too. Listeners, `data_dir`, `server`, `memory_cache` and
//! `access_log` are fixed at start: a reload that changes them warns and keeps the running
//! values.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use signal_hook::iterator::Signals;

use crate::live::bucket::Routes;
use crate::metrics::METRICS;
use originpull_config::{Config, ConfigErrors};

/// File events closer together than this are one reload (editors write in several steps).
const SETTLE: Duration = Duration::from_millis(100);

/// One configuration generation and the routing table built from it.
pub struct LiveConfig {
    pub config: Config,
    pub routes: Routes,
}

impl LiveConfig {
    /// Builds the generation; fails when a file the configuration names cannot be used.
    pub fn new(config: Config) -> Result<LiveConfig, ConfigErrors> {
        Ok(LiveConfig {
            routes: Routes::new(&config)?,
            config,
        })
    }
}

#[derive(Clone)]
pub struct ConfigHandle {
    live: Arc<ArcSwap<LiveConfig>>,
    path: Arc<PathBuf>,
    /// Relative paths in the file are resolved against this directory, the working directory
    /// at start, also on reloads (daemon mode changes the working directory to `/`).
    base_dir: Arc<PathBuf>,
}

impl ConfigHandle {
    /// `live` must have been built from a configuration whose relative paths were resolved
    /// against `base_dir`.
    pub fn new(live: LiveConfig, path: &Path, base_dir: &Path) -> ConfigHandle {
        ConfigHandle {
            live: Arc::new(ArcSwap::from_pointee(live)),
            path: Arc::new(base_dir.join(path)),
            base_dir: Arc::new(base_dir.to_path_buf()),
        }
    }

    pub fn current(&self) -> Arc<LiveConfig> {
        self.live.load_full()
    }

    /// The running generation, for one request: unlike [`ConfigHandle::current`] it does not
    /// touch the generation's reference count, which every worker thread would otherwise write
    /// twice per request.
    pub fn for_request(&self) -> arc_swap::Guard<Arc<LiveConfig>> {
        self.live.load()
    }

    /// Re-reads the file; on any error the running configuration stays and the error is logged
    /// and counted.
    pub fn reload(&self) -> bool {
        let built = Config::load(&self.path).and_then(|mut new| {
            new.resolve_relative_paths(&self.base_dir);
            let running = self.current();
            let restart_only = new.keep_restart_only_settings(&running.config);
            let changed = new != running.config;
            Ok((LiveConfig::new(new)?, restart_only, changed))
        });
        match built {
            Err(errors) => {
                for e in &errors.0 {
                    log::error!("config reload rejected, keeping the running configuration: {e}");
                }
                METRICS.config_reloads.with_label_values(&["error"]).inc();
                METRICS.config_last_reload_successful.set(0.0);
                false
            }
            Ok((live, restart_only, changed)) => {
                for field in restart_only {
                    log::warn!(
                        "config reload: `{field}` changed; it takes effect only after a restart"
                    );
                }
                self.live.store(Arc::new(live));
                METRICS.config_reloads.with_label_values(&["ok"]).inc();
                METRICS.config_last_reload_successful.set(1.0);
                log::info!(
                    "config reloaded from {}{}",
                    self.path.display(),
                    if changed { "" } else { " (no changes)" }
                );
                true
            }
        }
    }

    /// Starts the SIGHUP (when `sighup` is registered) and file watchers on their own threads;
    /// they run for the process's life. Called from [`ReloadWatcher`], after Pingora has
    /// daemonized (threads do not survive a fork).
    pub fn watch(&self, sighup: Option<Signals>) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();

        if let Some(mut signals) = sighup {
            let sighup_tx = tx.clone();
            std::thread::Builder::new()
                .name("originpull-sighup".into())
                .spawn(move || {
                    for _ in signals.forever() {
                        log::info!("SIGHUP: reloading configuration");
                        let _ = sighup_tx.send(());
                    }
                })?;
        }

        let file = self.path.clone();
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = file.file_name().map(|n| n.to_os_string());
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if event.kind.is_access() {
                    return;
                }
                let touches_file = event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name);
                if touches_file {
                    let _ = tx.send(());
                }
            })
            .map_err(std::io::Error::other)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(std::io::Error::other)?;

        let handle = self.clone();
        std::thread::Builder::new()
            .name("originpull-reload".into())
            .spawn(move || {
                // The watcher lives as long as this thread, which lives as long as the process.
                let _watcher = watcher;
                while rx.recv().is_ok() {
                    std::thread::sleep(SETTLE);
                    while rx.try_recv().is_ok() {}
                    handle.reload();
                }
            })?;
        Ok(())
    }
}

/// Pingora background service that starts the reload watchers once the server runs.
pub struct ReloadWatcher {
    handle: ConfigHandle,
    sighup: Mutex<Option<Signals>>,
}

impl ReloadWatcher {
    /// Takes SIGHUP over at once, before the server starts: a SIGHUP arriving before the
    /// watchers run then waits for them instead of ending the process (its default action).
    pub fn new(handle: ConfigHandle) -> ReloadWatcher {
        let sighup = match Signals::new([signal_hook::consts::SIGHUP]) {
            Ok(signals) => Some(signals),
            Err(e) => {
                log::error!("cannot handle SIGHUP ({e}); only file changes will reload");
                None
            }
        };
        ReloadWatcher {
            handle,
            sighup: Mutex::new(sighup),
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ReloadWatcher {
    /// Ready once the watchers run: the listeners wait for this (see `server`), so a file
    /// edited as soon as the server accepts connections is seen.
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: pingora::server::ShutdownWatch,
        ready: pingora::services::ServiceReadyNotifier,
    ) {
        let sighup = self
            .sighup
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Err(e) = self.handle.watch(sighup) {
            log::error!(
                "cannot watch {} for reloads ({e}); SIGHUP and file changes will not reload it",
                self.handle.path.display()
            );
        }
        ready.notify_ready();
        // The watchers run on their own threads; this service lives until shutdown so the
        // log does not report it as exited.
        let _ = shutdown.changed().await;
    }
}
