//! Start-up: turns a validated [`Config`] into a running Pingora server with the data plane
//! (plain HTTP, and HTTPS with its certificates and ACME when configured), the Prometheus
//! endpoint, the bucket store, the copy scheduler and the reload watchers; and the end of a
//! graceful stop, as soon as no request or copy is left running. Also what `originpull -t`
//! checks ([`check`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora_proxy::HttpProxy;

use crate::access_log::AccessLog;
use crate::acme::state::{AcmeState, StoreState};
use crate::acme::{AcmeService, AcmeWake, Challenges};
use crate::admin::progress::{ProgressService, Samples};
use crate::admin::AdminApi;
use crate::answer::compress::Compressor;
use crate::answer::OriginPull;
use crate::edge::connection::{ConnectionCounts, ConnectionGate, ConnectionLimits, H2Limits};
use crate::edge::listener::{check_address_free, WorkerListener};
use crate::edge::tls::{Certificates, EdgeTls};
use crate::live::capacity::{CapacityPolicy, EvictionService};
use crate::live::probes::OriginProbes;
use crate::live::reload::{self, ConfigHandle, GenerationPart, ReloadWatcher};
use crate::pull::copy::Copies;
use originpull_config::ConditionalPut;
use originpull_config::{Config, ConfigErrors, S3Settings, StoreSettings, DEFAULT_OPEN_FILES};
use originpull_store::capacity::{Capacity, StartState};
use originpull_store::eviction::Eviction;
use originpull_store::local_tier::LocalTier;
use originpull_store::s3::S3Store;
use originpull_store::s3_cleanup::UploadCleanup;
use originpull_store::s3_credentials::CredentialSource;
use originpull_store::s3_link::StoreLink;
use originpull_store::s3_uploads::{UploadJournal, JOURNAL_DIR};
use originpull_store::{
    BucketCounts, BucketStore, CountedStore, DiskStore, HotTier, HotTierLimits,
};

/// How often a graceful stop checks whether anything is still running.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Process flags Pingora itself understands, and what the binary lends the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessFlags {
    pub daemon: bool,
    pub upgrade: bool,
    /// Returns the calling thread's freed memory to the system (the binary's allocator
    /// chooses how); each worker calls it once connections have closed.
    pub release_memory: Option<fn()>,
}

