//! The data plane's listening sockets and accept loops: one `SO_REUSEPORT` socket and one
//! single-threaded runtime per worker thread, the way nginx's workers run with `reuseport`.
//!
//! Pingora's own listening service accepts on one runtime and hands each connection to a random
//! one, while the socket stays registered with the acceptor's reactor: every read and write
//! readiness of half the connections then costs a cross-thread wake-up (measured in
//! `docs/benchmarks.md`). Here each worker is a Pingora service of one thread with a socket of
//! its own, so the kernel spreads connections over the workers and a connection lives and dies
//! on one thread.
//!
//! The accept loop is ours too: Pingora's spawns each connection as a task that holds its TLS
//! handshake state and a 60 s handshake timer even for plain TCP (8.7 KB per idle connection,
//! `docs/benchmarks.md`); here a connection's task holds only the application's future.
//!
//! Memory freed by closed connections goes back to the system: the worker calls the binary's
//! `release_memory` (its allocator keeps freed pages in per-thread heaps otherwise) at most
//! once per [`RELEASE_CHECK`] once [`RELEASE_AFTER_CLOSED`] connections have closed.
//!
//! Each socket is recorded in Pingora's table of listening fds under `<listen>#<worker>`, so a
//! `-u` upgrade hands every worker's socket to the same worker of the next process.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as TcpConnection;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use originpull_support::log_summary::SummarizedLog;

/// The accept queue asked of the kernel (capped by `net.core.somaxconn`), as Pingora uses.
const ACCEPT_BACKLOG: i32 = 65535;
/// After `accept()` fails for want of file descriptors it would fail again at once: wait this
/// long for connections to close instead of spinning.
const OUT_OF_FDS_PAUSE: Duration = Duration::from_secs(1);
/// How often a worker looks whether connections closed since it last released memory.
const RELEASE_CHECK: Duration = Duration::from_secs(1);
/// Closed connections worth a release: a few idle connections free too little to matter.
const RELEASE_AFTER_CLOSED: u64 = 64;
/// Accept errors come in floods when descriptors run out.
static ACCEPT_ERRORS: SummarizedLog =
    SummarizedLog::new(log::Level::Error, module_path!(), "accept() errors");

/// One worker: an accept loop on its own socket, in a runtime of one thread, handing each
/// connection to `app`.
pub struct WorkerListener<A> {
    app: Arc<A>,
    name: String,
    listen: SocketAddr,
    /// This worker's key in Pingora's fd table (what a `-u` upgrade passes on).
    fd_key: String,
    release_memory: Option<fn()>,
    /// Run on the worker's thread before it accepts connections.
    prepare: Option<Box<dyn Fn() + Send + Sync>>,
}

impl<A> WorkerListener<A> {
    /// Worker number `worker`, named `name`, serving connections to `listen` with `app`.
    pub fn new(app: A, name: String, listen: SocketAddr, worker: usize) -> WorkerListener<A> {
        WorkerListener {
            app: Arc::new(app),
            name,
            listen,
            fd_key: format!("{listen}#{worker}"),
            release_memory: None,
            prepare: None,
        }
    }

    /// Runs `prepare` on this worker's thread before it accepts connections: what each thread
    /// keeps for itself is made there, not while its first request waits.
    pub fn preparing(mut self, prepare: impl Fn() + Send + Sync + 'static) -> WorkerListener<A> {
        self.prepare = Some(Box::new(prepare));
        self
    }

    /// Calls `release` on this worker's thread after connections have closed.
    pub fn releasing_memory(mut self, release: Option<fn()>) -> WorkerListener<A> {
        self.release_memory = release;
        self
    }

    /// This worker's socket: inherited from the process being upgraded, or newly bound.
    fn socket_fd(&self, fds: Option<&ListenFds>) -> std::io::Result<RawFd> {
        if let Some(inherited) = fds.and_then(|fds| fds.lock().get(&self.fd_key).copied()) {
            return Ok(inherited);
        }
        let fd = bind_reuseport(self.listen)?;
        if let Some(fds) = fds {
            fds.lock().add(self.fd_key.clone(), fd);
        }
        Ok(fd)
    }
}

/// A listening socket on `addr` that other sockets of this user may share.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<RawFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(ACCEPT_BACKLOG)?;
    Ok(socket.into_raw_fd())
}

/// Refuses to start when anything (another originpull included) already listens on `addr`:
/// without this, a second instance would silently share the port through `SO_REUSEPORT`.
///
/// The probe socket is bound but never listens: a listening probe would accept a client's
/// connection into its queue and reset it when dropped, before the workers listen.
pub fn check_address_free(addr: SocketAddr) -> std::io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for WorkerListener<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let listener = match self.socket_fd(fds.as_ref()).and_then(|fd| {
            // SAFETY: `fd` is a listening socket this process owns (bound above or inherited
            // through the upgrade's fd table) and nothing else wraps it.
            #[allow(unsafe_code)]
            let socket = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            TcpListener::from_std(socket)
        }) {
            Ok(listener) => listener,
            Err(e) => {
                // Startup already checked the address; losing the race to another process is
                // fatal like any failed bind.
                log::error!("listen {}: {e}", self.listen);
                std::process::exit(1);
            }
        };
        if let Some(prepare) = &self.prepare {
            prepare();
        }
        let closed = Arc::new(AtomicU64::new(0));
        if let Some(release) = self.release_memory {
            tokio::spawn(release_after_closes(release, closed.clone()));
        }
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
            };
            match accepted {
                Ok((socket, peer)) => {
                    let connection = connection_stream(socket, peer);
                    let app = self.app.clone();
                    let shutdown = shutdown.clone();
                    let closed = closed.clone();
                    tokio::spawn(async move {
                        // The gate answers every request on the connection itself and never
                        // hands the connection back.
                        let _ = app.process_new(connection, &shutdown).await;
                        closed.fetch_add(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    let listen = self.listen;
                    ACCEPT_ERRORS.note(|| format!("accept() on {listen}: {e}"));
                    if out_of_fds {
                        tokio::time::sleep(OUT_OF_FDS_PAUSE).await;
                    }
                }
            }
        }
        // Closed here, as Pingora does: new connections go to the other sockets of the port
        // (a `-u` upgrade's next process has its own copies of them by now).
        drop(listener);
        self.app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.fd_key.clone()])
    }
}

/// Runs on a worker's thread for its life: calls `release` when enough connections have closed
/// since the last call. (A connection's memory is freed on the thread that served it, so the
/// release must run there.)
async fn release_after_closes(release: fn(), closed: Arc<AtomicU64>) {
    let mut released_at = 0;
    loop {
        tokio::time::sleep(RELEASE_CHECK).await;
        let now = closed.load(Ordering::Relaxed);
        if now - released_at >= RELEASE_AFTER_CLOSED {
            release();
            released_at = now;
        }
    }
}

/// Pingora's stream for an accepted socket: unbuffered (the gate buffers each request head and
/// response itself, and only while the request runs), without Nagle's delay, and knowing its
/// peer's address (the access log's and the socket digest's).
fn connection_stream(
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
) -> pingora::protocols::Stream {
    if let Err(e) = socket.set_nodelay(true) {
        log::debug!("TCP_NODELAY on a connection from {peer}: {e}");
    }
    let digest = SocketDigest::from_raw_fd(std::os::fd::AsRawFd::as_raw_fd(&socket));
    let _ = digest.peer_addr.set(Some(PeerAddr::Inet(peer)));
    let mut stream = TcpConnection::from(socket);
    stream.set_socket_digest(digest);
    Box::new(stream)
}
