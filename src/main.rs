//! The `originpull` command: run the server (`-c FILE`), check a configuration (`-t`), run
//! the self-contained demo (`demo`), or prefetch keys through a running server (`prefetch`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use originpull_cli::{demo, prefetch};
use originpull_config::{Config, ConfigErrors};
use originpull_server::metrics;
use originpull_server::server::{self, ProcessFlags};
use originpull_support::library_log::SummarizingLogger;

/// A request allocates many small, short-lived buffers across threads; mimalloc's per-thread
/// free lists handle that with less work than glibc malloc (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Gives the calling thread's free mimalloc pages back to the system: mimalloc otherwise keeps
/// them in the thread's heap, and the memory of thousands of closed connections stays counted
/// against the process (docs/benchmarks.md, idle connections).
fn release_memory() {
    // SAFETY: mi_collect only walks and frees the calling thread's own heap.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}

/// Origin-pull edge server: serves buckets from disk; on a miss answers 302 to the bucket's
/// origin and copies the object into the bucket in the background.
#[derive(Parser, Debug)]
#[command(name = "originpull", version)]
struct Cli {
    /// Configuration file (YAML). Reloaded on change and on SIGHUP.
    #[arg(short = 'c', long = "conf", default_value = "conf/originpull.yaml")]
    conf: PathBuf,

    /// Check the configuration file and exit: 0 and "valid", or 1 and every error found.
    #[arg(short = 't', long = "test")]
    test: bool,

    /// Run in the background (Pingora's daemon mode; set server.pid_file).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,

    /// Take over the listening sockets of a running originpull (zero-downtime upgrade: start
    /// the new binary with -u, then send SIGQUIT to the old one).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the seed example locally: a bucket plus an embedded origin, with curl lines to try.
    Demo {
        /// Data-plane address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The embedded origin's address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        origin: SocketAddr,
        /// Prometheus endpoint.
        #[arg(long, default_value = "127.0.0.1:9100")]
        metrics: SocketAddr,
        /// Where the demo keeps its config and bucket.
        #[arg(long, default_value = "demo-data")]
        dir: PathBuf,
    },
    /// Copy a list of keys into a bucket through a running server's admin API, with a progress
    /// bar; exits 0 when every key is stored, 1 otherwise (failed keys on stderr).
    Prefetch {
        /// The admin listener, e.g. http://127.0.0.1:9180.
        #[arg(long)]
        admin: String,
        /// The file holding the admin token (admin_token_file).
        #[arg(long)]
        token_file: PathBuf,
        /// The bucket to fill.
        #[arg(long)]
        bucket: String,
        /// Copies started per second at most.
        #[arg(long)]
        rate: Option<u64>,
        /// A file of keys or full origin URLs, one per line; `-` reads standard input.
        keys: PathBuf,
    },
}

/// env_logger (`RUST_LOG`, default `info`) behind the logger that summarizes the libraries'
/// warnings (originpull_support::library_log).
fn install_logger() {
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max_level = logger.filter();
    let logger = SummarizingLogger::new(Box::new(logger), metrics::count_library_log_line);
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max_level);
    }
}

fn main() -> ExitCode {
    install_logger();
    let cli = Cli::parse();
    let flags = ProcessFlags {
        daemon: cli.daemon,
        upgrade: cli.upgrade,
        release_memory: Some(release_memory),
    };

    match cli.command {
        Some(Command::Demo {
            listen,
            origin,
            metrics,
            dir,
        }) => return run_demo(listen, origin, metrics, &dir, flags),
        Some(Command::Prefetch {
            admin,
            token_file,
            bucket,
            rate,
            keys,
        }) => {
            let args = prefetch::PrefetchArgs {
                admin,
                token_file,
                bucket,
                rate,
                keys,
            };
            return match prefetch::run(&args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(why) => {
                    eprintln!("originpull prefetch: {why}");
                    ExitCode::from(1)
                }
            };
        }
        None => {}
    }

    let config = match Config::load(&cli.conf) {
        Ok(config) => config,
        Err(errors) => return config_errors(&cli.conf, &errors),
    };
    if cli.test {
        // Also what only start-up reads: the files the configuration names (a `tls.ca_file`,
        // the HTTPS certificates).
        let mut resolved = config.clone();
        if let Ok(cwd) = std::env::current_dir() {
            resolved.resolve_relative_paths(&cwd);
        }
        if let Some(admin) = &resolved.admin {
            if let Err(why) = admin.read_token() {
                eprintln!(
                    "originpull: configuration file {} has 1 error(s):\n  top level: admin_token_file: {why}",
                    cli.conf.display()
                );
                return ExitCode::from(1);
            }
        }
        if let Err(errors) = server::check(resolved) {
            return config_errors(&cli.conf, &errors);
        }
        println!(
            "originpull: configuration file {} is valid",
            cli.conf.display()
        );
        return ExitCode::SUCCESS;
    }
    match server::build(config, &cli.conf, flags) {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("originpull: cannot start: {e}");
            ExitCode::from(1)
        }
    }
}

fn config_errors(path: &std::path::Path, errors: &ConfigErrors) -> ExitCode {
    eprintln!(
        "originpull: configuration file {} has {} error(s):",
        path.display(),
        errors.0.len()
    );
    for e in &errors.0 {
        eprintln!("  {e}");
    }
    ExitCode::from(1)
}

fn run_demo(
    listen: SocketAddr,
    origin: SocketAddr,
    metrics: SocketAddr,
    dir: &std::path::Path,
    flags: ProcessFlags,
) -> ExitCode {
    let config_path = match demo::prepare(dir, listen, metrics, origin) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("originpull demo: cannot write {}: {e}", dir.display());
            return ExitCode::from(1);
        }
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("originpull demo: {errors}");
            return ExitCode::from(1);
        }
    };
    let mut server = match server::build(config, &config_path, flags) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("originpull demo: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    server.add_service(demo::origin_service(origin));
    println!(
        "{}",
        demo::instructions(listen, metrics, origin, &config_path)
    );
    server.run_forever()
}
