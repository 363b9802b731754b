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

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use http::{header, StatusCode};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{sleep_until, timeout_at, Instant, Sleep};

use crate::access_log::{AccessLog, AccessRecord};
use crate::clock::coarse_now;
use crate::config::ServerSettings;
use crate::metrics::{BucketMetrics, RequestResult, METRICS};
use crate::respond::{error_xml, response_header, ErrorCode, Reply, RequestId};

/// Read buffer for the next head while a connection is idle; grown only for larger heads.
const INITIAL_HEAD_BUFFER: usize = 1024;
/// Response write buffer, while a request is answered: a response head plus a small body leave
/// in one send instead of two. Larger writes bypass it.
const WRITE_BUFFER: usize = 16 * 1024;
/// Write buffers each worker keeps for its next requests (see [`WriteBuffer`]).
const SPARE_WRITE_BUFFERS: usize = 8;
/// A client that keeps the server's writes waiting must take this many bytes per
/// `send_timeout` (the largest body piece the server writes at once), else it is disconnected.
const SEND_PROGRESS_BYTES: usize = 256 * 1024;
/// Headers per request, as Pingora's parser allows (more is a 400 from Pingora).
const MAX_HEADERS: usize = 256;
/// After a 431 the rest of the client's head is read and dropped for at most this long, so the
/// close does not reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
/// At most one warning per this many seconds while connections are being refused.
const REFUSAL_WARNING_EVERY_SECS: u64 = 10;

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
    last_refusal_warning: AtomicU64,
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
            last_refusal_warning: AtomicU64::new(0),
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

    /// Warns at most every [`REFUSAL_WARNING_EVERY_SECS`]: refusals come in floods.
    fn warn_refusal(&self, max: usize) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_refusal_warning.load(Ordering::Relaxed);
        if now >= last + REFUSAL_WARNING_EVERY_SECS
            && self
                .last_refusal_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "server.max_connections ({max}) connections are open: closing new connections \
                 at once (see originpull_connections_refused_total)"
            );
        }
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
}

impl<A> ConnectionGate<A> {
    pub fn new(
        app: Arc<A>,
        limits: ConnectionLimits,
        counts: Arc<ConnectionCounts>,
        worker: usize,
        access_log: Arc<AccessLog>,
    ) -> ConnectionGate<A> {
        ConnectionGate {
            app,
            limits,
            counts,
            worker,
            access_log,
        }
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
            self.counts.warn_refusal(self.limits.max_connections);
            return None;
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
                    conn.refuse_large_head(self.limits.max_header_bytes, &self.access_log)
                        .await;
                    return;
                }
                Err(why) => {
                    // Normal internet traffic (scanners, clients giving up): not an error.
                    log::debug!("closing connection before a whole request head: {why:?}");
                    return;
                }
            };
            let head = if head_len == conn.buf.len() {
                // The usual case: the buffer holds just this head. Splitting it would turn it
                // into a shared buffer (an allocation) for nothing.
                std::mem::take(&mut conn.buf)
            } else {
                conn.buf.split_to(head_len)
            };
            let framed = FramedStream {
                stream: conn.stream,
                out: WriteBuffer::take(),
                rest: conn.buf,
                send_timer: SendTimer::new(idle_timer, self.limits.send_timeout),
            };
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
            (conn, idle_timer) = framed.into_connection();
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

    /// Answers 431 with the XML error and closes. The head is not parsed any further.
    async fn refuse_large_head(mut self, max_bytes: usize, access_log: &AccessLog) {
        let started = Instant::now();
        let request_id = RequestId::new();
        let (method, resource) = request_line(&self.buf);
        log::debug!(
            "request {request_id}: head larger than server.max_header_bytes ({max_bytes}); 431"
        );
        let Ok(response) = large_head_response(&resource, &request_id) else {
            return;
        };
        BucketMetrics::unrouted().count_request(RequestResult::BadRequest, response.body_len);
        let sent = self.stream.write_all(&response.bytes).await.is_ok();
        access_log.write(&AccessRecord {
            time: SystemTime::now(),
            client: self
                .stream
                .get_socket_digest()
                .and_then(|digest| digest.peer_addr().and_then(|a| a.as_inet()).copied()),
            host: "-",
            bucket: "",
            method: &method,
            key: "",
            origin: "-",
            status: if sent { 431 } else { 0 },
            result: RequestResult::BadRequest.as_str(),
            bytes: if sent { response.body_len } else { 0 },
            duration: started.elapsed(),
            request_id: request_id.as_str(),
        });
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

/// The length of the request head at the start of `buf`, if it is all there. A head that
/// `httparse` refuses is framed as Pingora frames it: when the request line has characters
/// Pingora escapes and parses again, the head ends at the first blank line; any other error
/// gives Pingora everything read, so it answers 400 and closes.
fn head_length(buf: &[u8]) -> Option<usize> {
    if buf.is_empty() {
        return None;
    }
    if let Some(len) = crlf_head_length(buf) {
        return Some(len);
    }
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => Some(len),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::Token | httparse::Error::Version) => buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|end| end + 4),
        Err(_) => Some(buf.len()),
    }
}

