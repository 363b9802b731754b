//! One copy of one object from its origin into the bucket, over Pingora's HTTP connector: the
//! origins chosen for the key tried in order ([`crate::pull::origin`]), HTTPS with the bucket's
//! roots, redirects followed to the bucket's own origins only, and the loop guard.
//!
//! Why the connector and not a subrequest through the proxy: a copy is a plain GET whose body
//! goes to disk, not to a client. With the connector the whole copy is one straight function:
//! the peer comes only from the configuration (or a redirect to a configured origin's host),
//! timeouts and size limits are checked between reads, and the stored object is committed only
//! after the body is known to be complete. A subrequest would route back through
//! `request_filter`/`upstream_peer` with a fake downstream and tee the body through the
//! (synchronous, in 0.9) body filters, spreading this logic over many hooks. The connector still
//! gives Pingora's connection pool, connect timeouts and TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, StatusCode, Uri};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::CopyEnd;
use crate::pull::origin::guard::guard_of;
use crate::pull::origin::{BucketPull, Origin, PullPolicy};
use originpull_config::{parse_origin_with, FillSettings, OriginAddr, OriginHost, Protocol};
use originpull_store::key::ObjectKey;
use originpull_store::{BucketStore, NewObject, ObjectMeta, StoreError, KEPT_ORIGIN_HEADERS};

/// Carries the request id of each response originpull writes; a copy that sees it in an
/// origin's answer has reached an originpull (a loop).
pub const REQUEST_ID_HEADER: &str = "x-originpull-request-id";

/// `User-Agent` of copies, so origin operators can tell them from visitors.
pub const USER_AGENT: &str = concat!(
    "originpull/",
    env!("CARGO_PKG_VERSION"),
    " (origin-pull copy)"
);

/// How long an origin that announced `Connection: close` gets to actually close, while we watch
/// for bytes beyond the declared `Content-Length`.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Pooled connections to an origin are kept this long when idle.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Why a copy stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Resolving, connecting or the TLS handshake failed: the next origin is tried.
    #[error("cannot reach the origin: {why}")]
    Unreachable { why: String, timed_out: bool },
    #[error("origin answered {0}")]
    OriginStatus(u16),
    #[error("origin error: {0}")]
    Origin(String),
    #[error("origin timed out: {0}")]
    Timeout(String),
    #[error("object larger than max_object_bytes ({limit})")]
    TooLarge { limit: u64 },
    #[error("no room in the store (store.max_bytes, store.min_free_bytes), even after eviction")]
    NoRoom,
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    #[error(
        "the origin's answer came from an originpull (it carries {REQUEST_ID_HEADER}): a pull loop"
    )]
    Loop,
    #[error("the origin redirected to {0}, which is not an origin of this bucket; not followed")]
    RedirectRefused(String),
    /// The origin redirected to another path (`/docs` → `/docs/`): that is its answer for this
    /// key, not the object, so nothing is stored.
    #[error("origin answered {} to another path, {}; not stored", .0.status, .0.url())]
    Moved(MovedTo),
}

/// Where an origin's redirect to another path points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedTo {
    pub status: u16,
    /// Parsed and checked as a configured origin is.
    pub origin: OriginAddr,
    /// The path (encoded, with its leading `/`) and `?query`, as the origin gave them.
    pub path_and_query: String,
    /// Whether `origin` is one of the bucket's origins (then the path is the bucket's too).
    pub at_bucket_origin: bool,
}

impl MovedTo {
    /// The absolute URL the origin redirected to.
    pub fn url(&self) -> String {
        format!("{}{}", self.origin.url_base(), self.path_and_query)
    }
}

impl CopyError {
    /// Whether the failure says the origin is unwell (marks it down after a few), as opposed to
    /// an answer about this one object (404) or a problem on our side.
    pub fn counts_against_origin(&self) -> bool {
        match self {
            CopyError::Unreachable { .. } | CopyError::Timeout(_) | CopyError::Origin(_) => true,
            CopyError::OriginStatus(status) => *status >= 500,
            _ => false,
        }
    }
}

impl From<Box<Error>> for CopyError {
    fn from(e: Box<Error>) -> Self {
        match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                CopyError::Timeout(e.to_string())
            }
            _ => CopyError::Origin(e.to_string()),
        }
    }
}

