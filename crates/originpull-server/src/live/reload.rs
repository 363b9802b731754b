//! The live configuration and its hot reload.
//!
//! Requests read one immutable generation ([`LiveConfig`]) through an `ArcSwap`; a reload
//! validates the whole new file first and then swaps in a new generation, so requests in flight
//! finish with the old one and no request ever sees half a change. Reloads are triggered by
//! SIGHUP and by changes to the file, watched through its directory so that an editor's
//! write-to-temp-then-rename is seen too. Listeners, `data_dir`, `server`, `memory_cache` and
//! `access_log` are fixed at start: a reload that changes them warns and keeps the running
//! values.
//!
//! What a generation needs beside its routes and that a layer above keeps (the HTTPS
//! certificates, read and checked by `edge::tls`) joins in as a [`GenerationPart`]: it reads its
//! share of each new configuration, can refuse it like a validation error, and is swapped in
//! with it. Its files are watched too (a certificate rewritten in place or replaced by rename,
//! as certbot's symlinks and cert-manager do): a change to one reloads the configuration.

use std::collections::BTreeSet;
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

/// A share of each configuration generation kept outside [`LiveConfig`], by a layer above this
/// one (see the module documentation).
pub trait GenerationPart: Send + Sync {
    /// Reads and checks this part of `config`; an error refuses the whole generation (a reload
    /// then keeps the running one). The [`Commit`] swaps it in once the generation is accepted.
    fn prepare(&self, config: &Config) -> Result<Commit, ConfigErrors>;

    /// The files this part reads from `config`: a change to one reloads the configuration.
    fn files(&self, _config: &Config) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Whether those files hold something else than the last commit read (or cannot be read).
    fn files_changed(&self) -> bool {
        false
    }
}

/// Swaps a prepared [`GenerationPart`] in.
pub type Commit = Box<dyn FnOnce() + Send>;

