//! One copy of one object from its origin into the bucket, over Pingora's HTTP connector.
//!
//! Why the connector and not a subrequest through the proxy: a copy is a plain GET whose body
//! goes to disk, not to a client. With the connector the whole copy is one straight function:
//! the peer comes only from the configuration, timeouts and size limits are checked between
//! reads, and the stored object is committed only after the body is known to be complete. A
//! subrequest would route back through `request_filter`/`upstream_peer` with a fake downstream
//! and tee the body through the (synchronous, in 0.9) body filters, spreading this logic over
//! many hooks. The connector still gives Pingora's connection pool and connect timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use http::header;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use tokio::io::AsyncReadExt;

use crate::config::{FillSettings, OriginAddr, OriginHost};
use crate::key::ObjectKey;
use crate::store::{BucketStore, NewObject, ObjectMeta, StoreError, KEPT_ORIGIN_HEADERS};

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
    #[error("origin answered {0}")]
    OriginStatus(u16),
    #[error("origin error: {0}")]
    Origin(String),
    #[error("origin timed out: {0}")]
    Timeout(String),
    #[error("object larger than max_object_bytes ({limit})")]
    TooLarge { limit: u64 },
    #[error("store error: {0}")]
    Store(#[from] StoreError),
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

/// Copies `key` from `origin` into `bucket`; on success the object is committed, whole.
pub async fn copy_object(
    connector: &Connector,
    store: &dyn BucketStore,
    bucket: &str,
    origin: &OriginAddr,
    key: &ObjectKey,
    limits: &FillSettings,
) -> Result<ObjectMeta, CopyError> {
    let peer = origin_peer(origin, limits).await?;
    let (mut session, reused) = connector.get_http_session(&peer).await?;
    let response = match send_request(&mut session, origin, key, limits).await {
        // A pooled connection the origin closed meanwhile fails before any answer: retry once
        // on a fresh connection, as Pingora's proxy does. A timeout is not retried.
        Err(CopyError::Origin(_)) if reused => {
            session.shutdown().await;
            let (fresh, _) = connector.get_http_session(&peer).await?;
            session = fresh;
            send_request(&mut session, origin, key, limits).await
        }
        other => other,
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            session.shutdown().await;
            return Err(e);
        }
    };
    match receive_body(&mut session, store, bucket, key, &response, limits).await {
        Ok(writer_and_object) => {
            let (writer, object) = writer_and_object;
            release_or_check_excess(connector, session, &peer).await?;
            Ok(writer.commit(object).await?)
        }
        Err(e) => {
            session.shutdown().await;
            Err(e)
        }
    }
}

/// The peer for a copy. Names are resolved here, asynchronously, because `HttpPeer::new`
/// resolves with blocking DNS and panics when the lookup fails.
async fn origin_peer(origin: &OriginAddr, limits: &FillSettings) -> Result<HttpPeer, CopyError> {
    let connect_timeout = Duration::from_millis(limits.connect_timeout_ms);
    let addr: SocketAddr = match &origin.host {
        OriginHost::Ipv4(ip) => SocketAddr::from((*ip, origin.port)),
        OriginHost::Ipv6(ip) => SocketAddr::from((*ip, origin.port)),
        OriginHost::Domain(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), origin.port));
            let mut addrs = tokio::time::timeout(connect_timeout, lookup)
                .await
                .map_err(|_| CopyError::Timeout(format!("resolving {name}")))?
                .map_err(|e| CopyError::Origin(format!("resolving {name}: {e}")))?;
            addrs
                .next()
                .ok_or_else(|| CopyError::Origin(format!("{name} has no addresses")))?
        }
    };
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(connect_timeout);
    peer.options.total_connection_timeout = Some(connect_timeout);
    peer.options.idle_timeout = Some(POOL_IDLE);
    Ok(peer)
}

async fn send_request(
    session: &mut HttpSession,
    origin: &OriginAddr,
    key: &ObjectKey,
    limits: &FillSettings,
) -> Result<ResponseHeader, CopyError> {
    let io_timeout = Some(Duration::from_millis(limits.read_timeout_ms));
    session.set_read_timeout(io_timeout);
    session.set_write_timeout(io_timeout);
    let mut req = RequestHeader::build("GET", key.origin_path().as_bytes(), Some(4))?;
    req.insert_header(header::HOST, origin.authority.as_str())?;
    req.insert_header(header::ACCEPT_ENCODING, "identity")?;
    req.insert_header(header::USER_AGENT, USER_AGENT)?;
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
) -> Result<(Box<dyn crate::store::ObjectWriter>, NewObject), CopyError> {
    let status = response.status.as_u16();
    if status != 200 {
        return Err(CopyError::OriginStatus(status));
    }
    let declared = declared_length(response)?;
    if declared.is_some_and(|len| len > limits.max_object_bytes) {
        return Err(CopyError::TooLarge {
            limit: limits.max_object_bytes,
        });
    }
    let mut writer = store.create(bucket, key).await?;
    while let Some(chunk) = session.read_response_body().await? {
        if writer.written() + chunk.len() as u64 > limits.max_object_bytes {
            return Err(CopyError::TooLarge {
                limit: limits.max_object_bytes,
            });
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
    Ok((writer, new_object(response)))
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
fn new_object(response: &ResponseHeader) -> NewObject {
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
