//! Client connections from accept to close: the connection cap, the idle keep-alive timeout,
//! the time and size limits on a request head, and the framing of pipelined requests.
//!
//! [`ConnectionGate`] sits between a worker's listening socket and Pingora's HTTP/1 session.
//! It reads each request head itself, with a deadline and a size limit, and hands Pingora
//! exactly one complete head at a time, as the session's pipelined prefix (so Pingora parses
//! it without reading the socket); Pingora answers it and gives the connection back. So:
//! - an idle connection holds no Pingora session, no request future and no buffer, only the
//!   socket and this loop (`docs/benchmarks.md`, idle connections): the response write buffer
//!   exists only while a request is answered;
//! - a head that is dripped or cut off never reaches Pingora, which would log it as an error;
//! - pipelined requests are answered one after another, in order (RFC 9112 §9.3.2), because
//!   the bytes after a head wait here until its response is written. Pingora 0.9.1 on its own
//!   answers the first and then closes the connection.
//!
//! The head's end is where `httparse`, the parser Pingora uses, ends it (found without parsing
//! when every line ends in CRLF), and where it rejects the request line Pingora's own rule (the
//! first blank line) is followed, so both always agree on where a request ends.
//!
//! A request the gate refuses itself (a head too large, an unsupported version, a space in the
//! target) is answered in the application's words ([`Refusals`]) and the connection closed.
//!
//! On the HTTPS listener the gate first runs the TLS handshake (`edge::tls`, within the header
//! timeout); a connection whose ALPN chose HTTP/2 is served by [`http2`] instead, one Pingora
//! session per stream, and HTTP/1.1 over TLS goes through the same head reading as plain HTTP.

mod framed;
mod head;
mod http2;
mod request_line;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::http::ResponseHeader;
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep_until, timeout_at, Instant, Sleep};

use crate::access_log::{AccessLog, AccessRecord};
use crate::edge::tls::EdgeTls;
use crate::metrics::{BucketMetrics, RequestResult, METRICS};
pub use framed::send_each_write;
use framed::FramedStream;
use head::{head_length, request_line};
use http2::H2Connection;
pub use http2::H2Limits;
use originpull_config::ServerSettings;
use originpull_support::clock::coarse_now;
use originpull_support::log_summary::SummarizedLog;
use request_line::prepare_head;

/// Read buffer for the next head while a connection is idle; grown only for larger heads.
const INITIAL_HEAD_BUFFER: usize = 1024;
/// After an error answered here (431, 505, a bad request line) what the client still sends is
/// read and dropped for at most this long, so the close does not reset the connection before
/// the client has read the answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
/// Connections refused while `server.max_connections` are open: they come in floods.
static REFUSED_CONNECTIONS: SummarizedLog =
    SummarizedLog::new(log::Level::Warn, module_path!(), "connections refused");

/// The `server:` settings that govern connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub keepalive_timeout: Duration,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub send_timeout: Duration,
}

impl ConnectionLimits {
    pub fn new(server: &ServerSettings) -> ConnectionLimits {
        ConnectionLimits {
            keepalive_timeout: Duration::from_secs(server.keepalive_timeout_secs),
            header_timeout: Duration::from_secs(server.header_timeout_secs),
            max_header_bytes: server.max_header_bytes,
            max_connections: server.max_connections,
            send_timeout: Duration::from_secs(server.send_timeout_secs),
        }
    }
}

/// Counts kept for every worker: open connections (for the cap, counted at accept) and
/// connections busy with a request (for a graceful stop, which waits only for those). The busy
/// count changes twice per request, so each worker has its own, on its own cache line: one
/// counter written by both worker threads cost every request a cache-line transfer between
/// their cores.
#[derive(Debug)]
pub struct ConnectionCounts {
    open: AtomicUsize,
    busy_by_worker: Box<[WorkerBusy]>,
    /// Set once when a graceful stop begins. Connections read this instead of Pingora's stop
    /// signal, whose every read takes a lock that all workers share.
    stopping: AtomicBool,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct WorkerBusy(AtomicUsize);

impl ConnectionCounts {
    pub fn new(workers: usize) -> ConnectionCounts {
        ConnectionCounts {
            open: AtomicUsize::new(0),
            busy_by_worker: (0..workers.max(1)).map(|_| WorkerBusy::default()).collect(),
            stopping: AtomicBool::new(false),
        }
    }