/// Builds the server. Relative paths in `config` are taken against the current working
/// directory. Extra services (the demo's origin) can be added before running it.
pub fn build(
    mut config: Config,
    config_path: &Path,
    flags: ProcessFlags,
) -> Result<Server, StartError> {
    // An upgrade takes over the running process's sockets, so the address is in use by design.
    if !flags.upgrade {
        let https_listen = config.https.as_ref().map(|https| https.listen);
        for addr in std::iter::once(config.listen).chain(https_listen) {
            check_address_free(addr).map_err(|source| StartError::Listen { addr, source })?;
        }
    }
    // One crypto provider for every rustls user (the HTTPS listener, the ACME client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base_dir = std::env::current_dir().map_err(StartError::WorkingDirectory)?;
    config.resolve_relative_paths(&base_dir);
    crate::metrics::init();
    // Objects and bytes per bucket are counted as copies and purges pass through the store.
    let counts = BucketCounts::default();
    let OpenedStore {
        store,
        upload_cleanup,
        shared_private,
        eviction,
    } = open_store(&config, counts.clone())?;
    if let Some(admin) = &config.admin {
        admin.read_token().map_err(StartError::AdminToken)?;
    }
    let access_log = AccessLog::open(&config.access_log).map_err(StartError::AccessLog)?;
    let mut server = pingora_server(&config, flags);

    let listen = config.listen;
    let threads = config.server.threads;
    let metrics_listen = config.metrics_listen;
    let limits = ConnectionLimits::new(&config.server);
    let admin_listen = config.admin.as_ref().map(|a| a.listen);
    let https = config.https.clone();
    let certificates = Arc::new(Certificates::default());
    let acme_wake = Arc::new(AcmeWake::default());
    let mut parts: Vec<Arc<dyn GenerationPart>> = vec![certificates.clone(), acme_wake.clone()];
    if let Some((eviction, _)) = &eviction {
        parts.push(Arc::new(CapacityPolicy(eviction.capacity().clone())));
    }
    let handle =
        ConfigHandle::start(config, config_path, &base_dir, parts).map_err(StartError::Config)?;
    let reload_watcher = server.add_service(background_service(
        "config reload",
        ReloadWatcher::new(handle.clone()),
    ));
    if let Some((eviction, start)) = &eviction {
        server.add_service(background_service(
            "store capacity",
            EvictionService {
                eviction: eviction.clone(),
                start: *start,
            },
        ));
    }
    if let Some(cleanup) = upload_cleanup {
        server.add_service(background_service(
            "S3 upload clean-up",
            UploadCleanupService(cleanup),
        ));
    }
    server.add_service(background_service(
        "origin probes",
        OriginProbes(handle.clone()),
    ));
    let samples = Samples::default();
    server.add_service(background_service(
        "migration progress",
        ProgressService {
            config: handle.clone(),
            store: store.clone(),
            counts: counts.clone(),
            samples: samples.clone(),
        },
    ));
    let copies = Copies::new(store.clone());
    if let Some(addr) = admin_listen {
        let admin = AdminApi::new(
            handle.clone(),
            store.clone(),
            copies.clone(),
            counts,
            samples,
        );
        server.add_service(admin.service(addr));
    }
    // ACME's state in the store the fleet shares (else in https.acme.state_dir).
    let acme_state = shared_private.map(|s3| Arc::new(StoreState(s3)) as Arc<dyn AcmeState>);
    let challenges = Arc::new(Challenges::new(acme_state.clone()));
    if https.as_ref().is_some_and(|https| https.acme.is_some()) {
        let acme = AcmeService::new(
            handle.clone(),
            certificates.clone(),
            challenges.clone(),
            acme_state,
            &acme_wake,
        );
        server.add_service(background_service("ACME", acme));
    }
    let https_listener = match &https {
        Some(https) => {
            let tls = EdgeTls::new(https, certificates, limits.header_timeout)
                .map_err(StartError::Tls)?;
            let h2 = H2Limits {
                max_concurrent_streams: https.max_concurrent_streams,
            };
            Some((https.listen, Arc::new(tls), h2))
        }
        None => None,
    };
    let app = OriginPull {
        config: handle,
        copies,
        compressor: Compressor::new(store.clone()),
        store,
        access_log: Arc::new(access_log),
        challenges,
    };
    let connections = Arc::new(ConnectionCounts::new(threads));
    server.add_service(background_service(
        "exit when idle",
        ExitWhenIdle {
            connections: connections.clone(),
            copies: app.copies.clone(),
            eviction: eviction.map(|(eviction, _)| eviction),
        },
    ));
    for worker in 0..threads {
        let plain = worker_listener(&server, &app, limits, &connections, worker, listen, None)
            .releasing_memory(flags.release_memory);
        let mut listeners = vec![plain];
        if let Some((addr, tls, h2)) = &https_listener {
            let tls = Some((tls.clone(), *h2));
            let secure = worker_listener(&server, &app, limits, &connections, worker, *addr, tls)
                .releasing_memory(flags.release_memory);
            listeners.push(secure);
        }
        for listener in listeners {
            let listener = server.add_service(listener);
            // Accepting connections means reloads are watched: a change right after is not
            // missed.
            listener.add_dependency(&reload_watcher);
        }
    }
    if let Some(addr) = metrics_listen {
        let mut prometheus = pingora_prometheus::prometheus_http_service();
        prometheus.add_tcp(&addr.to_string());
        server.add_service(prometheus);
    }
    Ok(server)
}

/// Checks `config` as start-up reads it, starting nothing (`originpull -t`): the generation
/// built from it, with the files it names (a `tls.ca_file`, the HTTPS certificates).
pub fn check(config: Config) -> Result<(), ConfigErrors> {
    let certificates: Arc<dyn GenerationPart> = Arc::new(Certificates::default());
    reload::check(config, &[certificates])
}

/// What [`open_store`] opened.
struct OpenedStore {
    /// The bucket store, with its tiers.
    store: Arc<dyn BucketStore>,
    /// (S3) The clean-up of the uploads an earlier run left, to run in the background.
    upload_cleanup: Option<UploadCleanup>,
    /// (S3) The store the fleet shares, for originpull's own objects (ACME's state).
    shared_private: Option<Arc<S3Store>>,
    /// (Disk) Eviction within the store's limits, and how the saved order was found.
    eviction: Option<(Arc<Eviction>, StartState)>,
}

