//! A client connection after its TLS handshake, as Pingora sees a connection ([`EdgeTlsStream`]
//! implements its `IO` traits): reads and writes go through rustls; the TLS version and cipher
//! are in its `SslDigest` (for the access log), the ALPN choice decides HTTP/2 or HTTP/1.1, and
//! the certificate the handshake used is kept for the HTTP/2 `421` check.
//!
//! Writes are encrypted into rustls's output buffer and sent to the socket when a flush asks
//! for it, when the buffer is full (rustls's limit, 64 KiB), or before the next read. On an
//! HTTP/2 connection a flush is deferred ([`EdgeTlsStream::defer_flushes`]): the h2 crate
//! flushes after every DATA frame it writes, which sent each 4 KiB response in a `writev` of
//! its own; deferred, what the connection wrote goes out in one send when its task is polled
//! next, after the worker's other ready tasks (`docs/benchmarks.md`, HTTPS).

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::certificate::LoadedCertificate;

#[derive(Debug)]
pub struct EdgeTlsStream {
    inner: tokio_rustls::server::TlsStream<Stream>,
    digest: Arc<SslDigest>,
    certificate: Option<Arc<LoadedCertificate>>,
    /// A flush leaves the bytes for the task's next poll (see the module doc).
    defer_flushes: bool,
    /// The last send found the socket full: the socket wakes the task when it has room.
    send_blocked: bool,
}

impl EdgeTlsStream {
    pub(super) fn new(
        inner: tokio_rustls::server::TlsStream<Stream>,
        certificate: Option<Arc<LoadedCertificate>>,
    ) -> EdgeTlsStream {
        let (_, session) = inner.get_ref();
        let cipher = session
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("-");
        let version = session
            .protocol_version()
            .map_or("-", |version| tls_version_name(version.as_str()));
        let digest = Arc::new(SslDigest::new(cipher, version, None, None, Vec::new()));
        EdgeTlsStream {
            inner,
            digest,
            certificate,
            defer_flushes: false,
            send_blocked: false,
        }
    }

    /// Makes a flush send at the task's next poll instead of at once, for a caller that flushes
    /// far more often than it needs to and polls the stream's reads whenever its task runs
    /// (HTTP/2's connection). Shutting down still sends everything.
    pub fn defer_flushes(&mut self) {
        self.defer_flushes = true;
    }

    /// The certificate this connection's handshake sent (by the SNI name it asked for).
    pub fn certificate(&self) -> Option<&Arc<LoadedCertificate>> {
        self.certificate.as_ref()
    }

    /// Whether ALPN chose HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.inner.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

/// rustls's names (`TLSv1_3`) as the access log writes them (`1.3`).
fn tls_version_name(rustls_name: Option<&'static str>) -> &'static str {
    match rustls_name {
        Some("TLSv1_2") => "1.2",
        Some("TLSv1_3") => "1.3",
        Some(other) => other,
        None => "-",
    }
}

impl EdgeTlsStream {
    /// Sends every encrypted byte rustls holds to the socket.
    fn poll_send_encrypted(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let (socket, session) = self.inner.get_mut();
        while session.wants_write() {
            match session.write_tls(&mut SocketWriter { socket, cx }) {
                Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.send_blocked = true;
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.send_blocked = false;
        Poll::Ready(Ok(()))
    }
}

/// The socket as rustls writes to it: a write that would wait is `WouldBlock` (the task is
/// woken when the socket can take more).
struct SocketWriter<'a, 'b> {
    socket: &'a mut Stream,
    cx: &'a mut Context<'b>,
}

impl std::io::Write for SocketWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match Pin::new(&mut *self.socket).poll_write(self.cx, buf) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match Pin::new(&mut *self.socket).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for EdgeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // Whatever a writer left unflushed goes out before waiting for the client, who may be
        // waiting for it.
        if this.inner.get_ref().1.wants_write() {
            if let Poll::Ready(Err(e)) = this.poll_send_encrypted(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for EdgeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.defer_flushes {
            // The next poll's read sends it; a full socket wakes the task itself.
            if this.inner.get_ref().1.wants_write() && !this.send_blocked {
                cx.waker().wake_by_ref();
            }
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_encrypted(cx))?;
        Pin::new(this.inner.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // tokio-rustls sends what is buffered, then the close_notify alert.
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if bufs.iter().all(|buf| buf.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            let accepted = this.inner.get_mut().1.writer().write_vectored(bufs)?;
            if accepted > 0 {
                return Poll::Ready(Ok(accepted));
            }
            // rustls's output buffer is full: send it to make room.
            ready!(this.poll_send_encrypted(cx))?;
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}

#[async_trait]
impl Shutdown for EdgeTlsStream {
    async fn shutdown(&mut self) {
        // A client that already left makes this fail: ordinary traffic, not worth a log line.
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.inner).await {
            log::debug!("TLS shutdown: {e}");
        }
    }
}

impl UniqueID for EdgeTlsStream {
    fn id(&self) -> UniqueIDType {
        self.inner.get_ref().0.id()
    }
}

impl Ssl for EdgeTlsStream {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.digest.clone())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner
            .get_ref()
            .1
            .alpn_protocol()
            .and_then(|proto| match proto {
                b"h2" => Some(ALPN::H2),
                b"http/1.1" => Some(ALPN::H1),
                _ => None,
            })
    }
}

impl GetTimingDigest for EdgeTlsStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_ref().0.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_ref().0.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_ref().0.get_write_pending_time()
    }
}

impl GetProxyDigest for EdgeTlsStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_ref().0.get_proxy_digest()
    }
}

impl GetSocketDigest for EdgeTlsStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_ref().0.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.get_mut().0.set_socket_digest(socket_digest)
    }
}

impl Peek for EdgeTlsStream {}
