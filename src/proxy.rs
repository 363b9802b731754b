//! The data plane: originpull's Pingora `ProxyHttp` implementation. Every request is answered in
//! `request_filter` (route → key → hit, redirect or error); nothing is proxied inline, so
//! `upstream_peer` is never reached. `request_filter` counts each request in the metrics, and
//! `logging` writes its access log line.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::{header, Method};
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::access_log::{AccessLog, AccessRecord};
use crate::compress::Compressor;
use crate::config::PullMode;
use crate::cors::{answer_preflight, is_preflight, CorsReply};
use crate::fill::{CopySource, Filler};
use crate::key::{encode_origin_path, safe_query, KeyError, RequestTarget, MAX_KEY_BYTES};
use crate::log_summary::SummarizedLog;
use crate::metrics::{BucketMetrics, RequestResult};
use crate::mirror::MirrorMiss;
use crate::origin_choice::Origin;
use crate::redirect::{location, write_redirect};
use crate::reload::{ConfigHandle, LiveConfig};
use crate::respond::{write_error, ErrorCode, Reply, RequestId};
use crate::route::{Addressed, Bucket};
use crate::serve::{serve_hit, HitOutcome};
use crate::store::{BucketStore, StoreError};

/// `Retry-After` of a 503 while the bucket store is down (it usually returns within seconds).
const STORE_RETRY_AFTER_SECS: &str = "5";

/// Failures every request can meet while the store (or a disk) fails: summarized, not a line
/// per request.
static STORE_READ_FAILURES: SummarizedLog = SummarizedLog::new(
    log::Level::Error,
    module_path!(),
    "failed reads of the bucket store",
);
static FAILED_REQUESTS: SummarizedLog = SummarizedLog::new(
    log::Level::Error,
    module_path!(),
    "requests failed with 500",
);

/// Shared by every worker thread's service: each field is a handle to one shared state.
#[derive(Clone)]
pub struct OriginPull {
    pub config: ConfigHandle,
    pub store: Arc<dyn BucketStore>,
    pub filler: Filler,
    pub access_log: Arc<AccessLog>,
    pub compressor: Compressor,
}

/// What one request became, for `logging`.
pub struct RequestCtx {
    /// For the access log's duration; not read (so not taken) while the log is off.
    started: Option<Instant>,
    /// The request id, and the CORS headers once routed: what every response carries.
    reply: Reply,
    /// The bucket, for the access log (kept only while it is on); `None` when the host matched
    /// no bucket.
    bucket: Option<Arc<Bucket>>,
    key: String,
    /// The origin a redirect pointed at (kept only for the access log: a reference shared by
    /// every worker costs a cache-line transfer per request).
    origin: Option<Arc<Origin>>,
    result: RequestResult,
    body_bytes: u64,
}

#[async_trait]
impl ProxyHttp for OriginPull {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: (!self.access_log.is_off()).then(Instant::now),
            reply: Reply::new(RequestId::new()),
            bucket: None,
            key: String::new(),
            origin: None,
            result: RequestResult::Error,
            body_bytes: 0,
        }
    }

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // No response compression module: it would compress every response again, while
        // `compress` serves variants made once; a module context per request costs every hit.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // One configuration generation for the whole request, even if a reload lands meanwhile.
        let live = self.config.for_request();
        let (bucket, answered) = match live.routes.route(session.req_header()) {
            Addressed::Bucket(bucket) => {
                (Some(bucket), self.answer(session, ctx, &live, bucket).await)
            }
            Addressed::Nowhere(why) => (
                None,
                write_error(session, why.code, why.detail, &ctx.reply, &[])
                    .await
                    .map(|n| (why.result, n)),
            ),
        };
        let (result, body_bytes) = match &answered {
            Ok(answer) => *answer,
            Err(_) => (RequestResult::Error, 0),
        };
        // Counted here, while the bucket is borrowed from the generation: keeping a reference
        // for `logging` would write the bucket's shared reference count twice per request.
        match bucket {
            Some(bucket) => bucket.metrics.count_request(result, body_bytes),
            None => BucketMetrics::unrouted().count_request(result, body_bytes),
        }
        ctx.result = result;
        ctx.body_bytes = body_bytes;
        answered.map(|_| true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        // request_filter answers every request; reaching here is a bug, not a client error.
        Error::e_explain(ErrorType::InternalError, "originpull never proxies inline")
    }

    /// An error after routing (a store read failing, a write failing): answer with the XML
    /// `InternalError` if nothing was sent yet, else close the connection, since a body already
    /// started cannot be completed.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let mut error_code = 0;
        if session.response_written().is_none() && !client_gone(e) {
            FAILED_REQUESTS.note(|| format!("request {} failed: {e}", ctx.reply.request_id));
            session.set_keepalive(None);
            if write_error(session, ErrorCode::InternalError, None, &ctx.reply, &[])
                .await
                .is_ok()
            {
                error_code = 500;
            }
        }
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    /// A client that goes away mid-response is ordinary traffic: the access log records the
    /// request (`result=error`), and only debug logging mentions it.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, e: &Error) -> bool {
        let gone = client_gone(e);
        if gone {
            log::debug!(
                "request {}: the client went away: {e}",
                ctx.reply.request_id
            );
        }
        gone
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        // Metrics were counted in `request_filter`, which every request reaches.
        if error.is_some() {
            ctx.result = RequestResult::Error;
        }
        if self.access_log.is_off() {
            return;
        }
        let req = session.req_header();
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        let status = session
            .response_written()
            .map_or(0, |resp| resp.status.as_u16());
        self.access_log.write(&AccessRecord {
            time: SystemTime::now(),
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            host,
            bucket: ctx.bucket.as_ref().map_or("", |b| b.config.name.as_str()),
            method: req.method.as_str(),
            key: &ctx.key,
            origin: ctx.origin.as_ref().map_or("-", |o| o.label.as_str()),
            status,
            result: ctx.result.as_str(),
            bytes: ctx.body_bytes,
            duration: ctx
                .started
                .map_or(Duration::ZERO, |started| started.elapsed()),
            request_id: ctx.reply.request_id.as_str(),
        });
    }
}