/// What a copy asks for: the key's pull policy and the path (with query) asked of the origin.
pub struct CopyRequest<'a> {
    pub pull: &'a BucketPull,
    pub policy: &'a PullPolicy,
    pub key: &'a ObjectKey,
    /// Encoded path, with `?query` when `pass_query_string` is on.
    pub path_and_query: String,
    /// For a revalidation: the stored object's origin validators, sent as `If-None-Match` /
    /// `If-Modified-Since` (a `304` then ends the copy as `OriginStatus(304)`).
    pub conditional: Option<Validators>,
}

/// The origin's validators of a stored object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// Copies the request's object into `bucket` from the first of its origins that can be
/// reached; returns the result with the origin that gave it (the last one tried on failure).
/// With a `sink` (mirror mode), the answer's head and body are also offered to the client
/// waiting for them.
pub async fn copy_object(
    connector: &Connector,
    store: &dyn BucketStore,
    bucket: &str,
    request: &CopyRequest<'_>,
    limits: &FillSettings,
    sink: &mut Option<MirrorSink>,
) -> (Result<ObjectMeta, CopyError>, Option<Arc<Origin>>) {
    let mut purpose = Purpose::Copy {
        store,
        bucket,
        sink,
    };
    let (result, origin) =
        from_first_reachable(connector, bucket, request, limits, &mut purpose).await;
    let result = result.and_then(|fetched| match fetched {
        Fetched::Stored(meta) => Ok(meta),
        Fetched::Head(_) => Err(CopyError::Origin("a copy got only a head".into())),
    });
    (result, origin)
}

/// The origin's answer to a `HEAD` of the request's object (redirects followed as for a copy):
/// what mirror mode tells a `HEAD` on a miss. Nothing is stored.
pub async fn head_object(
    connector: &Connector,
    bucket: &str,
    request: &CopyRequest<'_>,
    limits: &FillSettings,
) -> (Result<ResponseHeader, CopyError>, Option<Arc<Origin>>) {
    let (result, origin) =
        from_first_reachable(connector, bucket, request, limits, &mut Purpose::Head).await;
    let result = result.and_then(|fetched| match fetched {
        Fetched::Head(head) => Ok(head),
        Fetched::Stored(_) => Err(CopyError::Origin("a HEAD stored an object".into())),
    });
    (result, origin)
}

/// What is done with an origin's answer.
enum Purpose<'a> {
    /// Store the body (offering it to a mirror client too).
    Copy {
        store: &'a dyn BucketStore,
        bucket: &'a str,
        sink: &'a mut Option<MirrorSink>,
    },
    /// Only the head of a `HEAD`.
    Head,
}

enum Fetched {
    Stored(ObjectMeta),
    Head(ResponseHeader),
}

/// Tries the request's origins in order until one can be reached, recording each origin's
/// health; returns the last result and the origin that gave it.
async fn from_first_reachable(
    connector: &Connector,
    bucket: &str,
    request: &CopyRequest<'_>,
    limits: &FillSettings,
    purpose: &mut Purpose<'_>,
) -> (Result<Fetched, CopyError>, Option<Arc<Origin>>) {
    let mut last = (
        Err(CopyError::Origin("no origin to copy from".into())),
        None,
    );
    let candidates = request.policy.origins.candidates(request.key.as_str());
    // An origin whose breaker is open is passed over while another can be tried; the last
    // candidate is waited for, so the copy pauses rather than fails.
    let last_index = candidates.len().saturating_sub(1);
    for (index, origin) in candidates.into_iter().enumerate() {
        let guard = guard_of(bucket, &origin.label);
        if index < last_index && guard.is_open() {
            continue;
        }
        let permit = guard.admit(limits).await;
        let result = fetch_from(connector, request, &origin, limits, purpose).await;
        drop(permit);
        let unwell = matches!(&result, Err(e) if e.counts_against_origin());
        guard.record(unwell, limits, &origin.label);
        match &result {
            Err(e) if e.counts_against_origin() => origin.health.record_failure(
                limits.origin_down_after_failures,
                Duration::from_secs(limits.origin_cool_off_secs),
            ),
            Err(CopyError::Store(_)) => {}
            _ => origin.health.record_success(),
        }
        let unreachable = matches!(result, Err(CopyError::Unreachable { .. }));
        last = (result, Some(origin));
        if !unreachable {
            break;
        }
    }
    last
}

