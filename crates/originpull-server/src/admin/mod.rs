//! The admin API: a separate listener (`admin_listen`) for finishing a migration. It owns the
//! routes under `/v1/`, bearer-token authentication (constant-time comparison; the token file
//! is re-read whenever the configuration is reloaded), and JSON in and out. The data plane never
//! answers these paths: they exist only on this listener.
//!
//! Routes: `GET /v1/buckets`, `GET|DELETE /v1/buckets/{bucket}/objects/{key}`,
//! `POST /v1/buckets/{bucket}/purge`, `POST /v1/buckets/{bucket}/prefetch`,
//! `GET /v1/buckets/{bucket}/progress`, `GET|DELETE /v1/jobs/{id}`. The work is in [`jobs`]
//! (purge and prefetch jobs) and [`progress`] (counts, ratios, failing keys).

pub mod jobs;
pub mod progress;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::BytesMut;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::live::bucket::Bucket;
use crate::live::reload::{ConfigHandle, LiveConfig};
use crate::pull::copy::Copies;
use jobs::Jobs;
use originpull_store::key::{KeyError, ObjectKey};
use originpull_store::{BucketCounts, BucketStore};
use progress::{progress_of, Samples};

/// The largest request body accepted (a prefetch list): about a million keys.
const MAX_BODY_BYTES: usize = 128 * 1024 * 1024;

/// The admin application, shared by the listener's connections.
pub struct AdminApi {
    pub config: ConfigHandle,
    pub store: Arc<dyn BucketStore>,
    pub copies: Copies,
    pub counts: BucketCounts,
    pub samples: Samples,
    pub jobs: Jobs,
    /// The token read for one configuration generation, re-read after a reload.
    token: Mutex<Option<TokenRead>>,
}

/// The token file as read for a configuration generation (an error refuses every request).
type TokenRead = (Arc<LiveConfig>, Result<String, String>);

/// A JSON answer: status and body.
type Answer = (StatusCode, serde_json::Value);

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Answer {
    (
        status,
        json!({"error": {"code": code, "message": message.into()}}),
    )
}

