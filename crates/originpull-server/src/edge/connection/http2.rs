//! HTTP/2 connections of the HTTPS listener: the h2 handshake under the header timeout, the
//! limits of the h2 stack (streams at once, decoded header size, the rapid-reset, reset-error
//! and small-DATA budgets), then each stream handed to Pingora as its own session, after the
//! `421 Misdirected Request` check: a stream whose `:authority` the connection's certificate
//! does not cover was sent here by a client reusing the connection for another name (RFC 9110
//! §15.5.20), and is answered 421 (in the application's words, [`Refusal::Misdirected`])
//! without reaching a bucket.
//!
//! This is Pingora's own accept loop (`apps::process_new`, which it keeps crate-private) with
//! the check added, the streams counted as busy for a graceful stop, and the keep-alive timeout
//! as the idle timeout.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use http::header;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{
    default_h2_options, handshake, H2Accept, H2Options, HttpSession,
};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, GetSocketDigest, GetTimingDigest, Ssl};
use pingora::server::ShutdownWatch;

use super::{BusyGuard, ConnectionCounts, ConnectionLimits, Refusal, Refusals, RefusedRequest};
use crate::access_log::AccessLog;
use crate::edge::tls::{certificate_covers, EdgeTlsStream, LoadedCertificate};
use originpull_config::normalize_name;

/// Streams of one connection rejected as malformed by Pingora's checks before the connection
/// is closed (Pingora's own budget, which its public accept call does not keep across calls).
const MAX_MALFORMED_STREAMS: usize = 32;
/// Streams the client may reset before the server accepted them, at once (rapid reset).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server may reset for the client's protocol errors per connection.
const MAX_LOCAL_ERROR_RESETS: usize = 256;

/// The HTTP/2 settings of the HTTPS listener.
#[derive(Debug, Clone, Copy)]
pub struct H2Limits {
    pub max_concurrent_streams: u32,
}

fn h2_options(limits: &ConnectionLimits, h2: H2Limits) -> H2Options {
    let mut options = default_h2_options();
    options
        .max_concurrent_streams(h2.max_concurrent_streams)
        // An HPACK bomb is cut off where its decoded size passes the head limit of HTTP/1.
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
    options
}

/// One HTTP/2 connection, from the h2 handshake to its close.
pub(super) struct H2Connection<'a, A> {
    pub app: &'a Arc<A>,
    pub answers: &'a Arc<dyn Refusals>,
    pub limits: ConnectionLimits,
    pub h2: H2Limits,
    pub counts: &'a Arc<ConnectionCounts>,
    pub worker: usize,
    pub access_log: &'a Arc<AccessLog>,
}

