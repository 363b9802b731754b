//! The data plane: originpull's Pingora `ProxyHttp` implementation, the executor of the
//! [`super::plan`]s. Every request is answered in `request_filter` (an ACME validation, or
//! route → plan → hit, redirect, mirror or error); nothing is proxied inline, so
//! `upstream_peer` is never reached.
//! `request_filter` counts each request in the metrics, and `logging` writes its access log
//! line.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::header;
use pingora::modules::http::HttpModules;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use super::compress::Compressor;
use super::cors::CorsReply;
use super::error_document::write_error_plan;
use super::mirror::MirrorMiss;
use super::plan::{self, CopyAction, ErrorPlan, Plan};
use super::preflight::answer_preflight;
use super::redirect::write_redirect;
use super::respond::{
    refusal_response, response_header, write_complete, write_error, ErrorCode, Reply, RequestId,
};
use super::serve::{serve_hit, HitOutcome};
use crate::access_log::{AccessLog, AccessRecord};
use crate::acme::challenges::{is_challenge_path, Challenges};
use crate::edge::connection::{Refusal, RefusalResponse, Refusals};
use crate::live::bucket::{Addressed, Bucket};
use crate::live::reload::{ConfigHandle, LiveConfig};
use crate::metrics::{BucketMetrics, RequestResult};
use crate::pull::copy::{Copies, CopySource};
use crate::pull::origin::Origin;
use originpull_store::key::ObjectKey;
use originpull_store::{BucketStore, StoreError, StoredObject};
use originpull_support::log_summary::SummarizedLog;

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
    pub copies: Copies,
    pub access_log: Arc<AccessLog>,
    pub compressor: Compressor,
    /// The HTTP-01 challenges of running ACME orders.
    pub challenges: Arc<Challenges>,
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
        if let Some(plan) = plan::for_challenge(session.req_header(), &self.challenges) {
            // An ACME server validating this node's order: answered before any bucket routing.
            let (result, body_bytes) = self.carry_out_unrouted(session, ctx, plan).await?;
            BucketMetrics::unrouted().count_request(result, body_bytes);
            if !self.access_log.is_off() {
                let path = session.req_header().uri.path();
                ctx.key = path.trim_start_matches('/').to_string();
            }
            ctx.result = result;
            ctx.body_bytes = body_bytes;
            return Ok(true);
        }
        // One configuration generation for the whole request, even if a reload lands meanwhile.
        let live = self.config.for_request();
        let (bucket, answered) = match live.routes.route(session.req_header()) {
            Addressed::Bucket(bucket) => {
                (Some(bucket), self.answer(session, ctx, &live, bucket).await)
            }
            Addressed::Nowhere(why) => (
                None,
                self.write_error_plan(session, ctx, "", &plan::for_unaddressed(why))
                    .await,
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
            // HTTP/2 names the host in `:authority`.
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("-");
        let status = session
            .response_written()
            .map_or(0, |resp| resp.status.as_u16());
        let tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map_or("-", |d| d.version.as_ref());
        let proto = if session.is_http2() { "h2" } else { "h1" };
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
            tls,
            proto,
        });
    }
}

impl OriginPull {
    /// Answers one request routed to `bucket`, following its [`plan`]; returns how, and the body
    /// bytes written.
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
        let path = session.req_header().uri.path();
        if is_challenge_path(path) {
            if let Some(key_authorization) = self.challenges.shared_answer(name, path).await {
                // Another node's order, validated through this node.
                let plan = Plan::KeyAuthorization(key_authorization);
                return self.carry_out(session, ctx, live, bucket, None, plan).await;
            }
        }
        let over_tls = session
            .digest()
            .is_some_and(|digest| digest.ssl_digest.is_some());
        if over_tls {
            ctx.reply.set_hsts(bucket.config.domains.hsts_max_age_secs);
        } else {
            let https_port = live.config.https.as_ref().map(|https| https.listen.port());
            if let Some(redirect) = plan::to_https(session.req_header(), bucket, https_port) {
                return self
                    .carry_out(session, ctx, live, bucket, None, redirect)
                    .await;
            }
        }
        let (key, folder) = match plan::for_request(session.req_header(), bucket) {
            Plan::Lookup { key, folder } => (key, folder),
            other => {
                return self
                    .carry_out(session, ctx, live, bucket, None, other)
                    .await
            }
        };
        if !self.access_log.is_off() {
            // Only the access log reads it back.
            ctx.key = key.as_str().to_string();
        }

