//! A client connection after its TLS handshake, as Pingora sees a connection ([`EdgeTlsStream`]
//! implements its `IO` traits): reads and writes go through rustls; the TLS version and cipher
//! are in its `SslDigest` (for the access log), the ALPN choice decides HTTP/2 or HTTP/1.1, and
//! the certificate the handshake used is kept for the HTTP/2 `421` check.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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
        }
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

impl AsyncRead for EdgeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for EdgeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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