/// One origin: its answer (redirects followed), then the body into the store or just the head.
async fn fetch_from(
    connector: &Connector,
    request: &CopyRequest<'_>,
    origin: &Origin,
    limits: &FillSettings,
    purpose: &mut Purpose<'_>,
) -> Result<Fetched, CopyError> {
    let method = match purpose {
        Purpose::Copy { .. } => "GET",
        Purpose::Head => "HEAD",
    };
    let (mut session, response, peer) =
        open_response(connector, request, origin, limits, method).await?;
    let Purpose::Copy {
        store,
        bucket,
        sink,
    } = purpose
    else {
        session.shutdown().await;
        return Ok(Fetched::Head(response));
    };
    // A failure from here on is not `Unreachable`: no other origin is tried after the head.
    let received = receive_body(
        &mut session,
        *store,
        bucket,
        request.key,
        &response,
        limits,
        sink,
    )
    .await;
    match received {
        Ok((writer, object)) => {
            release_or_check_excess(connector, session, &peer).await?;
            // The body is whole: the mirror client's answer ends now, not after the commit's
            // `fsync`, so its next request on the connection does not wait for the disk.
            if let Some(mut mirror) = sink.take() {
                mirror.offer(MirrorEvent::End);
            }
            Ok(Fetched::Stored(writer.commit(object).await?))
        }
        Err(e) => {
            session.shutdown().await;
            Err(e)
        }
    }
}

/// Where one request of a copy goes: the configured origin, or a host it redirected to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// Parsed and checked as a configured origin is.
    origin: OriginAddr,
    path_and_query: String,
}

/// One origin: the request, then each redirect hop allowed; returns the session positioned at
/// the final answer's body, its head, and the peer (to pool the connection after).
async fn open_response(
    connector: &Connector,
    request: &CopyRequest<'_>,
    origin: &Origin,
    limits: &FillSettings,
    method: &str,
) -> Result<(HttpSession, ResponseHeader, HttpPeer), CopyError> {
    let mut target = Target {
        origin: origin.addr().clone(),
        path_and_query: request.path_and_query.clone(),
    };
    let mut hops = 0;
    loop {
        let peer = target_peer(&target, request.pull, limits).await?;
        let (mut session, response) =
            exchange(connector, &peer, &target, request, limits, method).await?;
        if response.headers.contains_key(REQUEST_ID_HEADER) {
            session.shutdown().await;
            return Err(CopyError::Loop);
        }
        let status = response.status;
        if is_followed_redirect(status) {
            session.shutdown().await;
            let next = redirect_target(&target, &response)?;
            let at_bucket_origin = request.pull.may_follow_to(&next.origin.host_text());
            // Only a redirect that keeps the path (http → https, another host) leads to the
            // object; one to another path is the origin's answer for this key.
            if !same_path(&target.path_and_query, &next.path_and_query) {
                return Err(CopyError::Moved(MovedTo {
                    status: status.as_u16(),
                    origin: next.origin,
                    path_and_query: next.path_and_query,
                    at_bucket_origin,
                }));
            }
            if !at_bucket_origin {
                return Err(CopyError::RedirectRefused(next.origin.authority));
            }
            if hops >= request.policy.follow_redirects {
                return Err(CopyError::OriginStatus(status.as_u16()));
            }
            hops += 1;
            target = next;
            continue;
        }
        return Ok((session, response, peer));
    }
}

fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Connects to `peer` and sends the copy's request; returns the session with the answer's head.
async fn exchange(
    connector: &Connector,
    peer: &HttpPeer,
    target: &Target,
    request: &CopyRequest<'_>,
    limits: &FillSettings,
    method: &str,
) -> Result<(HttpSession, ResponseHeader), CopyError> {
    let (mut session, reused) = connector
        .get_http_session(peer)
        .await
        .map_err(unreachable)?;
    let response = match send_request(&mut session, target, request, limits, method).await {
        // A pooled connection the origin closed meanwhile fails before any answer: retry once
        // on a fresh connection, as Pingora's proxy does. A timeout is not retried.
        Err(CopyError::Origin(_)) if reused => {
            session.shutdown().await;
            let (fresh, _) = connector
                .get_http_session(peer)
                .await
                .map_err(unreachable)?;
            session = fresh;
            send_request(&mut session, target, request, limits, method).await
        }
        other => other,
    };
    match response {
        Ok(r) => Ok((session, r)),
        Err(e) => {
            session.shutdown().await;
            Err(e)
        }
    }
}