/// The usual head, found without parsing it (Pingora parses it next): lines that all end in
/// CRLF, up to the first blank line. That is where `httparse` ends such a head, and where the
/// framing above ends one it refuses; a head it refuses for other reasons is answered 400 and
/// the connection closed either way. Anything else (a bare LF, leading blank lines, an
/// unfinished head) is left to `httparse`.
fn crlf_head_length(buf: &[u8]) -> Option<usize> {
    if matches!(buf.first(), Some(b'\r' | b'\n')) {
        return None;
    }
    let mut line_start = 0;
    for lf in memchr::memchr_iter(b'\n', buf) {
        if lf == 0 || buf[lf - 1] != b'\r' {
            return None;
        }
        if lf - 1 == line_start {
            return Some(lf + 1);
        }
        line_start = lf + 1;
    }
    None
}

/// The method and the request target of the head at the start of `buf`, for the access log
/// and the error's `<Resource>` (each empty if not yet readable).
fn request_line(buf: &[u8]) -> (String, String) {
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let method = next();
    (method, next())
}

struct RawResponse {
    bytes: BytesMut,
    body_len: u64,
}

/// The complete 431 response, with the common headers and the XML body.
fn large_head_response(resource: &str, request_id: &RequestId) -> pingora::Result<RawResponse> {
    let code = ErrorCode::RequestHeaderSectionTooLarge;
    let body = error_xml(code, None, resource, request_id.as_str());
    // No bucket is known before the head is read: no CORS headers.
    let reply = Reply::new(request_id.clone());
    let mut resp = response_header(code.status(), &reply)?;
    // Written here, not by Pingora, which would add it.
    resp.insert_header(header::DATE, get_cached_date())?;
    resp.insert_header(header::CONTENT_TYPE, "application/xml")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(header::CONNECTION, "close")?;
    let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    let mut bytes = BytesMut::with_capacity(256 + body.len());
    bytes.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or_default()
        )
        .as_bytes(),
    );
    resp.header_to_h1_wire(&mut bytes);
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body.as_bytes());
    Ok(RawResponse {
        bytes,
        body_len: body.len() as u64,
    })
}

/// The connection as Pingora sees it for one request, after the head it was handed: reads
/// return whatever was read after the head (a body), then the socket. Writes are buffered
/// until Pingora flushes, and are bounded by the send timeout.
#[derive(Debug)]
struct FramedStream {
    stream: Stream,
    out: WriteBuffer,
    rest: BytesMut,
    send_timer: SendTimer,
}

/// Bytes written by Pingora and not yet sent. The buffer comes from the worker's spares and
/// goes back after the request, so an idle connection holds none and a request allocates
/// none: a new 16 KiB buffer per request cost more than the rest of the gate.
#[derive(Debug)]
struct WriteBuffer {
    bytes: Vec<u8>,
    /// How much of `bytes` the socket has taken.
    sent: usize,
}

