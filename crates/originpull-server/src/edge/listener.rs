//! The data plane's listening sockets: one `SO_REUSEPORT` socket and one single-threaded
//! runtime per worker thread, the way nginx's workers run with `reuseport`.
//!
//! Pingora's own listening service accepts on one runtime and hands each connection to a random
//! one, while the socket stays registered with the acceptor's reactor: every read and write
//! readiness of half the connections then costs a cross-thread wake-up (measured in
//! `docs/benchmarks.md`). Here each worker is a Pingora service of one thread with a socket of
//! its own, so the kernel spreads connections over the workers and a connection lives and dies
//! on one thread.
//!
//! Each socket is recorded in Pingora's table of listening fds under `<listen>#<worker>`, so a
//! `-u` upgrade hands every worker's socket to the same worker of the next process.

use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::{Fds, ListenFds, ShutdownWatch};
use pingora::services::listening::Service as ListeningService;
use pingora::services::Service;
use socket2::{Domain, Protocol, Socket, Type};

/// The accept queue asked of the kernel (capped by `net.core.somaxconn`), as Pingora uses.
const ACCEPT_BACKLOG: i32 = 65535;

/// One worker: a Pingora listening service confined to one thread and one socket.
pub struct WorkerListener<A> {
    inner: ListeningService<A>,
    listen: SocketAddr,
    /// The inner service's listener address, under which it looks up the socket to adopt.
    listen_key: String,
    /// This worker's key in Pingora's fd table (what a `-u` upgrade passes on).
    fd_key: String,
}

impl<A> WorkerListener<A> {
    /// Gives `inner` (a service without listeners) its one listener on `listen`, with `buffers`
    /// for each accepted connection, as worker number `worker`.
    pub fn new(
        mut inner: ListeningService<A>,
        listen: SocketAddr,
        buffers: L4BufferSettings,
        worker: usize,
    ) -> WorkerListener<A> {
        let listen_key = listen.to_string();
        inner.add_listener(ListenerConfig::tcp(listen_key.clone()).l4_buffer(buffers));
        WorkerListener {
            inner,
            listen,
            listen_key,
            fd_key: format!("{listen}#{worker}"),
        }
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
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<RawFd> {
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
impl<A: pingora::apps::ServerApp + Send + Sync + 'static> Service for WorkerListener<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let fd = match self.socket_fd(fds.as_ref()) {
            Ok(fd) => fd,
            Err(e) => {
                // Startup already checked the address; losing the race to another process is
                // fatal like any failed bind.
                log::error!("listen {}: {e}", self.listen);
                std::process::exit(1);
            }
        };
        // The inner service looks its address up in this table and adopts the socket.
        let own = Fds::new();
        let own: ListenFds = Arc::new(parking_lot::Mutex::new(own));
        own.lock().add(self.listen_key.clone(), fd);
        self.inner
            .start_service(Some(own), shutdown, listeners_per_fd)
            .await;
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.fd_key.clone()])
    }
}
