//! The connection as Pingora sees it while one request is answered ([`FramedStream`]): the
//! bytes read after the request's head, then the socket; a write buffer borrowed from the
//! worker's spares; and the send timeout, on the connection's one timer.
//!
//! The write buffer gathers a response head and a small body into one send; Pingora flushes
//! a body with a `Content-Length` only at its end. An answer whose body comes from a source
//! that may make it wait (an origin, a remote store) asks for each write to be sent at once
//! instead ([`send_each_write`]), so the client gets every byte as the source produces it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Response write buffer, while a request is answered: a response head plus a small body leave
/// in one send instead of two. Larger writes bypass it.
pub const WRITE_BUFFER: usize = 16 * 1024;
/// Write buffers each worker keeps for its next requests (see [`WriteBuffer`]).
const SPARE_WRITE_BUFFERS: usize = 8;
/// A client that keeps the server's writes waiting must take this many bytes per
/// `send_timeout` (the largest body piece the server writes at once), else it is disconnected.
const SEND_PROGRESS_BYTES: usize = 256 * 1024;

/// The connection as Pingora sees it for one request, after the head it was handed: reads
/// return whatever was read after the head (a body), then the socket. Writes are buffered
/// until Pingora flushes, and are bounded by the send timeout.
#[derive(Debug)]
pub(super) struct FramedStream {
    stream: Stream,
    out: WriteBuffer,
    rest: BytesMut,
    send_timer: SendTimer,
    /// Set by [`send_each_write`]: every write is sent at once, not gathered.
    sends_each_write: AtomicBool,
}

/// Makes every write of the response `session` is answering go to the client at once, for an
/// answer whose body arrives piece by piece from a source that may make it wait: the head
/// and each piece are then never held back waiting for more. Call it before writing the head.
/// (A session on another stream, such as HTTP/2's, sends its frames as written already.)
pub fn send_each_write(session: &ServerSession) {
    let framed = session
        .stream()
        .and_then(|stream| stream.as_any().downcast_ref::<FramedStream>());
    if let Some(framed) = framed {
        // Relaxed: only this request's task reads and writes the flag.
        framed.sends_each_write.store(true, Ordering::Relaxed);
    }
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

    /// The bytes not yet sent.
    fn unsent(&self) -> &[u8] {
        &self.bytes[self.sent..]
    }

    /// Notes that the socket took `n` more bytes; an all-sent buffer starts again empty.
    fn advance(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.bytes.len() {
            self.bytes.clear();
            self.sent = 0;
        }
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
    /// `stream` for one request whose head has been handed to Pingora: `rest` holds the bytes
    /// read after it, `timer` is the connection's one timer.
    pub(super) fn new(
        stream: Stream,
        rest: BytesMut,
        timer: Pin<Box<Sleep>>,
        send_timeout: Duration,
    ) -> FramedStream {
        FramedStream {
            stream,
            out: WriteBuffer::take(),
            rest,
            send_timer: SendTimer::new(timer, send_timeout),
            sends_each_write: AtomicBool::new(false),
        }
    }

    /// Back to a connection between requests: the socket, the bytes not read (the next
    /// pipelined head; an empty buffer holds no memory), and the connection's timer.
    pub(super) fn into_parts(self) -> (Stream, BytesMut, Pin<Box<Sleep>>) {
        let FramedStream {
            stream,
            out,
            rest,
            send_timer,
            sends_each_write: _,
        } = self;
        out.give_back();
        let unread = if rest.is_empty() {
            // Release the last head's buffer while the connection idles.
            BytesMut::new()
        } else {
            rest
        };
        (stream, unread, send_timer.timer)
    }

    /// Sends what is buffered, under the send timeout.
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.unsent().is_empty() {
            let outcome = Pin::new(&mut self.stream).poll_write(cx, self.out.unsent());
            match ready!(self.send_timer.watch(cx, outcome, |n| *n))? {
                0 => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                n => self.out.advance(n),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Sends a large piece (`WRITE_BUFFER` or more) straight to the socket, in the same send
    /// as what is buffered before it (the head): two sends cost a hit of a 20 KB compressed
    /// script a quarter more CPU (docs/benchmarks.md). Returns how much of `piece` was sent.
    fn poll_send_large(
        &mut self,
        cx: &mut Context<'_>,
        piece: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        while !self.out.unsent().is_empty() {
            let buffered = self.out.unsent().len();
            let both = [
                std::io::IoSlice::new(self.out.unsent()),
                std::io::IoSlice::new(piece),
            ];
            let outcome = Pin::new(&mut self.stream).poll_write_vectored(cx, &both);
            match ready!(self.send_timer.watch(cx, outcome, |n| *n))? {
                0 => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                n => {
                    self.out.advance(n.min(buffered));
                    if n > buffered {
                        return Poll::Ready(Ok(n - buffered));
                    }
                }
            }
        }
        let outcome = Pin::new(&mut self.stream).poll_write(cx, piece);
        self.send_timer.watch(cx, outcome, |n| *n)
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

impl AsyncWrite for FramedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let sends_each_write = this.sends_each_write.load(Ordering::Relaxed);
        if buf.len() >= WRITE_BUFFER {
            // Large pieces (a big object's body) go straight to the socket.
            let outcome = this.poll_send_large(cx, buf);
            if sends_each_write && matches!(outcome, Poll::Ready(Ok(_))) {
                // A TLS stream holds what it encrypted until flushed; a failed flush shows
                // again on the next write.
                let _ = Pin::new(&mut this.stream).poll_flush(cx);
            }
            return outcome;
        }
        if !this.out.has_room_for(buf.len()) {
            ready!(this.poll_send_buffered(cx))?;
        }
        this.out.bytes.extend_from_slice(buf);
        if sends_each_write {
            // Sent now if the socket takes it; if the client is not reading, it waits in the
            // buffer (the socket's is full anyway) for the next write or flush.
            match this.poll_send_buffered(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if let Poll::Ready(Err(e)) = Pin::new(&mut this.stream).poll_flush(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                Poll::Pending => {}
            }
        }
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