thread_local! {
    static SPARES: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl WriteBuffer {
    fn take() -> WriteBuffer {
        let bytes = SPARES
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| Vec::with_capacity(WRITE_BUFFER));
        WriteBuffer { bytes, sent: 0 }
    }

    /// Returns the buffer to this worker's spares (up to [`SPARE_WRITE_BUFFERS`]).
    fn give_back(self) {
        let mut bytes = self.bytes;
        bytes.clear();
        SPARES.with_borrow_mut(|spares| {
            if spares.len() < SPARE_WRITE_BUFFERS {
                spares.push(bytes);
            }
        });
    }

    fn has_room_for(&self, len: usize) -> bool {
        self.bytes.len() + len <= WRITE_BUFFER
    }
}

/// The send timeout, on the connection's one timer: armed only when a write has to wait for
/// the client, so an answer that goes out at once arms nothing (Pingora's own write timeout
/// starts a timeout for every write). While armed, the client must take
/// [`SEND_PROGRESS_BYTES`] before the deadline, which then starts again at the next wait.
#[derive(Debug)]
struct SendTimer {
    timer: Pin<Box<Sleep>>,
    timeout: Duration,
    /// Bytes written since the deadline was armed; `None` while it is not.
    written_since_armed: Option<usize>,
}

impl SendTimer {
    fn new(timer: Pin<Box<Sleep>>, timeout: Duration) -> SendTimer {
        SendTimer {
            timer,
            timeout,
            written_since_armed: None,
        }
    }

    /// Passes on the outcome of a write (or flush) of `written` bytes, or fails it once the
    /// client has kept it waiting past the deadline.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<std::io::Result<T>>,
        written: impl FnOnce(&T) -> usize,
    ) -> Poll<std::io::Result<T>> {
        match outcome {
            Poll::Ready(Ok(done)) => {
                if let Some(since) = self.written_since_armed.as_mut() {
                    *since += written(&done);
                    if *since >= SEND_PROGRESS_BYTES {
                        self.written_since_armed = None;
                    }
                }
                Poll::Ready(Ok(done))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.written_since_armed.is_none() {
                    self.written_since_armed = Some(0);
                    self.timer.as_mut().reset(Instant::now() + self.timeout);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client took too long to read the answer (server.send_timeout_secs)",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl FramedStream {
    /// Back to a connection between requests, keeping unread bytes (the next pipelined head),
    /// and the connection's timer.
    fn into_connection(self) -> (Connection, Pin<Box<Sleep>>) {
        let FramedStream {
            stream,
            out,
            mut rest,
            send_timer,
        } = self;
        out.give_back();
        let buf = if rest.is_empty() {
            // Release the last head's buffer while the connection idles.
            BytesMut::new()
        } else {
            std::mem::take(&mut rest)
        };
        let connection = Connection { stream, buf };
        (connection, send_timer.timer)
    }
}

/// Moves as much of `pending` (contiguous bytes) into `buf` as fits.
fn serve_from(pending: &mut impl Buf, buf: &mut ReadBuf<'_>) {
    let n = pending.chunk().len().min(buf.remaining());
    buf.put_slice(&pending.chunk()[..n]);
    pending.advance(n);
}

impl AsyncRead for FramedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.rest.is_empty() {
            serve_from(&mut this.rest, buf);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl FramedStream {
    /// Sends what is buffered, under the send timeout.
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let out = &mut self.out;
        while out.sent < out.bytes.len() {
            let outcome = Pin::new(&mut self.stream).poll_write(cx, &out.bytes[out.sent..]);
            match self.send_timer.watch(cx, outcome, |n| *n) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => out.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        out.bytes.clear();
        out.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FramedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if !this.out.has_room_for(buf.len()) {
            ready!(this.poll_send_buffered(cx))?;
        }
        if buf.len() >= WRITE_BUFFER {
            // Large pieces (a big object's body) go straight to the socket.
            let outcome = Pin::new(&mut this.stream).poll_write(cx, buf);
            return this.send_timer.watch(cx, outcome, |n| *n);
        }
        this.out.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        let outcome = Pin::new(&mut this.stream).poll_flush(cx);
        this.send_timer.watch(cx, outcome, |()| 0)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        let outcome = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.send_timer.watch(cx, outcome, |()| 0)
    }
}

#[async_trait]
impl Shutdown for FramedStream {
    async fn shutdown(&mut self) {
        if let Err(e) = self.flush().await {
            log::debug!("flushing before shutdown: {e}");
        }
        Shutdown::shutdown(self.stream.as_mut()).await
    }
}

impl UniqueID for FramedStream {
    fn id(&self) -> UniqueIDType {
        self.stream.id()
    }
}

impl Ssl for FramedStream {
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.stream.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.stream.selected_alpn_proto()
    }
}

impl GetTimingDigest for FramedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.stream.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.stream.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.stream.get_write_pending_time()
    }
}

impl GetProxyDigest for FramedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.stream.get_proxy_digest()
    }
}