fn unreachable(e: Box<Error>) -> CopyError {
    CopyError::Unreachable {
        timed_out: matches!(e.etype(), ErrorType::ConnectTimedout),
        why: e.to_string(),
    }
}

/// Whether two encoded paths (each maybe with `?query`) name the same path, escapes decoded.
fn same_path(a: &str, b: &str) -> bool {
    let path = |p: &str| {
        let path = p.split('?').next().unwrap_or_default();
        percent_encoding::percent_decode_str(path).collect::<Vec<u8>>()
    };
    path(a) == path(b)
}

/// The target a redirect answer points at: same scheme rules as an origin (http or https).
fn redirect_target(from: &Target, response: &ResponseHeader) -> Result<Target, CopyError> {
    let status = response.status.as_u16();
    let location = response
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .ok_or(CopyError::OriginStatus(status))?;
    // A Location that is no URL is an answer we cannot use, like any other status.
    let bad = || CopyError::OriginStatus(status);
    if let Some(path) = location.strip_prefix('/').filter(|p| !p.starts_with('/')) {
        let uri: Uri = format!("/{path}").parse().map_err(|_| bad())?;
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        return Ok(Target {
            path_and_query,
            ..from.clone()
        });
    }
    let absolute = if location.starts_with("//") {
        format!("{}:{location}", from.origin.protocol.as_str())
    } else {
        location.to_string()
    };
    let uri: Uri = absolute.parse().map_err(|_| bad())?;
    let protocol = match uri.scheme_str() {
        Some("http") => Protocol::Http,
        Some("https") => Protocol::Https,
        // A relative path without a leading `/`: resolved against the current path's folder.
        None if uri.host().is_none() => {
            let folder_end = from.path_and_query.split('?').next().unwrap_or("/");
            let folder = &folder_end[..folder_end.rfind('/').map_or(1, |i| i + 1)];
            let joined: Uri = format!("{folder}{location}").parse().map_err(|_| bad())?;
            let path_and_query = joined
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            return Ok(Target {
                path_and_query,
                ..from.clone()
            });
        }
        _ => return Err(bad()),
    };
    // The same parser as the configuration's: user info, odd hosts and bad ports are refused.
    let authority = uri.authority().ok_or_else(bad)?.as_str();
    let origin = parse_origin_with(authority, protocol).map_err(|_| bad())?;
    Ok(Target {
        origin,
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    })
}

/// The peer for one request of a copy. Names are resolved here, asynchronously, because
/// `HttpPeer::new` resolves with blocking DNS and panics when the lookup fails. HTTPS peers
/// verify the certificate for the host (SNI is never empty: an empty one turns checks off).
async fn target_peer(
    target: &Target,
    pull: &BucketPull,
    limits: &FillSettings,
) -> Result<HttpPeer, CopyError> {
    let connect_timeout = Duration::from_millis(limits.connect_timeout_ms);
    let origin = &target.origin;
    let addr: SocketAddr = match &origin.host {
        OriginHost::Ipv4(ip) => SocketAddr::from((*ip, origin.port)),
        OriginHost::Ipv6(ip) => SocketAddr::from((*ip, origin.port)),
        OriginHost::Domain(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), origin.port));
            let mut addrs = tokio::time::timeout(connect_timeout, lookup)
                .await
                .map_err(|_| CopyError::Unreachable {
                    why: format!("resolving {name} timed out"),
                    timed_out: true,
                })?
                .map_err(|e| CopyError::Unreachable {
                    why: format!("resolving {name}: {e}"),
                    timed_out: false,
                })?;
            addrs.next().ok_or_else(|| CopyError::Unreachable {
                why: format!("{name} has no addresses"),
                timed_out: false,
            })?
        }
    };
    let tls = origin.protocol == Protocol::Https;
    let sni = if tls {
        origin.host_text()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, tls, sni);
    peer.options.connection_timeout = Some(connect_timeout);
    peer.options.total_connection_timeout = Some(connect_timeout);
    peer.options.idle_timeout = Some(POOL_IDLE);
    if tls {
        pull.tls_trust.apply(&mut peer);
        // Origins speak HTTP/1.1 to copies; the connector would otherwise offer h2 by ALPN.
        peer.options.alpn = pingora::protocols::ALPN::H1;
    }
    Ok(peer)
}