/// The bucket store the configuration names, and what comes with it.
fn open_store(config: &Config, counts: BucketCounts) -> Result<OpenedStore, StartError> {
    let cache = &config.memory_cache;
    let limits = HotTierLimits {
        max_bytes: cache.max_bytes as usize,
        max_object_bytes: cache.max_object_bytes as usize,
        revalidate: Duration::from_secs(cache.revalidate_secs),
    };
    match &config.store {
        StoreSettings::Disk => {
            let store_error = |source| StartError::Store {
                path: config.data_dir.clone(),
                source,
            };
            let disk = DiskStore::open(&config.data_dir).map_err(store_error)?;
            let (capacity, start) = Capacity::open(&config.data_dir).map_err(store_error)?;
            CapacityPolicy::apply(&capacity, config);
            let disk = disk
                .keeping_open_files(
                    open_files_within_descriptor_limit(config),
                    limits.revalidate,
                )
                .with_capacity(capacity);
            let store = with_tiers(disk.clone(), limits, counts);
            let eviction = Eviction::new(disk, store.clone()).map(|e| (Arc::new(e), start));
            Ok(OpenedStore {
                store,
                upload_cleanup: None,
                shared_private: None,
                eviction,
            })
        }
        StoreSettings::S3(s3) => {
            let (store, cleanup, private) = open_s3_store(s3, config)?;
            let store = match &s3.local_tier {
                Some(tier) => {
                    let store =
                        LocalTier::open(store, tier).map_err(|source| StartError::LocalTier {
                            path: tier.dir.clone(),
                            source,
                        })?;
                    with_tiers(store, limits, counts)
                }
                None => with_tiers(store, limits, counts),
            };
            Ok(OpenedStore {
                store,
                upload_cleanup: Some(cleanup),
                shared_private: Some(Arc::new(private)),
                eviction: None,
            })
        }
    }
}

/// Pingora's server for `config`, bootstrapped (an upgrade has taken its sockets over).
fn pingora_server(config: &Config, flags: ProcessFlags) -> Server {
    let mut server_conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout_secs),
        daemon: flags.daemon,
        // Each worker service runs on one single-threaded runtime (see `listener`).
        work_stealing: false,
        ..ServerConf::default()
    };
    if let Some(pid_file) = &config.server.pid_file {
        server_conf.pid_file = pid_file.clone();
    }
    if let Some(sock) = &config.server.upgrade_sock {
        server_conf.upgrade_sock = sock.clone();
    }
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    server
}

/// One worker of one listener: its own socket on `listen`, the connection gate (behind the
/// TLS handshake on the HTTPS listener), Pingora's proxy around `app`.
fn worker_listener(
    server: &Server,
    app: &OriginPull,
    limits: ConnectionLimits,
    connections: &Arc<ConnectionCounts>,
    worker: usize,
    listen: std::net::SocketAddr,
    tls: Option<(Arc<EdgeTls>, H2Limits)>,
) -> WorkerListener<ConnectionGate<HttpProxy<OriginPull>>> {
    let proxy = Arc::new(pingora_proxy::http_proxy(
        &server.configuration,
        app.clone(),
    ));
    let gate = ConnectionGate::new(
        proxy,
        Arc::new(app.clone()),
        limits,
        connections.clone(),
        worker,
        app.access_log.clone(),
    );
    let (gate, name) = match tls {
        Some((tls, h2)) => (
            gate.with_tls(tls, h2),
            format!("originpull HTTPS worker {worker}"),
        ),
        None => (gate, format!("originpull worker {worker}")),
    };
    let copies = app.copies.clone();
    WorkerListener::new(gate, name, listen, worker).preparing(move || copies.prepare_this_thread())
}

/// Descriptors kept for everything but client connections and kept files: origin and store
/// connections, copies being written, logs, listeners.
const DESCRIPTORS_RESERVED: u64 = 1024;

/// `memory_cache.open_files`, lowered to what the descriptor limit leaves beside
/// `server.max_connections` (with a warning when it was set), once the soft limit is raised to
/// the hard one (as nginx's `worker_rlimit_nofile` does).
fn open_files_within_descriptor_limit(config: &Config) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let wanted = config.memory_cache.open_files;
    let wanted_or_default = wanted.unwrap_or(DEFAULT_OPEN_FILES);
    if wanted_or_default == 0 {
        return 0;
    }
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            ..limit
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    // `None` is no limit at all.
    let Some(descriptors) = limit.current else {
        return wanted_or_default as usize;
    };
    let left = descriptors
        .saturating_sub(config.server.max_connections as u64)
        .saturating_sub(DESCRIPTORS_RESERVED);
    if wanted_or_default > left {
        let why = format!(
            "the open files limit is {descriptors} and server.max_connections {}",
            config.server.max_connections
        );
        match wanted {
            Some(wanted) => log::warn!(
                "memory_cache.open_files: keeping {left} files open, not {wanted}: {why} \
                 (raise LimitNOFILE)"
            ),
            None => log::info!("keeping up to {left} object files open: {why}"),
        }
    }
    wanted_or_default.min(left) as usize
}

/// `store` behind the memory tier (unless it is turned off, `max_bytes: 0`), counted per
/// bucket.
fn with_tiers<S: BucketStore>(
    store: S,
    limits: HotTierLimits,
    counts: BucketCounts,
) -> Arc<dyn BucketStore> {
    if limits.max_bytes > 0 {
        Arc::new(CountedStore::new(HotTier::new(store, limits), counts))
    } else {
        Arc::new(CountedStore::new(store, counts))
    }
}