impl GetSocketDigest for FramedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.stream.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.stream.set_socket_digest(socket_digest)
    }
}

impl Peek for FramedStream {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_one_head_among_pipelined_requests() {
        let one = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut two = one.to_vec();
        two.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(head_length(one), Some(one.len()));
        assert_eq!(head_length(&two), Some(one.len()));
        assert_eq!(head_length(b"GET /a HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_length(b""), None);
        let bare_lf = b"GET /a HTTP/1.1\nHost: x\n\n";
        let mut then_more = bare_lf.to_vec();
        then_more.extend_from_slice(b"GET");
        assert_eq!(head_length(&then_more), Some(bare_lf.len()));
        // A bare LF before the first CRLF CRLF: httparse's end, not the scan's.
        let mixed = b"GET /a HTTP/1.1\nHost: x\n\nGET /b HTTP/1.1\r\nHost: y\r\n\r\n";
        assert_eq!(
            head_length(mixed),
            Some(b"GET /a HTTP/1.1\nHost: x\n\n".len())
        );
    }

    #[test]
    fn the_crlf_scan_ends_a_head_where_httparse_does() {
        let heads: [&[u8]; 4] = [
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HEAD /b?c=d HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nX: \r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nOrigin: http://a\r\n\r\n",
        ];
        for head in heads {
            let mut pipelined = head.to_vec();
            pipelined.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let parsed = httparse::Request::new(&mut headers).parse(&pipelined);
            assert_eq!(parsed.ok(), Some(httparse::Status::Complete(head.len())));
            assert_eq!(crlf_head_length(&pipelined), Some(head.len()));
        }
        // Leading blank lines, which httparse skips, are left to it.
        let leading = b"\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(crlf_head_length(leading), None);
        assert_eq!(head_length(leading), Some(leading.len()));
    }

    #[test]
    fn frames_refused_heads_as_pingora_does() {
        // A request line with a byte Pingora escapes: the head ends at the first blank line.
        let escaped = b"GET /a?q=\x7f HTTP/1.1\r\nHost: x\r\n\r\nGET /b";
        assert_eq!(head_length(escaped), Some(escaped.len() - 6));
        assert_eq!(head_length(b"GET /a?q=\x7f HTTP/1.1\r\nHost: x\r\n"), None);
        // Anything else malformed goes to Pingora whole, to be answered 400.
        let bad = b"GET /a HTTP/1.1\r\nHo st: x\r\n\r\n";
        assert_eq!(head_length(bad), Some(bad.len()));
    }

    #[test]
    fn reads_the_method_and_target_for_the_log_and_the_error_resource() {
        assert_eq!(
            request_line(b"GET /a?b HTTP/1.1\r\nX: y"),
            ("GET".to_string(), "/a?b".to_string())
        );
        assert_eq!(request_line(b"GET"), ("GET".to_string(), String::new()));
    }
}