        // Memory first: a hit from memory needs neither the copy schedule nor a store look-up.
        let in_memory = self.store.open_in_memory(name, &key);
        let copy_blocked = match &bucket.pull {
            Some(pull) if in_memory.is_none() => self.copies.copy_blocked(pull, &key),
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
                    return self.serve(session, ctx, live, bucket, &key, object).await
                }
                Ok(None) => {}
                // A damaged object is treated as missing, so origin-pull replaces it.
                Err(StoreError::Corrupt(why)) => {
                    STORE_READ_FAILURES.note(|| format!("bucket {name}: {why}"));
                }
                // The remote store is down: origin-pull stands in for it where it is on.
                Err(StoreError::Unavailable(why)) => {
                    STORE_READ_FAILURES
                        .note(|| format!("bucket {name}: opening {:?}: {why}", key.as_str()));
                    store_failed = true;
                }
                Err(e) => {
                    STORE_READ_FAILURES
                        .note(|| format!("bucket {name}: opening {:?}: {e}", key.as_str()));
                    let failed = ErrorPlan::internal();
                    return self.write_error_plan(session, ctx, name, &failed).await;
                }
            }
        }
        if let Some(page) = plan::folder_page(bucket, &key, folder.as_deref(), store_failed) {
            if let Ok(Some(_)) = self.store.open(name, &page).await {
                let redirect = plan::folder_redirect(session.req_header(), &key);
                return self
                    .carry_out(session, ctx, live, bucket, None, redirect)
                    .await;
            }
        }
        let req = session.req_header();
        let miss = plan::for_miss(
            req,
            bucket,
            &key,
            folder.clone(),
            store_failed,
            copy_blocked,
            &ctx.reply.cors,
        );
        let lookup = Some((&key, folder));
        self.carry_out(session, ctx, live, bucket, lookup, miss)
            .await
    }

    /// A hit: the representation [`Compressor`] picks, served; a revalidation started when due.
    async fn serve(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        live: &LiveConfig,
        bucket: &Arc<Bucket>,
        key: &ObjectKey,
        object: Box<dyn StoredObject>,
    ) -> Result<(RequestResult, u64)> {
        if let Some(pull) = &bucket.pull {
            let fill = &live.config.fill;
            self.copies
                .revalidate_if_due(pull, key, object.meta(), fill);
        }
        let req = session.req_header();
        let hit = self.compressor.select(req, bucket, key, object).await;
        let (outcome, n) = serve_hit(session, hit, &ctx.reply).await?;
        let result = match outcome {
            HitOutcome::Served | HitOutcome::PreconditionFailed => RequestResult::Hit,
            HitOutcome::NotModified => RequestResult::NotModified,
        };
        Ok((result, n))
    }

    /// Carries out a plan other than a look-up. `lookup` is the key (and folder) a miss was
    /// planned for.
    async fn carry_out(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        live: &LiveConfig,
        bucket: &Arc<Bucket>,
        lookup: Option<(&ObjectKey, Option<String>)>,
        plan: Plan<'_>,
    ) -> Result<(RequestResult, u64)> {
        match plan {
            Plan::Error(error) => {
                let name = bucket.config.name.as_str();
                self.write_error_plan(session, ctx, name, &error).await
            }
            Plan::Preflight => answer_preflight(session, &bucket.config.cors, &mut ctx.reply).await,
            Plan::Redirect(redirect) => {
                if !self.access_log.is_off() {
                    ctx.origin = redirect.origin.cloned();
                }
                if let (Some((key, _)), Some(pull)) = (lookup, &bucket.pull) {
                    let fill = &live.config.fill;
                    match redirect.copy {
                        CopyAction::None => {}
                        CopyAction::NoteBlocked(blocked) => {
                            self.copies.note_blocked_copy(pull, blocked)
                        }
                        CopyAction::Start(source) => {
                            self.copies
                                .start_copy_after_redirect(pull, key, source, fill);
                        }
                    }
                }
                let n =
                    write_redirect(session, redirect.status, redirect.location, &ctx.reply).await?;
                Ok((RequestResult::Redirect, n))
            }
            Plan::Mirror { pull, policy } => {
                let Some((key, folder)) = lookup else {
                    return Error::e_explain(ErrorType::InternalError, "a mirror without a key");
                };
                let query = session.req_header().uri.query();
                let miss = MirrorMiss {
                    copies: &self.copies,
                    store: self.store.as_ref(),
                    compressor: &self.compressor,
                    bucket,
                    pull,
                    policy,
                    key,
                    source: CopySource {
                        folder,
                        query: query.map(str::to_string),
                        revalidate: None,
                    },
                    limits: &live.config.fill,
                    reply: &ctx.reply,
                };
                // Boxed: a mirror miss holds the origin connection's state (14 KiB), which
                // would otherwise be part of every request's future, copied per request.
                Box::pin(miss.answer(session)).await
            }
            Plan::Lookup { .. } => {
                Error::e_explain(ErrorType::InternalError, "a look-up planned twice")
            }
            plan @ Plan::KeyAuthorization(_) => self.carry_out_unrouted(session, ctx, plan).await,
        }
    }

    /// Carries out a plan that needs no bucket: an ACME validation's answer.
    async fn carry_out_unrouted(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        plan: Plan<'_>,
    ) -> Result<(RequestResult, u64)> {
        match plan {
            Plan::KeyAuthorization(key_authorization) => {
                let mut resp = response_header(http::StatusCode::OK, &ctx.reply)?;
                resp.insert_header(header::CONTENT_TYPE, "application/octet-stream")?;
                let n = write_complete(session, resp, key_authorization.into()).await?;
                Ok((RequestResult::Hit, n))
            }
            other => Error::e_explain(
                ErrorType::InternalError,
                format!("{other:?} needs a bucket"),
            ),
        }
    }

    /// Writes `error` for a request to bucket `bucket` (`""`: routed to none).
    async fn write_error_plan(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        bucket: &str,
        error: &ErrorPlan,
    ) -> Result<(RequestResult, u64)> {
        write_error_plan(session, self.store.as_ref(), bucket, error, &ctx.reply).await
    }
}

impl Refusals for OriginPull {
    fn refusal_response(&self, refusal: Refusal, resource: &str) -> RefusalResponse {
        refusal_response(refusal, resource)
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