    /// A graceful stop began: idle connections stop taking requests.
    pub fn note_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Connections receiving a request head or being answered; idle keep-alive connections
    /// are not counted.
    pub fn busy(&self) -> usize {
        self.busy_by_worker
            .iter()
            .map(|worker| worker.0.load(Ordering::Acquire))
            .sum()
    }

    fn try_open(self: &Arc<Self>, max: usize) -> Option<OpenGuard> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .is_ok();
        if !admitted {
            return None;
        }
        METRICS.connections_open.inc();
        Some(OpenGuard(self.clone()))
    }

    fn enter_busy(&self, worker: usize) -> BusyGuard<'_> {
        let count = &self.busy_by_worker[worker % self.busy_by_worker.len()].0;
        count.fetch_add(1, Ordering::AcqRel);
        BusyGuard(count)
    }
}

struct OpenGuard(Arc<ConnectionCounts>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        METRICS.connections_open.dec();
    }
}

struct BusyGuard<'a>(&'a AtomicUsize);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A worker's connection handling in front of Pingora's HTTP app `A` (see the module doc).
pub struct ConnectionGate<A> {
    app: Arc<A>,
    limits: ConnectionLimits,
    counts: Arc<ConnectionCounts>,
    /// This gate's worker: which busy count it keeps.
    worker: usize,
    /// For the requests answered here, before Pingora (a head over `max_header_bytes`).
    access_log: Arc<AccessLog>,
    /// The application's answers to the requests refused here.
    answers: Arc<dyn Refusals>,
    /// On the HTTPS listener: the handshake, and the HTTP/2 settings.
    tls: Option<(Arc<EdgeTls>, H2Limits)>,
}

impl<A> ConnectionGate<A> {
    pub fn new(
        app: Arc<A>,
        answers: Arc<dyn Refusals>,
        limits: ConnectionLimits,
        counts: Arc<ConnectionCounts>,
        worker: usize,
        access_log: Arc<AccessLog>,
    ) -> ConnectionGate<A> {
        ConnectionGate {
            answers,
            app,
            limits,
            counts,
            worker,
            access_log,
            tls: None,
        }
    }

    /// The gate of the HTTPS listener: each connection starts with `tls`'s handshake.
    pub fn with_tls(mut self, tls: Arc<EdgeTls>, h2: H2Limits) -> ConnectionGate<A> {
        self.tls = Some((tls, h2));
        self
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for ConnectionGate<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_open) = self.counts.try_open(self.limits.max_connections) else {
            // Dropping the stream closes it: the cheapest answer while overloaded.
            METRICS.connections_refused.inc();
            let max = self.limits.max_connections;
            REFUSED_CONNECTIONS.note(|| {
                format!(
                    "server.max_connections ({max}) connections are open: closing new connections \
                     at once (see originpull_connections_refused_total)"
                )
            });
            return None;
        };
        let stream: Stream = match &self.tls {
            None => stream,
            Some((tls, h2)) => {
                // The handshake's and HTTP/2's futures are boxed: inline, every connection's
                // future would be as large as theirs for its whole life, plain HTTP included
                // (docs/benchmarks.md, idle connections).
                let tls_stream = Box::pin(tls.handshake(stream)).await?;
                if tls_stream.is_h2() {
                    let connection = H2Connection {
                        app: &self.app,
                        answers: &self.answers,
                        limits: self.limits,
                        h2: *h2,
                        counts: &self.counts,
                        worker: self.worker,
                        access_log: &self.access_log,
                    };
                    Box::pin(connection.serve(tls_stream, shutdown)).await;
                    return None;
                }
                Box::new(tls_stream)
            }
        };
        self.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

/// How waiting for a request head ended, when it did not yield one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoHead {
    /// The client closed (or reset) the connection.
    Closed,
    /// Idle past the keep-alive timeout, or the head took longer than the header timeout.
    TimedOut,
    /// The server is stopping and the connection was idle.
    ShuttingDown,
    /// The head is larger than `max_header_bytes`.
    TooLarge,
}