fn to_json(value: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

impl AdminApi {
    pub fn new(
        config: ConfigHandle,
        store: Arc<dyn BucketStore>,
        copies: Copies,
        counts: BucketCounts,
        samples: Samples,
    ) -> AdminApi {
        AdminApi {
            config,
            store,
            copies,
            counts,
            samples,
            jobs: Jobs::default(),
            token: Mutex::default(),
        }
    }

    /// The listener as a Pingora service.
    pub fn service(self, addr: SocketAddr) -> Service<HttpServer<AdminApi>> {
        let mut service = Service::new("admin api".to_string(), HttpServer::new_app(self));
        service.add_tcp(&addr.to_string());
        service
    }

    /// The token of the running generation, read once per generation.
    fn token(&self, live: &Arc<LiveConfig>) -> Result<String, String> {
        let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((read_for, token)) = cached.as_ref() {
            if Arc::ptr_eq(read_for, live) {
                return token.clone();
            }
        }
        let token = match &live.config.admin {
            Some(admin) => admin.read_token(),
            None => Err("admin_token_file is not configured".to_string()),
        };
        if let Err(why) = &token {
            log::error!("admin API: token file: {why}; every request is refused");
        }
        *cached = Some((live.clone(), token.clone()));
        token
    }

    fn authorized(&self, session: &ServerSession, live: &Arc<LiveConfig>) -> bool {
        let Ok(token) = self.token(live) else {
            return false;
        };
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .unwrap_or("");
        bool::from(given.as_bytes().ct_eq(token.as_bytes()))
    }

    async fn route(&self, session: &mut ServerSession, live: &Arc<LiveConfig>) -> Answer {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let Some(rest) = path.strip_prefix("/v1/") else {
            return error(StatusCode::NOT_FOUND, "NoSuchRoute", "no such endpoint");
        };
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        match (&method, parts.as_slice()) {
            (&Method::GET, ["buckets"]) => self.all_progress(live),
            (_, ["buckets", bucket, "objects", key]) => {
                let Some(bucket) = bucket_named(live, bucket) else {
                    return no_such_bucket(bucket);
                };
                let key = match ObjectKey::from_request_path(&format!("/{key}")) {
                    Ok(key) => key,
                    Err(e) => return bad_key(e),
                };
                match method {
                    Method::GET => self.object(bucket, &key).await,
                    Method::DELETE => self.purge_object(bucket, &key).await,
                    _ => not_allowed("GET, DELETE"),
                }
            }
            (&Method::GET, ["buckets", bucket, "progress"]) => match bucket_named(live, bucket) {
                Some(b) => (
                    StatusCode::OK,
                    to_json(&progress_of(&b.config.name, &self.counts, &self.samples)),
                ),
                None => no_such_bucket(bucket),
            },
            (&Method::POST, ["buckets", bucket, "purge"]) => {
                let Some(bucket) = bucket_named(live, bucket).cloned() else {
                    return no_such_bucket(bucket);
                };
                self.start_purge(session, bucket).await
            }
            (&Method::POST, ["buckets", bucket, "prefetch"]) => {
                let Some(bucket) = bucket_named(live, bucket).cloned() else {
                    return no_such_bucket(bucket);
                };
                self.start_prefetch(session, live, bucket).await
            }
            (_, ["jobs", id]) => self.job(&method, id),
            _ => error(StatusCode::NOT_FOUND, "NoSuchRoute", "no such endpoint"),
        }
    }

    /// Every bucket's progress, by name.
    fn all_progress(&self, live: &LiveConfig) -> Answer {
        let mut names: Vec<&str> = live
            .config
            .buckets
            .iter()
            .map(|b| b.name.as_str())
            .collect();
        names.sort_unstable();
        let buckets: Vec<_> = names
            .into_iter()
            .map(|name| to_json(&progress_of(name, &self.counts, &self.samples)))
            .collect();
        (StatusCode::OK, json!({ "buckets": buckets }))
    }

    /// `POST /v1/buckets/<bucket>/purge` with `{"prefix": "img/"}`: a purge job.
    async fn start_purge(&self, session: &mut ServerSession, bucket: Arc<Bucket>) -> Answer {
        let body = match read_body(session).await {
            Ok(body) => body,
            Err(answer) => return answer,
        };
        let prefix = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("prefix")?.as_str().map(str::to_string));
        let Some(prefix) = prefix else {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "expected a JSON body {\"prefix\": \"img/\"}",
            );
        };
        let job = self
            .jobs
            .start_purge(self.store.clone(), self.copies.clone(), bucket, prefix);
        (StatusCode::ACCEPTED, to_json(&job.view()))
    }

    /// `POST /v1/buckets/<bucket>/prefetch[?rate=N]` with one key or URL per line: a prefetch
    /// job.
    async fn start_prefetch(
        &self,
        session: &mut ServerSession,
        live: &LiveConfig,
        bucket: Arc<Bucket>,
    ) -> Answer {
        let Some(pull) = bucket.pull.clone() else {
            return error(
                StatusCode::CONFLICT,
                "OriginPullOff",
                format!("bucket {} does not pull from an origin", bucket.config.name),
            );
        };
        let rate = match query_param(session, "rate").map(|r| r.parse::<u64>()) {
            None => None,
            Some(Ok(rate)) => Some(rate),
            Some(Err(_)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    "rate must be a whole number of copies per second",
                )
            }
        };
        let body = match read_body(session).await {
            Ok(body) => body,
            Err(answer) => return answer,
        };
        let Ok(text) = std::str::from_utf8(&body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "the body must be UTF-8 text: one key or URL per line",
            );
        };
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        let job = self.jobs.start_prefetch(
            self.store.clone(),
            self.copies.clone(),
            pull,
            live.config.fill.clone(),
            lines,
            rate,
        );
        (StatusCode::ACCEPTED, to_json(&job.view()))
    }

    /// `GET` or `DELETE` (cancel) `/v1/jobs/<id>`.
    fn job(&self, method: &Method, id: &str) -> Answer {
        let Ok(id) = id.parse::<u64>() else {
            return error(StatusCode::NOT_FOUND, "NoSuchJob", "no such job");
        };
        let job = match *method {
            Method::GET => self.jobs.get(id),
            Method::DELETE => self.jobs.cancel(id),
            _ => return not_allowed("GET, DELETE"),
        };
        match job {
            Some(job) => (StatusCode::OK, to_json(&job.view())),
            None => error(StatusCode::NOT_FOUND, "NoSuchJob", "no such job"),
        }
    }

    async fn object(&self, bucket: &Bucket, key: &ObjectKey) -> Answer {
        match self.store.open(&bucket.config.name, key).await {
            Ok(Some(object)) => {
                let meta = object.meta();
                let headers: serde_json::Map<String, serde_json::Value> = meta
                    .headers
                    .iter()
                    .map(|(n, v)| (n.clone(), v.clone().into()))
                    .collect();
                (
                    StatusCode::OK,
                    json!({
                        "bucket": bucket.config.name,
                        "key": meta.key,
                        "size": meta.size,
                        "etag": meta.etag_header(),
                        // A string, as COS sends it: a u64 does not fit a JSON reader's double.
                        "crc64ecma": meta.crc64.map(|crc| crc.to_string()),
                        "content_type": meta.content_type,
                        "stored_at": httpdate::fmt_http_date(meta.last_modified_time()),
                        "checked_at": meta.checked_at(),
                        "origin_etag": meta.origin_etag,
                        "origin_last_modified": meta.origin_last_modified,
                        "headers": headers,
                    }),
                )
            }
            Ok(None) => no_such_key(),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            ),
        }
    }

    async fn purge_object(&self, bucket: &Arc<Bucket>, key: &ObjectKey) -> Answer {
        // The negative entry goes whether or not an object was there: the next miss copies.
        if let Some(pull) = &bucket.pull {
            self.copies.forget_failure(pull, key);
        }
        match self.store.delete(&bucket.config.name, key).await {
            Ok(Some(_)) => {
                log::info!(
                    "admin: purged {:?} from {}",
                    key.as_str(),
                    bucket.config.name
                );
                (StatusCode::NO_CONTENT, serde_json::Value::Null)
            }
            Ok(None) => no_such_key(),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            ),
        }
    }
}