/// The S3 store, once every configured bucket's S3 bucket has answered and refused what the
/// fleet's leases rely on (`store.s3.conditional_put`), journaling its uploads in this node's
/// state directory (the local tier's, else `data_dir`), the clean-up of uploads nobody will
/// finish, to run in the background, and a store for originpull's own objects (ACME's). The
/// checks run on a runtime of their own (none runs yet) with clients of their own, dropped with
/// it. All share one deadline and health.
fn open_s3_store(
    settings: &S3Settings,
    config: &Config,
) -> Result<(S3Store, UploadCleanup, S3Store), StartError> {
    let credentials = CredentialSource::resolve(settings).map_err(StartError::S3)?;
    log::info!("S3 store: credentials from {}", credentials.describe());
    let link = StoreLink::new(Duration::from_millis(settings.request_timeout_ms));
    let buckets: Vec<String> = config.buckets.iter().map(|b| b.name.clone()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::S3(format!("cannot start the S3 check: {e}")))?;
    let probe = S3Store::new(settings.clone(), credentials.clone(), link.clone());
    runtime
        .block_on(probe.check_reachable(&buckets))
        .map_err(|failures| StartError::S3(failures.join("; ")))?;
    let lease_writes = runtime
        .block_on(probe.probe_leases(&buckets))
        .map_err(StartError::S3)?;
    drop(probe);
    match settings.conditional_put {
        ConditionalPut::None => log::warn!(
            "store.s3.conditional_put: none: fill leases are best effort; nodes that miss one \
             cold key at the same moment may each fetch it from the origin"
        ),
        ConditionalPut::IfNoneMatch if !lease_writes.replace_if_match => log::warn!(
            "S3 store: the store ignores `If-Match` on PUT; an expired lease is taken over \
             through a takeover marker instead"
        ),
        _ => {}
    }
    let state_dir = match &settings.local_tier {
        Some(tier) => &tier.dir,
        None => &config.data_dir,
    };
    let journal_dir = state_dir.join(JOURNAL_DIR);
    let journal = UploadJournal::open(&journal_dir).map_err(|e| {
        StartError::S3(format!(
            "cannot open the upload journal {}: {e}",
            journal_dir.display()
        ))
    })?;
    let journal = Arc::new(journal);
    let cleanup = UploadCleanup::new(
        S3Store::new(settings.clone(), credentials.clone(), link.clone()),
        journal.clone(),
        buckets,
    );
    let private = S3Store::new(settings.clone(), credentials.clone(), link.clone())
        .with_lease_writes(lease_writes);
    let store = S3Store::new(settings.clone(), credentials, link)
        .with_upload_journal(journal)
        .with_lease_writes(lease_writes);
    Ok((store, cleanup, private))
}

/// The S3 store's start-up clean-up, run once in the background (serving does not wait).
struct UploadCleanupService(UploadCleanup);

#[async_trait::async_trait]
impl BackgroundService for UploadCleanupService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.0.run().await;
    }
}

/// Ends a graceful stop (SIGTERM, or the old process of an upgrade) as soon as no request is
/// being received or answered and no copy is running or waiting. Pingora itself would sleep
/// through the whole `grace_period_secs`; idle keep-alive connections are simply closed.
struct ExitWhenIdle {
    connections: Arc<ConnectionCounts>,
    copies: Copies,
    /// Its order is saved, marked clean, once nothing can change it any more.
    eviction: Option<Arc<Eviction>>,
}

#[async_trait::async_trait]
impl BackgroundService for ExitWhenIdle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.wait_for(|stopping| *stopping).await.is_err() {
            return;
        }
        self.connections.note_stopping();
        loop {
            if self.connections.busy() == 0 && self.copies.is_idle() {
                if let Some(eviction) = &self.eviction {
                    eviction.save(true).await;
                }
                log::info!("graceful stop: no request or copy is running; exiting");
                std::process::exit(0);
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

/// Why the server could not start, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data_dir {}: cannot open the bucket store: {source}", path.display())]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    S3(String),
    #[error("store.local_tier.dir {}: cannot open: {source}", path.display())]
    LocalTier {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("access_log: cannot open: {0}")]
    AccessLog(std::io::Error),
    #[error("listen {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(originpull_config::ConfigErrors),
    #[error("admin_token_file: {0}")]
    AdminToken(String),
    #[error("cannot read the working directory: {0}")]
    WorkingDirectory(std::io::Error),
    #[error("https: {0}")]
    Tls(String),
}