impl<A: HttpServerApp + Send + Sync + 'static> ConnectionGate<A> {
    /// Serves requests on one connection until it closes.
    async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let accepted = Instant::now();
        let mut conn = Connection {
            stream,
            buf: BytesMut::new(),
        };
        let mut first = true;
        // One timer for the connection's life, for every wait for bytes, re-armed only when it
        // fires early (see `read_more`): arming and cancelling a timer per request cost each
        // request more than the rest of the idle wait.
        let mut idle_timer = Box::pin(sleep_until(accepted + self.limits.header_timeout));
        loop {
            // A new connection must deliver its first head within the header timeout; a reused
            // one may idle for the keep-alive timeout, then has the header timeout for the head.
            let idle_until = if first {
                accepted + self.limits.header_timeout
            } else {
                Instant::from_std(coarse_now()) + self.limits.keepalive_timeout
            };
            if conn.buf.is_empty() {
                if let Err(why) = conn
                    .wait_for_bytes(idle_until, idle_timer.as_mut(), &self.counts)
                    .await
                {
                    log::debug!("closing idle connection: {why:?}");
                    return;
                }
            }
            let _busy = self.counts.enter_busy(self.worker);
            // Usually the whole head came in one read and no deadline is needed.
            let head_deadline = || {
                if first {
                    idle_until
                } else {
                    Instant::now() + self.limits.header_timeout
                }
            };
            let head_len = match conn
                .read_head(
                    head_deadline,
                    idle_timer.as_mut(),
                    self.limits.max_header_bytes,
                )
                .await
            {
                Ok(len) => len,
                Err(NoHead::TooLarge) => {
                    Box::pin(conn.refuse(
                        Refusal::HeadTooLarge,
                        self.answers.as_ref(),
                        &self.access_log,
                    ))
                    .await;
                    return;
                }
                Err(why) => {
                    // Normal internet traffic (scanners, clients giving up): not an error.
                    log::debug!("closing connection before a whole request head: {why:?}");
                    return;
                }
            };
            let mut head = if head_len == conn.buf.len() {
                // The usual case: the buffer holds just this head. Splitting it would turn it
                // into a shared buffer (an allocation) for nothing.
                std::mem::take(&mut conn.buf)
            } else {
                conn.buf.split_to(head_len)
            };
            if let Err(refusal) = prepare_head(&mut head) {
                head.unsplit(std::mem::take(&mut conn.buf));
                conn.buf = head;
                Box::pin(conn.refuse(refusal, self.answers.as_ref(), &self.access_log)).await;
                return;
            }
            let framed =
                FramedStream::new(conn.stream, conn.buf, idle_timer, self.limits.send_timeout);
            let mut session = ServerSession::new_http1(Box::new(framed));
            // Pingora parses the head from this buffer without reading the stream (and so
            // without a read timeout, a buffer of its own or a copy).
            session.set_pipelined_prefix(head);
            if self.counts.is_stopping() {
                // The last request of this connection: the client is told so.
                session.set_keepalive(None);
            }
            let reused = self.app.process_new_http(session, shutdown).await;
            let Some(reused) = reused else { return };
            let (stream, _settings) = reused.consume();
            // The stream is the one handed over above; anything else would be a Pingora change.
            let Ok(mut framed) = stream.into_any().downcast::<FramedStream>() else {
                log::error!("Pingora returned a connection of an unexpected type; closing it");
                return;
            };
            // Pingora flushes a finished response; this only makes sure nothing is left behind.
            if framed.flush().await.is_err() {
                return;
            }
            let (stream, unread, timer) = framed.into_parts();
            conn = Connection {
                stream,
                buf: unread,
            };
            idle_timer = timer;
            first = false;
        }
    }
}