impl OriginPull {
    /// Routes and answers one request; returns how, and the body bytes written.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        live: &LiveConfig,
        bucket: &Arc<Bucket>,
    ) -> Result<(RequestResult, u64)> {
        if !self.access_log.is_off() {
            ctx.bucket = Some(bucket.clone());
        }
        ctx.reply.cors = CorsReply::for_request(&bucket.config.cors, session.req_header());
        let name = bucket.config.name.as_str();

        if is_preflight(session.req_header()) {
            return answer_preflight(session, &bucket.config.cors, &mut ctx.reply).await;
        }

        let method = &session.req_header().method;
        if method != Method::GET && method != Method::HEAD {
            // Pingora would drain a refused upload to reuse the connection; closing is cheaper.
            if request_has_body(session) {
                session.set_keepalive(None);
            }
            let allow = [(header::ALLOW, "GET, HEAD")];
            let n = write_error(
                session,
                ErrorCode::MethodNotAllowed,
                None,
                &ctx.reply,
                &allow,
            )
            .await?;
            return Ok((RequestResult::MethodNotAllowed, n));
        }

        let index_document = bucket.config.index_document.as_deref();
        let (key, folder) =
            match RequestTarget::parse(session.req_header().uri.path(), index_document) {
                Ok(RequestTarget::Object { key, folder }) => (key, folder),
                Ok(RequestTarget::Folder { path }) => {
                    ctx.key = path.clone();
                    return self.redirect_folder(session, ctx, bucket, &path).await;
                }
                Err(e) => {
                    let (code, detail) = match e {
                        KeyError::Invalid(why) => (ErrorCode::InvalidUri, why.to_string()),
                        KeyError::TooLong => (
                            ErrorCode::KeyTooLong,
                            format!("Keys are at most {MAX_KEY_BYTES} bytes."),
                        ),
                    };
                    let n = write_error(session, code, Some(&detail), &ctx.reply, &[]).await?;
                    return Ok((RequestResult::BadRequest, n));
                }
            };
        if !self.access_log.is_off() {
            // Only the access log reads it back.
            ctx.key = key.as_str().to_string();
        }

        // Memory first: a hit from memory needs neither the copy schedule nor a store look-up.
        let in_memory = self.store.open_in_memory(name, &key);
        let copy_blocked = match bucket.pull {
            Some(_) if in_memory.is_none() => self.filler.copy_blocked(bucket, &key),
            _ => None,
        };
        let mut store_failed = false;
        if copy_blocked.is_none() {
            let opened = match in_memory {
                Some(object) => Ok(Some(object)),
                None => self.store.open(name, &key).await,
            };
            match opened {
                Ok(Some(object)) => {
                    let fill = &live.config.fill;
                    self.filler
                        .revalidate_if_due(bucket, &key, object.meta(), fill);
                    let req = session.req_header();
                    let hit = self.compressor.select(req, bucket, &key, object).await;
                    let (outcome, n) = serve_hit(session, hit, &ctx.reply).await?;
                    let result = match outcome {
                        HitOutcome::Served | HitOutcome::PreconditionFailed => RequestResult::Hit,
                        HitOutcome::NotModified => RequestResult::NotModified,
                    };
                    return Ok((result, n));
                }
                Ok(None) => {}
                // A damaged object is treated as missing, so origin-pull replaces it.
                Err(StoreError::Corrupt(why)) => {
                    STORE_READ_FAILURES.note(|| format!("bucket {name}: {why}"));
                }
                // The remote store is down: origin-pull (below) stands in for it where it is on.
                Err(StoreError::Unavailable(why)) => {
                    STORE_READ_FAILURES
                        .note(|| format!("bucket {name}: opening {:?}: {why}", key.as_str()));
                    store_failed = true;
                }
                Err(e) => {
                    STORE_READ_FAILURES
                        .note(|| format!("bucket {name}: opening {:?}: {e}", key.as_str()));
                    let n = write_error(session, ErrorCode::InternalError, None, &ctx.reply, &[])
                        .await?;
                    return Ok((RequestResult::Error, n));
                }
            }
        }

        // `/docs` where `docs/index.html` is stored: the folder's URL, as S3 and COS static
        // websites answer, so the page's relative links resolve.
        if let (None, Some(index), false) = (&folder, index_document, store_failed) {
            if let Some(index_key) = key.in_folder(index) {
                if let Ok(Some(_)) = self.store.open(name, &index_key).await {
                    let mut target = encode_origin_path(&format!("{}/", key.as_str()));
                    if let Some(query) = session.req_header().uri.query() {
                        target.push('?');
                        target.push_str(&safe_query(query));
                    }
                    let n = write_redirect(session, 302, target, &ctx.reply).await?;
                    return Ok((RequestResult::Redirect, n));
                }
            }
        }

        let policy = bucket
            .pull
            .as_ref()
            .map(|pull| pull.policy_for(key.as_str()));
        let Some(policy) = policy.filter(|p| p.enabled) else {
            if store_failed {
                let retry = [(header::RETRY_AFTER, STORE_RETRY_AFTER_SECS)];
                let n = write_error(
                    session,
                    ErrorCode::ServiceUnavailable,
                    None,
                    &ctx.reply,
                    &retry,
                )
                .await?;
                return Ok((RequestResult::Error, n));
            }
            let n = write_error(session, ErrorCode::NoSuchKey, None, &ctx.reply, &[]).await?;
            return Ok((RequestResult::NotFound, n));
        };
        let query = session.req_header().uri.query();
        // A browser would fail through the redirect (fonts, fetch(), stylesheets of the
        // bucket's pages): the miss is mirrored instead.
        let cors_mirrored = policy.cors_misses == PullMode::Mirror
            && ctx.reply.cors.redirect_would_fail(session.req_header());
        if policy.mode == PullMode::Mirror || cors_mirrored {
            let Some(pull) = bucket.pull.as_ref() else {
                let n = write_error(session, ErrorCode::NoSuchKey, None, &ctx.reply, &[]).await?;
                return Ok((RequestResult::NotFound, n));
            };
            let miss = MirrorMiss {
                filler: &self.filler,
                store: self.store.as_ref(),
                compressor: &self.compressor,
                bucket,
                pull,
                policy,
                key: &key,
                source: CopySource {
                    folder,
                    query: query.map(str::to_string),
                    revalidate: None,
                },
                limits: &live.config.fill,
                reply: &ctx.reply,
            };
            return miss.answer(session).await;
        }
        let Some(origin) = policy.origins.first_choice(key.as_str()) else {
            let n = write_error(session, ErrorCode::NoSuchKey, None, &ctx.reply, &[]).await?;
            return Ok((RequestResult::NotFound, n));
        };
        let target = location(
            origin.addr(),
            &policy.origin_path(folder.as_deref().unwrap_or(key.as_str())),
            query,
        );
        if !self.access_log.is_off() {
            ctx.origin = Some(origin.clone());
        }
        // HEAD asks about the object without wanting it: it is redirected but not copied.
        if session.req_header().method == Method::GET {
            match copy_blocked {
                Some(blocked) => self.filler.note_blocked_copy(bucket, blocked),
                None => {
                    let source = CopySource {
                        folder,
                        query: query.map(str::to_string),
                        revalidate: None,
                    };
                    self.filler
                        .start_copy_after_redirect(bucket, &key, source, &live.config.fill);
                }
            }
        }
        let n = write_redirect(session, policy.redirect_code, target, &ctx.reply).await?;
        Ok((RequestResult::Redirect, n))
    }

    /// A folder without an index document (`/`, `/docs/`): redirected to the same path at the
    /// origin and never copied, so an origin's directory listing never becomes an object.
    async fn redirect_folder(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        bucket: &Arc<Bucket>,
        path: &str,
    ) -> Result<(RequestResult, u64)> {
        let policy = bucket.pull.as_ref().map(|pull| pull.policy_for(path));
        let origin = policy
            .filter(|p| p.enabled)
            .and_then(|p| Some((p, p.origins.first_choice(path)?)));
        let Some((policy, origin)) = origin else {
            let n = write_error(session, ErrorCode::NoSuchKey, None, &ctx.reply, &[]).await?;
            return Ok((RequestResult::NotFound, n));
        };
        let target = location(
            origin.addr(),
            &policy.origin_path(path),
            session.req_header().uri.query(),
        );
        if !self.access_log.is_off() {
            ctx.origin = Some(origin.clone());
        }
        let n = write_redirect(session, policy.redirect_code, target, &ctx.reply).await?;
        Ok((RequestResult::Redirect, n))
    }
}

/// Whether `e` is the client's connection failing (reset, closed, unwritable); every request is
/// answered from here, so no other connection is involved.
/// The client left, or stopped reading for `server.send_timeout_secs`: ordinary traffic.
fn client_gone(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::WriteError
            | ErrorType::WriteTimedout
            | ErrorType::ReadError
            | ErrorType::ConnectionClosed
    )
}

fn request_has_body(session: &Session) -> bool {
    let headers = &session.req_header().headers;
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}