fn bucket_named<'a>(live: &'a LiveConfig, name: &str) -> Option<&'a Arc<Bucket>> {
    live.routes.buckets().find(|b| b.config.name == name)
}

fn no_such_bucket(name: &str) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "NoSuchBucket",
        format!("no bucket named {name:?}"),
    )
}

fn no_such_key() -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "NoSuchKey",
        "the bucket holds no such object",
    )
}

fn not_allowed(allow: &str) -> Answer {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("allowed: {allow}"),
    )
}

/// The same rules as the data plane's keys, and the same words.
fn bad_key(e: KeyError) -> Answer {
    let why = match e {
        KeyError::Invalid(why) => why.to_string(),
        KeyError::TooLong => "the object key is longer than 1024 bytes".to_string(),
    };
    error(StatusCode::BAD_REQUEST, "InvalidURI", why)
}

fn query_param(session: &ServerSession, name: &str) -> Option<String> {
    session
        .req_header()
        .uri
        .query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

async fn read_body(session: &mut ServerSession) -> Result<BytesMut, Answer> {
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "EntityTooLarge",
                        format!("the body is limited to {MAX_BODY_BYTES} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "IncompleteBody",
                    format!("cannot read the body: {e}"),
                ))
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let live = self.config.current();
        let (status, body) = if self.authorized(session, &live) {
            self.route(session, &live).await
        } else {
            // Nothing is read or done for an unauthenticated request.
            session.set_keepalive(None);
            error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "send Authorization: Bearer <token from admin_token_file>",
            )
        };
        let body = if status == StatusCode::NO_CONTENT {
            Vec::new()
        } else {
            let mut text = serde_json::to_vec_pretty(&body).unwrap_or_default();
            text.push(b'\n');
            text
        };
        let mut response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_LENGTH, body.len());
        if status != StatusCode::NO_CONTENT {
            response = response.header(http::header::CONTENT_TYPE, "application/json");
        }
        if status == StatusCode::UNAUTHORIZED {
            response = response.header(http::header::WWW_AUTHENTICATE, "Bearer");
        }
        // Every header above is a valid static value or a number, so building cannot fail.
        response.body(body).unwrap_or_default()
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive (RFC
/// 9110 §11.1), so `bearer` and `BEARER` are accepted too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("Bearer")
        .then(|| token.trim_start())
}