/// A connection between requests: the socket and the bytes read past the last head.
struct Connection {
    stream: Stream,
    buf: BytesMut,
}

impl Connection {
    /// Waits until the client sends something or the idle deadline `until` passes; refuses to
    /// wait once the server is stopping.
    ///
    /// An idle connection does not watch for the stop itself (registering with the stop signal
    /// on every wait cost each request measurable time): the stop ends the process as soon as
    /// no connection is busy (`server::ExitWhenIdle`), which closes idle connections, and a
    /// request that arrives first is answered with `Connection: close`.
    async fn wait_for_bytes(
        &mut self,
        until: Instant,
        timer: Pin<&mut Sleep>,
        counts: &ConnectionCounts,
    ) -> Result<(), NoHead> {
        if counts.is_stopping() {
            return Err(NoHead::ShuttingDown);
        }
        self.read_more(until, timer).await
    }

    /// Reads until `buf` starts with a whole request head; returns its length. `deadline` is
    /// asked for only if more bytes must be read.
    async fn read_head(
        &mut self,
        deadline: impl Fn() -> Instant,
        mut timer: Pin<&mut Sleep>,
        max_bytes: usize,
    ) -> Result<usize, NoHead> {
        let mut until = None;
        loop {
            if let Some(len) = head_length(&self.buf) {
                return if len > max_bytes {
                    Err(NoHead::TooLarge)
                } else {
                    Ok(len)
                };
            }
            if self.buf.len() > max_bytes {
                return Err(NoHead::TooLarge);
            }
            let until = *until.get_or_insert_with(&deadline);
            self.read_more(until, timer.as_mut()).await?;
        }
    }

    /// Room for a whole ordinary head in `buf` before a read. Each head is split off the front
    /// of the buffer, so what is left at its end shrinks request by request; reading into a
    /// few bytes would cut the next head in two (a second read, and a deadline timer, per
    /// request). Once the earlier heads are gone, `reserve` reuses the same memory.
    fn make_room(&mut self) {
        let spare = self.buf.capacity() - self.buf.len();
        if spare < INITIAL_HEAD_BUFFER / 2 {
            self.buf.reserve(self.buf.len().max(INITIAL_HEAD_BUFFER));
        }
    }

    /// One read into `buf`, growing it as a head needs, by `until`. `timer` is the
    /// connection's one timer, armed at or before `until`: when it fires early (armed for an
    /// earlier deadline) it is re-armed, so a busy connection does not arm and cancel a timer
    /// per read.
    async fn read_more(
        &mut self,
        until: Instant,
        mut timer: Pin<&mut Sleep>,
    ) -> Result<(), NoHead> {
        if timer.deadline() > until {
            timer.as_mut().reset(until);
        }
        loop {
            self.make_room();
            tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.buf) => {
                    return match read {
                        Ok(0) | Err(_) => Err(NoHead::Closed),
                        Ok(_) => Ok(()),
                    };
                }
                () = timer.as_mut() => {
                    if Instant::now() >= until {
                        return Err(NoHead::TimedOut);
                    }
                    timer.as_mut().reset(until);
                }
            }
        }
    }

    /// Answers the request at the start of `buf` with the application's words for `refusal`
    /// and closes. The head is not parsed any further. Callers box this future: its drain
    /// buffer would otherwise make every connection's future 4 KiB larger for its whole life.
    async fn refuse(mut self, refusal: Refusal, answers: &dyn Refusals, access_log: &AccessLog) {
        let started = Instant::now();
        let (method, resource) = request_line(&self.buf);
        let response = answers.refusal_response(refusal, &resource);
        let request_id = response.request_id.as_str();
        log::debug!("request {request_id}: refused before Pingora ({refusal:?}); closing");
        let sent = self.stream.write_all(&response.http1()).await.is_ok();
        let ssl_digest = self.stream.get_ssl_digest();
        let request = RefusedRequest {
            client: self
                .stream
                .get_socket_digest()
                .and_then(|digest| digest.peer_addr().and_then(|a| a.as_inet()).copied()),
            host: "-",
            method: &method,
            tls: ssl_digest.as_ref().map_or("-", |d| d.version.as_ref()),
            proto: "h1",
        };
        response.record(&request, sent, started.elapsed(), access_log);
        if !sent {
            return;
        }
        let _ = self.stream.flush().await;
        let _ = AsyncWriteExt::shutdown(&mut self.stream).await;
        // Read what the client still sends: closing with unread bytes would reset the
        // connection and could destroy the answer before the client reads it.
        let mut sink = [0u8; 4096];
        let until = Instant::now() + LINGER;
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match timeout_at(until, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
}

/// Why the gate answers a request itself, before Pingora parses it: on HTTP/1 it then closes
/// the connection; on HTTP/2 only the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The head is larger than `server.max_header_bytes` (431).
    HeadTooLarge,
    /// A major version other than 1 (505).
    UnsupportedVersion,
    /// A raw space inside the request target (400).
    SpaceInTarget,
    /// HTTP/2: the stream's `:authority` is a name the connection's certificate does not cover
    /// (421).
    Misdirected,
}