async fn send_request(
    session: &mut HttpSession,
    target: &Target,
    request: &CopyRequest<'_>,
    limits: &FillSettings,
    method: &str,
) -> Result<ResponseHeader, CopyError> {
    let io_timeout = Some(Duration::from_millis(limits.read_timeout_ms));
    session.set_read_timeout(io_timeout);
    session.set_write_timeout(io_timeout);
    let mut req = RequestHeader::build(method, target.path_and_query.as_bytes(), Some(8))?;
    req.insert_header(header::HOST, target.origin.authority.as_str())?;
    req.insert_header(header::ACCEPT_ENCODING, "identity")?;
    req.insert_header(header::USER_AGENT, USER_AGENT)?;
    for (name, value) in &request.pull.origin_headers {
        req.insert_header(name.clone(), value.as_str())?;
    }
    if let Some(validators) = &request.conditional {
        if let Some(etag) = &validators.etag {
            req.insert_header(header::IF_NONE_MATCH, etag.as_str())?;
        }
        if let Some(date) = &validators.last_modified {
            req.insert_header(header::IF_MODIFIED_SINCE, date.as_str())?;
        }
    }
    session.write_request_header(Box::new(req)).await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    session
        .response_header()
        .cloned()
        .ok_or_else(|| CopyError::Origin("no response header".into()))
}

/// Streams a 200's body into a new object; returns the unfinished writer with what to commit.
async fn receive_body(
    session: &mut HttpSession,
    store: &dyn BucketStore,
    bucket: &str,
    key: &ObjectKey,
    response: &ResponseHeader,
    limits: &FillSettings,
    sink: &mut Option<MirrorSink>,
) -> Result<(Box<dyn originpull_store::ObjectWriter>, NewObject), CopyError> {
    let status = response.status.as_u16();
    if status != 200 {
        return Err(CopyError::OriginStatus(status));
    }
    let declared = declared_length(response)?;
    let object = kept_object(response);
    if let Some(mirror) = sink.as_mut() {
        mirror.offer(MirrorEvent::Head(MirrorHead {
            object: object.clone(),
            length: declared,
        }));
    }
    let refused = if declared.is_some_and(|len| len > limits.max_object_bytes) {
        Some(CopyError::TooLarge {
            limit: limits.max_object_bytes,
        })
    } else if !store.has_room(bucket, declared.unwrap_or(0)) {
        Some(CopyError::NoRoom)
    } else {
        None
    };
    if let Some(refused) = refused {
        // Not stored; a mirror client still gets the object from the origin.
        if let Some(mirror) = sink.take() {
            pass_through(session, mirror).await?;
        }
        return Err(refused);
    }
    let mut writer = store.create(bucket, key).await?;
    writer.describe(&object);
    while let Some(chunk) = session.read_response_body().await? {
        if writer.written() + chunk.len() as u64 > limits.max_object_bytes {
            return Err(CopyError::TooLarge {
                limit: limits.max_object_bytes,
            });
        }
        if let Some(mirror) = sink.as_mut() {
            // A client slower than the origin is let go here (it catches up from the stored
            // object), so it never slows the copy, nor the other clients waiting for it.
            if !mirror.offer(MirrorEvent::Chunk(chunk.clone())) {
                *sink = None;
            }
        }
        writer.write(chunk).await?;
    }
    // Pingora reports a body cut short as an error; this guards the invariant regardless.
    if let Some(len) = declared {
        if writer.written() != len {
            return Err(CopyError::Origin(format!(
                "body has {} bytes, Content-Length said {len}",
                writer.written()
            )));
        }
    }
    Ok((writer, object))
}

/// An object over `max_object_bytes` is streamed to its mirror client and not stored: the
/// client's pace sets the pace here, since nobody else waits for these bytes.
async fn pass_through(session: &mut HttpSession, mirror: MirrorSink) -> Result<(), CopyError> {
    while let Some(chunk) = session.read_response_body().await? {
        if mirror.tx.send(MirrorEvent::Chunk(chunk)).await.is_err() {
            return Ok(());
        }
    }
    let _ = mirror.tx.send(MirrorEvent::End).await;
    Ok(())
}