/// Prepares every part for `config`, with the errors of all of them; commits nothing.
fn prepare_parts(
    parts: &[Arc<dyn GenerationPart>],
    config: &Config,
) -> Result<Vec<Commit>, ConfigErrors> {
    let mut commits = Vec::new();
    let mut errors = Vec::new();
    for part in parts {
        match part.prepare(config) {
            Ok(commit) => commits.push(commit),
            Err(ConfigErrors(found)) => errors.extend(found),
        }
    }
    if errors.is_empty() {
        Ok(commits)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The generation of `config`, and its parts prepared; the errors of all of them.
fn build(
    config: Config,
    parts: &[Arc<dyn GenerationPart>],
) -> Result<(LiveConfig, Vec<Commit>), ConfigErrors> {
    let prepared = prepare_parts(parts, &config);
    match (LiveConfig::new(config), prepared) {
        (Ok(live), Ok(commits)) => Ok((live, commits)),
        (Err(ConfigErrors(mut first)), Err(ConfigErrors(second))) => {
            first.extend(second);
            Err(ConfigErrors(first))
        }
        (Err(errors), _) | (_, Err(errors)) => Err(errors),
    }
}

/// Checks `config` as a generation with `parts` would be built from it, committing nothing
/// (`originpull -t`).
pub fn check(config: Config, parts: &[Arc<dyn GenerationPart>]) -> Result<(), ConfigErrors> {
    build(config, parts).map(|_| ())
}

#[derive(Clone)]
pub struct ConfigHandle {
    live: Arc<ArcSwap<LiveConfig>>,
    path: Arc<PathBuf>,
    /// Relative paths in the file are resolved against this directory, the working directory
    /// at start, also on reloads (daemon mode changes the working directory to `/`).
    base_dir: Arc<PathBuf>,
    /// Built, checked and swapped with every generation.
    parts: Arc<[Arc<dyn GenerationPart>]>,
}

impl ConfigHandle {
    /// The first generation, built from `config` (its relative paths resolved against
    /// `base_dir`) with `parts`, which are committed.
    pub fn start(
        config: Config,
        path: &Path,
        base_dir: &Path,
        parts: Vec<Arc<dyn GenerationPart>>,
    ) -> Result<ConfigHandle, ConfigErrors> {
        let (live, commits) = build(config, &parts)?;
        for commit in commits {
            commit();
        }
        Ok(ConfigHandle {
            live: Arc::new(ArcSwap::from_pointee(live)),
            path: Arc::new(base_dir.join(path)),
            base_dir: Arc::new(base_dir.to_path_buf()),
            parts: parts.into(),
        })
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
            let (live, commits) = build(new, &self.parts)?;
            Ok((live, commits, restart_only, changed))
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
            Ok((live, commits, restart_only, changed)) => {
                for field in restart_only {
                    log::warn!(
                        "config reload: `{field}` changed; it takes effect only after a restart"
                    );
                }
                self.live.store(Arc::new(live));
                for commit in commits {
                    commit();
                }
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
        let (tx, rx) = std::sync::mpsc::channel::<Trigger>();

        if let Some(mut signals) = sighup {
            let sighup_tx = tx.clone();
            std::thread::Builder::new()
                .name("originpull-sighup".into())
                .spawn(move || {
                    for _ in signals.forever() {
                        log::info!("SIGHUP: reloading configuration");
                        let _ = sighup_tx.send(Trigger::File);
                    }
                })?;
        }

        let file = self.path.clone();
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = file.file_name().map(|n| n.to_os_string());
        // The directories of the parts' files: a file rewritten in place or replaced by
        // rename changes an entry there.
        let part_dirs: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let event_dirs = part_dirs.clone();
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
                    let _ = tx.send(Trigger::File);
                    return;
                }
                let dirs = event_dirs.lock().unwrap_or_else(|e| e.into_inner());
                if event
                    .paths
                    .iter()
                    .any(|p| p.parent().is_some_and(|d| dirs.contains(d)))
                {
                    let _ = tx.send(Trigger::PartFiles);
                }
            })
            .map_err(std::io::Error::other)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(std::io::Error::other)?;
        self.watch_part_dirs(&mut watcher, &part_dirs, &dir);

        let handle = self.clone();
        std::thread::Builder::new()
            .name("originpull-reload".into())
            .spawn(move || {
                // The watcher lives as long as this thread, which lives as long as the process.
                let mut watcher = watcher;
                while let Ok(first) = rx.recv() {
                    std::thread::sleep(SETTLE);
                    let mut file_changed = first == Trigger::File;
                    while let Ok(more) = rx.try_recv() {
                        file_changed |= more == Trigger::File;
                    }
                    // Other files in a part's directory come and go: only a change of the
                    // part's own files reloads.
                    if file_changed || handle.parts.iter().any(|part| part.files_changed()) {
                        handle.reload();
                        handle.watch_part_dirs(&mut watcher, &part_dirs, &dir);
                    }
                }
            })?;
        Ok(())
    }

    /// Watches the directories of the running generation's part files (`config_dir` is
    /// watched already), and no longer those it does not name; `watched` is what events are
    /// matched against.
    fn watch_part_dirs(
        &self,
        watcher: &mut notify::RecommendedWatcher,
        watched: &Mutex<BTreeSet<PathBuf>>,
        config_dir: &Path,
    ) {
        let live = self.current();
        let wanted: BTreeSet<PathBuf> = self
            .parts
            .iter()
            .flat_map(|part| part.files(&live.config))
            .filter_map(|file| file.parent().map(Path::to_path_buf))
            .collect();
        let (gone, new): (Vec<PathBuf>, Vec<PathBuf>) = {
            let mut watched = watched.lock().unwrap_or_else(|e| e.into_inner());
            let gone = watched.difference(&wanted).filter(|d| *d != config_dir);
            let new = wanted.difference(&watched).filter(|d| *d != config_dir);
            let diff = (gone.cloned().collect(), new.cloned().collect());
            *watched = wanted;
            diff
        };
        // Not under the lock: the watcher's calls wait for its event thread, whose handler
        // takes that lock for an event arriving meanwhile (a start-up hung on it).
        for gone in &gone {
            let _ = watcher.unwatch(gone);
        }
        for new in &new {
            if let Err(e) = watcher.watch(new, RecursiveMode::NonRecursive) {
                log::warn!(
                    "cannot watch {} for changes ({e}); SIGHUP reloads its files",
                    new.display()
                );
            }
        }
    }
}

/// What woke the reload thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The configuration file changed, or SIGHUP.
    File,
    /// Something changed in the directory of a part's file.
    PartFiles,
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