/// A whole response to a refused request, as the application words it; the gate adds `Date`,
/// `Content-Length` and (HTTP/1) `Connection: close`.
pub struct RefusalResponse {
    pub status: StatusCode,
    /// In order, from `Server` to `Content-Type`, named as HTTP/1 writes them.
    pub headers: Vec<(&'static str, HeaderValue)>,
    pub body: Bytes,
    /// For the access log.
    pub request_id: String,
}

impl RefusalResponse {
    /// The response as HTTP/1.1 bytes, closing the connection.
    fn http1(&self) -> Vec<u8> {
        let status = self.status;
        let mut bytes = format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or_default()
        )
        .into_bytes();
        let added = [
            ("Date", get_cached_date()),
            ("Content-Length", HeaderValue::from(self.body.len())),
            ("Connection", HeaderValue::from_static("close")),
        ];
        for (name, value) in self.headers.iter().chain(&added) {
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// Counts `request`, answered with this response after `duration` (`sent`: whether it all
    /// went out), under `bucket=""`, and writes its access log line.
    fn record(
        &self,
        request: &RefusedRequest<'_>,
        sent: bool,
        duration: Duration,
        access_log: &AccessLog,
    ) {
        let bytes = if sent { self.body.len() as u64 } else { 0 };
        BucketMetrics::unrouted().count_request(RequestResult::BadRequest, bytes);
        access_log.write(&AccessRecord {
            time: SystemTime::now(),
            client: request.client,
            host: request.host,
            bucket: "",
            method: request.method,
            key: "",
            origin: "-",
            status: if sent { self.status.as_u16() } else { 0 },
            result: RequestResult::BadRequest.as_str(),
            bytes,
            duration,
            request_id: &self.request_id,
            tls: request.tls,
            proto: request.proto,
        });
    }

    /// The response head for an HTTP/2 stream.
    fn head(&self) -> pingora::Result<ResponseHeader> {
        let mut head = ResponseHeader::build(self.status, Some(self.headers.len() + 2))?;
        for (name, value) in &self.headers {
            head.insert_header(*name, value.clone())?;
        }
        head.insert_header("Date", get_cached_date())?;
        head.insert_header("Content-Length", self.body.len())?;
        Ok(head)
    }
}

/// A request refused here, as the access log names it.
struct RefusedRequest<'a> {
    client: Option<std::net::SocketAddr>,
    host: &'a str,
    method: &'a str,
    /// The TLS version, or `-` over plain HTTP.
    tls: &'a str,
    /// `h1` or `h2`.
    proto: &'a str,
}

/// How the application answers the gate's refusals: the gate knows when to refuse, the
/// application what to say (its error format, its request ids).
pub trait Refusals: Send + Sync {
    /// The response to `refusal` of a request for `resource` (the target as sent).
    fn refusal_response(&self, refusal: Refusal, resource: &str) -> RefusalResponse;
}