/// What a mirror client is told while the copy runs. The channel closing without `End` or
/// `Failed` means the client fell behind and was let go: it reads the rest from the bucket.
#[derive(Debug)]
pub enum MirrorEvent {
    Head(MirrorHead),
    Chunk(Bytes),
    /// The body is complete and whole (it may still be being stored), or the object was
    /// stored by another copy before this one streamed anything.
    End,
    /// The copy ended without the object.
    Failed(CopyEnd),
}

#[derive(Debug)]
pub struct MirrorHead {
    /// Content type and kept origin headers, as the stored object will have them.
    pub object: NewObject,
    /// `Content-Length`, when the origin gave one.
    pub length: Option<u64>,
}

/// The copy's side of a mirror client's channel.
pub struct MirrorSink {
    tx: mpsc::Sender<MirrorEvent>,
}

impl MirrorSink {
    /// A sink and its client's receiver, buffering up to `chunks` body chunks.
    pub fn channel(chunks: usize) -> (MirrorSink, mpsc::Receiver<MirrorEvent>) {
        let (tx, rx) = mpsc::channel(chunks);
        (MirrorSink { tx }, rx)
    }

    /// Hands `event` over if there is room; `false` when the client is gone or behind.
    pub fn offer(&mut self, event: MirrorEvent) -> bool {
        self.tx.try_send(event).is_ok()
    }
}

/// `Some(len)` for a Content-Length body, `None` for a chunked one. A body delimited only by the
/// connection closing cannot be told apart from a cut-off one, so it is refused.
fn declared_length(response: &ResponseHeader) -> Result<Option<u64>, CopyError> {
    let chunked = response
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("chunked"))
        });
    if chunked {
        return Ok(None);
    }
    let Some(value) = response.headers.get(header::CONTENT_LENGTH) else {
        return Err(CopyError::Origin(
            "response has neither Content-Length nor chunked encoding; completeness cannot be verified".into(),
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| CopyError::Origin("invalid Content-Length".into()))
}

/// The metadata a copy keeps from the origin's response.
pub fn kept_object(response: &ResponseHeader) -> NewObject {
    let header_text = |name: &str| {
        response
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    NewObject {
        content_type: header_text("content-type"),
        headers: KEPT_ORIGIN_HEADERS
            .iter()
            .filter_map(|name| header_text(name).map(|v| (name.to_string(), v)))
            .collect(),
        origin_etag: header_text("etag"),
        origin_last_modified: header_text("last-modified"),
    }
}

/// After a complete body: bytes beyond the declared length mean the origin's Content-Length
/// was wrong and what we read is a prefix of the real object, so nothing may be stored.
/// On a keep-alive connection Pingora's reuse check sees excess bytes that arrived with the
/// body. On a connection the origin closes, only excess bytes arriving after the body are seen
/// (watched for until it closes): Pingora 0.9.1 keeps bytes read together with the end of the
/// body in a private buffer and offers no public way to ask about them.
async fn release_or_check_excess(
    connector: &Connector,
    session: HttpSession,
    peer: &HttpPeer,
) -> Result<(), CopyError> {
    let HttpSession::H1(mut h1) = session else {
        connector.release_http_session(session, peer, None).await;
        return Ok(());
    };
    let origin_keeps_alive = origin_wants_keepalive(h1.resp_header());
    h1.respect_keepalive();
    if origin_keeps_alive {
        if !h1.will_keepalive() {
            h1.shutdown().await;
            return Err(excess_bytes());
        }
        connector
            .release_http_session(HttpSession::H1(h1), peer, Some(POOL_IDLE))
            .await;
        return Ok(());
    }
    let mut stream = h1.into_inner();
    let mut probe = [0u8; 1];
    match tokio::time::timeout(CLOSE_GRACE, stream.read(&mut probe)).await {
        Ok(Ok(n)) if n > 0 => Err(excess_bytes()),
        // Closed, reset, or still open after the grace: nothing beyond the body arrived.
        _ => Ok(()),
    }
}

fn excess_bytes() -> CopyError {
    CopyError::Origin("origin sent more bytes than its Content-Length".into())
}

/// Whether the origin's response asked to keep the connection (HTTP/1.1 default, or an
/// explicit `Connection: keep-alive`).
fn origin_wants_keepalive(response: Option<&ResponseHeader>) -> bool {
    let Some(response) = response else {
        return false;
    };
    let connection = response
        .headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    match connection.as_deref() {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => response.version == http::Version::HTTP_11,
    }
}
