//! Mirror mode (`origin_pull.mode: mirror`): a miss is answered from the origin while the
//! object is copied into the bucket, so the client never sees the origin and needs no second
//! connection.
//!
//! - A plain GET that finds no copy of the key running leads a new copy ([`Copies::start_mirror`])
//!   and streams its body as it arrives: `200` with the object's content type and kept headers,
//!   `Content-Length` when the origin gave one. If the copy fails mid-body, the response ends
//!   abnormally (the connection closes before the declared length or the chunked terminator).
//!   It ends as soon as the body is whole, while the object is still being committed, so the
//!   client's next request on the connection does not wait for the disk's `fsync`.
//! - Every other miss (a second GET of the same key, a Range, a conditional) waits for the copy
//!   of the key (one origin GET however many clients) and is then served from the bucket as a
//!   hit, so ranges and conditionals get exactly a hit's answer.
//! - A leading client slower than the origin is let go by the copy once its buffer of a few
//!   chunks is full: the copy keeps the origin's pace (the other clients of the key wait for the
//!   copy, not for the slow client) and the slow client reads the rest from the bucket once the
//!   object is committed. Memory per client is that buffer, whatever the object's size.
//! - A HEAD asks the origin for a HEAD and stores nothing. 404/410 from the origin is
//!   `404 NoSuchKey` (or the bucket's error document), remembered for
//!   `fill.negative_ttl_secs`; a failing origin is `502
//!   BadGateway`, a silent one `504 GatewayTimeout`; the origin's own error page never reaches
//!   the client. Objects over `fill.max_object_bytes` are streamed and not stored.
//!
//! What of pingora-cache fits here, and what does not: its inline miss path (the proxy phase
//! with `request_cache_filter`, a `Storage` and its miss handler) fetches through
//! `upstream_peer`, which cannot follow an origin's redirects, nor try the next origin after a
//! connect failure with our health bookkeeping, nor apply the loop guard: the copy in
//! [`crate::pull::copy::copy`] does all of that, and mirror mode must fetch exactly as a copy does.
//! Its `CacheLock` would be a second single-flight table beside the copy scheduler's, so a
//! background copy and a mirrored miss of the same key could both reach the origin. So mirror
//! mode tees the copy's body to the client instead, with the scheduler's single flight, and
//! the one bucket store serves both modes' objects on the same hit path.

use std::sync::Arc;

use http::{header, HeaderValue, Method, StatusCode};
use pingora::{Error, ErrorType, Result};
use pingora_proxy::Session;
use tokio::sync::{mpsc, oneshot};

use crate::answer::compress::Compressor;
use crate::answer::compressible::is_compressible_object;
use crate::answer::error_document::write_error_plan;
use crate::answer::plan::{no_such_key, ErrorPlan};
use crate::answer::redirect::write_redirect;
use crate::answer::respond::{response_header, ErrorCode, Reply};
use crate::answer::serve::{serve_hit, stream_range};
use crate::edge::connection::send_each_write;
use crate::live::bucket::Bucket;
use crate::metrics::RequestResult;
use crate::pull::copy::transfer::{head_object, CopyRequest, MirrorEvent, MirrorHead, MovedTo};
use crate::pull::copy::{Copies, CopyEnd, CopySource, MirrorTicket};
use crate::pull::origin::{BucketPull, PullPolicy};
use originpull_config::FillSettings;
use originpull_store::key::{safe_query, ObjectKey};
use originpull_store::BucketStore;

/// Everything a mirrored miss needs to know.
pub struct MirrorMiss<'a> {
    pub copies: &'a Copies,
    pub store: &'a dyn BucketStore,
    pub bucket: &'a Arc<Bucket>,
    pub pull: &'a Arc<BucketPull>,
    pub policy: &'a PullPolicy,
    pub key: &'a ObjectKey,
    pub source: CopySource,
    pub limits: &'a FillSettings,
    pub reply: &'a Reply,
    pub compressor: &'a Compressor,
}

/// How many times a waiting client may find the object gone again (purged, or over the size
/// limit) and try once more before it is told the origin failed.
const ROUNDS: usize = 3;