impl<A: HttpServerApp + Send + Sync + 'static> H2Connection<'_, A> {
    pub async fn serve(self, mut stream: EdgeTlsStream, shutdown: &ShutdownWatch) {
        // h2 flushes after every DATA frame; the connection's task reads whenever it runs.
        stream.defer_flushes();
        let certificate = stream.certificate().cloned();
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: None,
            socket_digest: stream.get_socket_digest(),
        });
        let options = h2_options(&self.limits, self.h2);
        let handshake = handshake(Box::new(stream), Some(options));
        let mut conn = match tokio::time::timeout(self.limits.header_timeout, handshake).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                log::debug!("HTTP/2 handshake failed: {e}");
                return;
            }
            Err(_) => {
                log::debug!("HTTP/2 handshake not finished within server.header_timeout_secs");
                return;
            }
        };
        let mut stop_signal = shutdown.clone();
        let mut stopping = *stop_signal.borrow();
        if stopping {
            conn.graceful_shutdown();
        }
        let mut malformed = 0;
        // The connection's streams are answered inside this task, not each in a task of its
        // own: a stream's task woke the connection's task after every response, which then ran
        // at once and flushed that response alone (one `writev` per 4 KiB answer). Here every
        // request the client sent is accepted first, then every stream that can run does, and
        // only then does the connection write (when accepting is polled next): their frames
        // leave together (`docs/benchmarks.md`, HTTPS).
        let mut streams = FuturesUnordered::new();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stop_signal.changed(), if !stopping => {
                    conn.graceful_shutdown();
                    stopping = true;
                    continue;
                }
                accepted = HttpSession::from_h2_conn(&mut conn, digest.clone()) => accepted,
                () = poll_fn(|cx| run_ready_streams(&mut streams, cx)) => continue,
                // Idle: no stream is being answered (a new timer each time round the loop).
                () = tokio::time::sleep(self.limits.keepalive_timeout),
                    if !stopping && streams.is_empty() => break,
            };
            let session = match accepted {
                // Clients often close without a GOAWAY: not worth more than debug.
                Err(e) => {
                    log::debug!("HTTP/2 connection ended: {e}");
                    break;
                }
                Ok(None) => break,
                Ok(Some(H2Accept::Rejected)) => {
                    malformed += 1;
                    if malformed >= MAX_MALFORMED_STREAMS {
                        log::debug!("HTTP/2 connection closed after {malformed} malformed streams");
                        break;
                    }
                    continue;
                }
                Ok(Some(H2Accept::Session(session))) => session,
            };
            // Busy from its acceptance, so a graceful stop waits for it.
            let busy = self.counts.enter_busy(self.worker);
            streams.push(self.answer_stream(session, busy, certificate.as_deref(), shutdown));
        }
        // Streams still answering finish (their writes fail at once if the client is gone),
        // within the send timeout.
        let _ = tokio::time::timeout(self.limits.send_timeout, async {
            while streams.next().await.is_some() {}
        })
        .await;
    }

    /// Answers one stream: `421` if the connection's certificate does not cover its authority,
    /// else through the application.
    async fn answer_stream(
        &self,
        mut session: HttpSession,
        _busy: BusyGuard<'_>,
        certificate: Option<&LoadedCertificate>,
        shutdown: &ShutdownWatch,
    ) {
        // A client that keeps a stream's window shut cannot hold its answer forever.
        session.set_write_timeout(Some(self.limits.send_timeout));
        if !authority_covered(&session, certificate) {
            misdirected(&mut session, self.answers.as_ref(), self.access_log).await;
            return;
        }
        self.app
            .process_new_http(ServerSession::new_http2(session), shutdown)
            .await;
    }
}

/// Polls every stream that is ready to run; ready once at least one has finished.
fn run_ready_streams<F: Future<Output = ()>>(
    streams: &mut FuturesUnordered<F>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let mut finished = false;
    while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
        finished = true;
    }
    if finished {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

/// Whether the certificate of the connection covers the stream's `:authority` (or its `Host`,
/// which RFC 9113 §8.3.1 allows instead); without either, routing answers it as HTTP/1.1
/// without `Host`.
fn authority_covered(session: &HttpSession, certificate: Option<&LoadedCertificate>) -> bool {
    let req = session.req_header();
    let authority = req
        .uri
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            req.headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host).to_string())
        });
    match (authority, certificate) {
        (Some(authority), Some(certificate)) => {
            certificate_covers(certificate, &normalize_name(&authority))
        }
        _ => true,
    }
}

/// Answers `421 Misdirected Request` in the application's words, counted under `bucket=""`.
async fn misdirected(session: &mut HttpSession, answers: &dyn Refusals, access_log: &AccessLog) {
    let started = Instant::now();
    let req = session.req_header();
    let method = req.method.as_str().to_string();
    let host = req
        .uri
        .authority()
        .map_or_else(|| "-".to_string(), |a| a.to_string());
    let response = answers.refusal_response(Refusal::Misdirected, req.uri.path());
    let written = async {
        session.write_response_header(Box::new(response.head()?), false)?;
        session.write_body(response.body.clone(), true).await
    }
    .await;
    let ssl_digest = session.digest().and_then(|d| d.ssl_digest.clone());
    let request = RefusedRequest {
        client: session.client_addr().and_then(|a| a.as_inet()).copied(),
        host: &host,
        method: &method,
        tls: ssl_digest.as_ref().map_or("-", |d| d.version.as_ref()),
        proto: "h2",
    };
    response.record(&request, written.is_ok(), started.elapsed(), access_log);
}