impl MirrorMiss<'_> {
    /// Answers the miss; returns the result for the access log and the body bytes written.
    pub async fn answer(&self, session: &mut Session) -> Result<(RequestResult, u64)> {
        let req = session.req_header();
        if req.method == Method::HEAD {
            return self.answer_head(session).await;
        }
        let plain_get = !req.headers.contains_key(header::RANGE)
            && !req.headers.contains_key(header::IF_MATCH)
            && !req.headers.contains_key(header::IF_NONE_MATCH)
            && !req.headers.contains_key(header::IF_MODIFIED_SINCE)
            && !req.headers.contains_key(header::IF_UNMODIFIED_SINCE);
        for _ in 0..ROUNDS {
            let ticket = self.copies.start_mirror(
                self.pull,
                self.key,
                self.source.clone(),
                self.limits,
                plain_get,
            );
            let end = match ticket {
                MirrorTicket::NotFound => {
                    return self.answer_end(session, &CopyEnd::OriginStatus(404)).await
                }
                MirrorTicket::Leader(events) => return self.lead(session, events).await,
                MirrorTicket::Follower(end) => wait_for_end(end).await,
            };
            match end {
                stored if stored.is_stored() => {
                    if let Some(answer) = self.serve_stored(session).await? {
                        return Ok(answer);
                    }
                }
                // Over the size limit: this client streams its own uncached copy next round.
                CopyEnd::TooLarge { .. } => {}
                failed => return self.answer_end(session, &failed).await,
            }
        }
        self.answer_end(session, &CopyEnd::Abandoned).await
    }

    /// Serves the committed object like a hit; `None` if it is not (or no longer) there.
    async fn serve_stored(&self, session: &mut Session) -> Result<Option<(RequestResult, u64)>> {
        let object = self
            .store
            .open(&self.bucket.config.name, self.key)
            .await
            .map_err(|e| Error::because(ErrorType::InternalError, "opening mirrored object", e))?;
        let Some(object) = object else {
            return Ok(None);
        };
        let hit = self
            .compressor
            .select(session.req_header(), self.bucket, self.key, object)
            .await;
        let (_, written) = serve_hit(session, hit, self.reply).await?;
        Ok(Some((RequestResult::Mirror, written)))
    }

    /// Streams the copy this request leads.
    async fn lead(
        &self,
        session: &mut Session,
        mut events: mpsc::Receiver<MirrorEvent>,
    ) -> Result<(RequestResult, u64)> {
        let head = match events.recv().await {
            Some(MirrorEvent::Head(head)) => head,
            Some(MirrorEvent::Failed(end)) => return self.answer_end(session, &end).await,
            // Stored before it streamed anything (another copy committed it first).
            Some(MirrorEvent::End) | None => {
                let end = match self.copies.running_copy(self.pull, self.key) {
                    Some(end) => wait_for_end(end).await,
                    None => CopyEnd::AlreadyStored,
                };
                if !end.is_stored() {
                    return self.answer_end(session, &end).await;
                }
                return match self.serve_stored(session).await? {
                    Some(answer) => Ok(answer),
                    None => self.answer_end(session, &CopyEnd::Abandoned).await,
                };
            }
            Some(MirrorEvent::Chunk(_)) => {
                return Error::e_explain(ErrorType::InternalError, "mirror body before its head")
            }
        };
        // The body arrives at the origin's pace: every piece goes out as it comes.
        send_each_write(session);
        session
            .write_response_header(Box::new(self.head_header(&head)?), false)
            .await?;
        let mut sent = 0u64;
        let mut ended = false;
        loop {
            match events.recv().await {
                Some(MirrorEvent::Chunk(chunk)) => {
                    sent += chunk.len() as u64;
                    // The piece that completes the announced length ends the answer: an HTTP/2
                    // stream may be closed once the client has that many bytes, and an empty
                    // end written after that fails (the answer was whole, but logged an error).
                    let last = head.length == Some(sent);
                    session.write_response_body(Some(chunk), last).await?;
                    ended |= last;
                }
                Some(MirrorEvent::End) => {
                    if !ended {
                        session.write_response_body(None, true).await?;
                    }
                    return Ok((RequestResult::Mirror, sent));
                }
                Some(MirrorEvent::Failed(end)) => {
                    return Error::e_explain(
                        ErrorType::ReadError,
                        format!(
                            "the origin failed mid-body ({}); the response is cut off",
                            end.reason()
                        ),
                    )
                }
                Some(MirrorEvent::Head(_)) => {
                    return Error::e_explain(ErrorType::InternalError, "second mirror head")
                }
                // Let go for being slower than the origin: the rest comes from the bucket.
                None => return self.catch_up(session, sent).await,
            }
        }
    }

    /// After being let go: waits for the copy, then streams the object from `offset`.
    async fn catch_up(&self, session: &mut Session, offset: u64) -> Result<(RequestResult, u64)> {
        if let Some(end) = self.copies.running_copy(self.pull, self.key) {
            if !wait_for_end(end).await.is_stored() {
                return Error::e_explain(ErrorType::ReadError, "the mirrored copy failed");
            }
        }
        let object = self
            .store
            .open(&self.bucket.config.name, self.key)
            .await
            .map_err(|e| Error::because(ErrorType::InternalError, "opening mirrored object", e))?;
        let Some(mut object) = object else {
            return Error::e_explain(ErrorType::ReadError, "the mirrored object is gone");
        };
        let size = object.meta().size;
        if size < offset {
            return Error::e_explain(ErrorType::ReadError, "the mirrored object changed");
        }
        let written = stream_range(session, object.as_mut(), offset..size).await?;
        if size == offset {
            session.write_response_body(None, true).await?;
        }
        Ok((RequestResult::Mirror, offset + written))
    }

    /// The header of a streamed miss: what a hit of the object will carry, minus the
    /// validators not known before the body is complete.
    fn head_header(&self, head: &MirrorHead) -> Result<pingora::http::ResponseHeader> {
        let mut resp = response_header(StatusCode::OK, self.reply)?;
        let content_type = head
            .object
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        resp.insert_header(header::CONTENT_TYPE, content_type)?;
        match head.length {
            Some(length) => resp.insert_header(header::CONTENT_LENGTH, length)?,
            // Pingora would otherwise send a body delimited by the close, where a cut-off body
            // looks complete: chunked framing makes a failure mid-body visible to the client.
            None => resp.insert_header(header::TRANSFER_ENCODING, "chunked")?,
        }
        for (name, value) in &head.object.headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                resp.insert_header(name.clone(), value)?;
            }
        }
        // The origin's date, so this first answer can be revalidated too (the object's own,
        // its commit time, is not known before the body is complete).
        let last_modified = head.object.origin_last_modified.as_deref();
        if let Some(date) = last_modified.filter(|date| httpdate::parse_http_date(date).is_ok()) {
            resp.insert_header(header::LAST_MODIFIED, date)?;
        }
        // A hit of this object will vary by encoding: say so now, or a cache in front keeps
        // this plain answer for every client.
        if is_compressible_object(head.length, content_type, &head.object.headers) {
            resp.append_header("Vary", HeaderValue::from_static("Accept-Encoding"))?;
        }
        Ok(resp)
    }

    /// HEAD on a miss: the origin's HEAD answer, stored nowhere.
    async fn answer_head(&self, session: &mut Session) -> Result<(RequestResult, u64)> {
        let mut path_and_query = self
            .policy
            .origin_path(self.source.folder.as_deref().unwrap_or(self.key.as_str()));
        if let Some(query) = self
            .source
            .query
            .as_deref()
            .filter(|_| self.pull.pass_query_string)
        {
            path_and_query.push('?');
            path_and_query.push_str(&safe_query(query));
        }
        let request = CopyRequest {
            pull: self.pull,
            policy: self.policy,
            key: self.key,
            path_and_query,
            conditional: None,
        };
        let bucket = self.bucket.config.name.as_str();
        let (result, _) = head_object(self.copies.connector(), bucket, &request, self.limits).await;
        let end = match result {
            Ok(origin) if origin.status == StatusCode::OK => {
                let object = crate::pull::copy::transfer::kept_object(&origin);
                let length = origin
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                let resp = self.head_header(&MirrorHead { object, length })?;
                session.write_response_header(Box::new(resp), true).await?;
                return Ok((RequestResult::Mirror, 0));
            }
            Ok(origin) => CopyEnd::OriginStatus(origin.status.as_u16()),
            Err(e) => CopyEnd::from(e),
        };
        self.answer_end(session, &end).await
    }

    /// Answers a copy that ended without the object: the origin's redirect to another path
    /// is passed on, any other end is an error (README: how each origin answer is answered).
    async fn answer_end(
        &self,
        session: &mut Session,
        end: &CopyEnd,
    ) -> Result<(RequestResult, u64)> {
        let failed = |code| ErrorPlan::new(code, RequestResult::Error);
        let error = match end {
            CopyEnd::Moved(to) => {
                let location = self.client_location(to);
                let n = write_redirect(session, to.status, location, self.reply).await?;
                return Ok((RequestResult::Redirect, n));
            }
            CopyEnd::OriginStatus(404 | 410) => no_such_key(self.bucket),
            CopyEnd::OriginStatus(401 | 403) => failed(ErrorCode::AccessDenied),
            CopyEnd::Timeout(_) => failed(ErrorCode::GatewayTimeout),
            CopyEnd::StoreFailed(_) => failed(ErrorCode::InternalError),
            CopyEnd::StoreUnavailable(_) => failed(ErrorCode::ServiceUnavailable),
            _ => failed(ErrorCode::BadGateway),
        };
        let bucket = self.bucket.config.name.as_str();
        write_error_plan(session, self.store, bucket, &error, self.reply).await
    }

    /// Where the client is sent when the origin redirected to `to`: the same place on this
    /// edge when it is at one of the bucket's origins (a folder's `/docs` → `/docs/`, in the
    /// bucket's own paths), the origin's URL otherwise. Rebuilt from its parsed parts, so only
    /// bytes a URL may carry reach `Location`.
    fn client_location(&self, to: &MovedTo) -> String {
        let (path, query) = match to.path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (to.path_and_query.as_str(), None),
        };
        let mut location = if to.at_bucket_origin {
            let decoded = percent_encoding::percent_decode_str(path).decode_utf8();
            match decoded {
                Ok(decoded) => self.policy.bucket_path(decoded.trim_start_matches('/')),
                Err(_) => path.to_string(),
            }
        } else {
            format!("{}{path}", to.origin.url_base())
        };
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            location.push('?');
            location.push_str(&safe_query(query));
        }
        location
    }
}

/// Waits until the copy announces its end. The copy itself gives up on an origin silent for
/// longer than `fill.read_timeout_ms`, so this wait is bounded by the origin's progress.
async fn wait_for_end(end: oneshot::Receiver<CopyEnd>) -> CopyEnd {
    // Dropped unanswered only when the copy's task ended at shutdown: nothing was stored by it.
    end.await.unwrap_or(CopyEnd::Abandoned)
}
