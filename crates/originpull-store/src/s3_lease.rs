//! Fill leases of the S3 store: the object `<prefix>.originpull-leases/<key>` that one node
//! holds while it fetches `key` from the origin, so a fleet sharing the store fetches each cold
//! key once; and the start-up probe that the store refuses what a lease relies on.
//!
//! A lease is created only if none exists, which is what `store.s3.conditional_put` says how to
//! ask for: `If-None-Match: *` (412 when it exists; AWS S3, R2, MinIO, Ceph RGW),
//! `x-cos-forbid-overwrite: true` (409 `FileAlreadyExists`; Tencent COS, which has no
//! `If-None-Match` on PUT), or `none` (a look first, then a plain PUT: best effort). Each write
//! carries a random token, so each version of a lease has an ETag of its own.
//!
//! A lease not renewed for [`LEASE_SECS`] by the store's clock (its `Last-Modified` against the
//! `Date` of the HEAD that read it) is taken over, and exactly one node may win that race:
//! with `If-Match` on its ETag where the store honours it (checked at start), otherwise (COS)
//! by first creating the takeover marker `<prefix>.originpull-takeovers/<etag>/<key>` with the
//! same conditional create: one node creates it, then replaces the lease. A marker whose winner
//! died before replacing the lease is removed once it is [`LEASE_SECS`] old, and the next look
//! tries again; markers are otherwise left to a lifecycle rule. With `none` the takeover is a
//! plain overwrite.
//!
//! The holder renews its lease every [`LEASE_RENEW`] (`If-Match` on its own ETag, or a HEAD
//! that finds its own ETag and a PUT), again after [`RENEW_RETRY`] when the store failed, until
//! the copy ends or another node took the lease over. It then deletes the lease with `If-Match`
//! on its last ETag (a store that ignores `If-Match` on DELETE deletes it anyway, which is safe
//! here: nobody else may take a live lease), retrying after a failure until the lease would have
//! expired anyway, so a store outage at the end of a copy does not block the key for a minute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, Method, StatusCode};
use object_store::aws::AmazonS3;
use object_store::client::{HttpClient, HttpRequestBody, HttpResponse};
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use tokio::sync::Notify;

use super::s3_link::StoreLink;
use super::FillClaim;
use originpull_config::ConditionalPut;
use originpull_support::log_summary::SummarizedLog;

/// Leases renewed or released late while the store fails: one per copy running then.
static LEASE_TROUBLE: SummarizedLog = SummarizedLog::new(
    log::Level::Warn,
    module_path!(),
    "lease renewals or releases retried",
);

/// Lease objects live under this folder (inside `prefix`); keys under it are never served.
pub const LEASE_FOLDER: &str = ".originpull-leases/";
/// Takeover markers (and the start-up probe) live under this folder; never served either.
pub const TAKEOVER_FOLDER: &str = ".originpull-takeovers/";
/// A lease not renewed for this long may be taken over: a node that died mid-copy blocks its
/// key for at most this long.
pub const LEASE_SECS: i64 = 60;
/// The holder renews its lease this often while the copy runs.
pub const LEASE_RENEW: Duration = Duration::from_secs(20);
/// A renewal that failed (the store did not answer) is tried again after this.
pub const RENEW_RETRY: Duration = Duration::from_secs(2);
/// The first wait before a failed release is tried again; it doubles up to [`RELEASE_RETRY_MAX`].
const RELEASE_RETRY_FIRST: Duration = Duration::from_millis(250);
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(5);
/// Life of a presigned URL of a request sent by hand: it is used at once.
const SIGNED_URL_LIFE: Duration = Duration::from_secs(60);
const COS_FORBID_OVERWRITE: &str = "x-cos-forbid-overwrite";

/// How lease writes are made conditional, from `conditional_put` and the start-up probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseWrites {
    pub create: ConditionalPut,
    /// Whether the store refuses a PUT with a stale `If-Match` (takeover and renewal use it).
    pub replace_if_match: bool,
}

impl LeaseWrites {
    /// What `mode` promises before the probe has looked.
    pub fn assumed(mode: ConditionalPut) -> LeaseWrites {
        LeaseWrites {
            create: mode,
            replace_if_match: mode == ConditionalPut::IfNoneMatch,
        }
    }
}

/// A lease as a HEAD found it.
pub(super) struct HeldLease {
    /// Its ETag as the store sent it.
    etag: Option<String>,
    /// When it was last written (created or renewed), by the store's clock.
    last_modified: chrono::DateTime<chrono::Utc>,
    /// The `Date` of the store's answer: the store's clock at the HEAD.
    store_now: Option<chrono::DateTime<chrono::Utc>>,
}

impl HeldLease {
    fn expired(&self, path: &Path) -> bool {
        let store_now = self.store_now.unwrap_or_else(|| {
            log::warn!(
                "S3 store: the store sent no Date with {path}; judging its age by this node's clock"
            );
            chrono::Utc::now()
        });
        lease_expired(self.last_modified, store_now)
    }
}

/// Whether a lease last written at `last_modified` may be taken over at `store_now`, both read
/// from the store's clock.
pub(super) fn lease_expired(
    last_modified: chrono::DateTime<chrono::Utc>,
    store_now: chrono::DateTime<chrono::Utc>,
) -> bool {
    (store_now - last_modified).num_seconds() >= LEASE_SECS
}

/// An HTTP date (`Date`, `Last-Modified`).
pub(super) fn http_date(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    httpdate::parse_http_date(text)
        .ok()
        .map(chrono::DateTime::<chrono::Utc>::from)
}

/// The store's clock at its answer: the response's `Date`.
pub(super) fn store_date(headers: &http::HeaderMap) -> Option<chrono::DateTime<chrono::Utc>> {
    headers
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(http_date)
}

pub(super) fn generic_error(message: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: message.to_string().into(),
    }
}

/// A new lease body: who wrote it, and a random token that gives this version its own ETag.
fn lease_body() -> Bytes {
    Bytes::from(format!(
        "originpull fill lease, pid {}, {:032x}\n",
        std::process::id(),
        rand::random::<u128>()
    ))
}

/// How a lease PUT is conditioned.
enum Write<'a> {
    /// Only if nothing is there (the mode's conditional create).
    Create,
    /// Only if the ETag is this one.
    IfMatch(&'a str),
    Overwrite,
}

/// What a renewal found.
enum Renewal {
    Renewed(String),
    Lost,
    Failed(object_store::Error),
}

/// The lease requests of one S3 bucket's store.
#[derive(Clone)]
pub(super) struct Leases {
    pub client: Arc<AmazonS3>,
    /// For requests object_store has no call for, sent by hand (presigned by its signer).
    pub http: HttpClient,
    pub link: Arc<StoreLink>,
    pub writes: LeaseWrites,
    /// The store's key prefix.
    pub prefix: String,
}

impl Leases {
    /// The lease object of `key`.
    pub fn lease_path(&self, key: &str) -> Option<Path> {
        Path::parse(format!("{}{LEASE_FOLDER}{key}", self.prefix)).ok()
    }

    /// Sends `method` on `path` by hand, signing `headers` too; `body` is sent as `text/plain`.
    async fn send(
        &self,
        method: Method,
        path: &Path,
        headers: &[(HeaderName, &str)],
        body: Bytes,
    ) -> object_store::Result<HttpResponse> {
        let mut options = SignedUrlOptions::new();
        for (name, value) in headers {
            let value = http::HeaderValue::from_str(value)
                .map_err(|e| generic_error(&format!("header {name}: {e}")))?;
            options = options.with_signed_header(name.clone(), value);
        }
        let url = self
            .client
            .signed_url_opts(method.clone(), path, SIGNED_URL_LIFE, &options)
            .await?;
        let mut request = http::Request::builder().method(method).uri(url.as_str());
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        if !body.is_empty() {
            request = request.header(http::header::CONTENT_TYPE, "text/plain");
        }
        let request = request
            .body(HttpRequestBody::from(body))
            .map_err(|e| generic_error(&e.to_string()))?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| generic_error(&e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let path = path.to_string();
        let source = format!("{path} answered {status}").into();
        Err(match status {
            StatusCode::NOT_FOUND => object_store::Error::NotFound { path, source },
            StatusCode::PRECONDITION_FAILED => object_store::Error::Precondition { path, source },
            StatusCode::CONFLICT => object_store::Error::AlreadyExists { path, source },
            _ => object_store::Error::Generic {
                store: "S3",
                source,
            },
        })
    }

    /// Reads the lease (or marker) at `path` with a HEAD, and the store's time of its answer;
    /// `None` when there is none. object_store's `head` drops the response's `Date`, so this
    /// HEAD is sent by hand. The lease's age is then judged by the store's clock alone, so
    /// nodes with skewed clocks neither take a live lease over nor wait past an expired one.
    pub async fn head(&self, path: &Path) -> object_store::Result<Option<HeldLease>> {
        let response = match self
            .link
            .run("lease", self.send(Method::HEAD, path, &[], Bytes::new()))
            .await
        {
            Ok(response) => response,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let headers = response.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let last_modified = text("last-modified")
            .and_then(http_date)
            .ok_or_else(|| generic_error("the lease HEAD has no readable Last-Modified"))?;
        Ok(Some(HeldLease {
            etag: text("etag").map(str::to_string),
            last_modified,
            store_now: store_date(headers),
        }))
    }

    /// Writes a new lease body at `path` as `write` says; returns its ETag.
    async fn put(&self, path: &Path, write: Write<'_>) -> object_store::Result<String> {
        let body = lease_body();
        let mode = match (write, self.writes.create) {
            (Write::Create, ConditionalPut::IfNoneMatch) => PutMode::Create,
            (Write::Create, ConditionalPut::CosForbidOverwrite) => {
                let response = self
                    .link
                    .run(
                        "lease",
                        self.send(
                            Method::PUT,
                            path,
                            &[(HeaderName::from_static(COS_FORBID_OVERWRITE), "true")],
                            body,
                        ),
                    )
                    .await?;
                return response
                    .headers()
                    .get(http::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| generic_error("the lease PUT answered no ETag"));
            }
            (Write::Create, ConditionalPut::None) => {
                if self.head(path).await?.is_some() {
                    return Err(object_store::Error::AlreadyExists {
                        path: path.to_string(),
                        source: "a lease is there".into(),
                    });
                }
                PutMode::Overwrite
            }
            (Write::IfMatch(etag), _) => PutMode::Update(UpdateVersion {
                e_tag: Some(etag.to_string()),
                version: None,
            }),
            (Write::Overwrite, _) => PutMode::Overwrite,
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let result = self
            .link
            .run(
                "lease",
                self.client.put_opts(path, PutPayload::from(body), options),
            )
            .await?;
        result
            .e_tag
            .ok_or_else(|| generic_error("the lease PUT answered no ETag"))
    }

    /// Claims the lease of `key`: `Ok(None)` while another node holds it.
    pub async fn claim(&self, key: &str, path: Path) -> object_store::Result<Option<FillClaim>> {
        let written_at = Instant::now();
        let etag = match self.put(&path, Write::Create).await {
            Ok(etag) => etag,
            Err(object_store::Error::AlreadyExists { .. }) => {
                let Some(held) = self.head(&path).await? else {
                    // Released meanwhile: the caller asks again.
                    return Ok(None);
                };
                if !held.expired(&path) {
                    return Ok(None);
                }
                match self.take_over(key, &path, &held).await? {
                    Some(etag) => {
                        log::warn!("S3 store: took over the expired lease {path}");
                        etag
                    }
                    None => return Ok(None),
                }
            }
            Err(e) => return Err(e),
        };
        let stop = Arc::new(Notify::new());
        tokio::spawn(self.clone().hold(path, etag, written_at, stop.clone()));
        Ok(Some(FillClaim::held_by(LeaseGuard { stop })))
    }

    /// Replaces the expired lease `held` at `path`; `None` when another node won the race.
    async fn take_over(
        &self,
        key: &str,
        path: &Path,
        held: &HeldLease,
    ) -> object_store::Result<Option<String>> {
        let etag = held.etag.as_deref().unwrap_or_default();
        if self.writes.replace_if_match {
            return match self.put(path, Write::IfMatch(etag)).await {
                Ok(etag) => Ok(Some(etag)),
                Err(
                    object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::NotFound { .. },
                ) => Ok(None),
                Err(e) => Err(e),
            };
        }
        if self.writes.create == ConditionalPut::None {
            return self.put(path, Write::Overwrite).await.map(Some);
        }
        let marker = Path::parse(format!(
            "{}{TAKEOVER_FOLDER}{}/{key}",
            self.prefix,
            etag.trim_start_matches("W/").trim_matches('"')
        ))
        .map_err(|e| generic_error(&e.to_string()))?;
        match self.put(&marker, Write::Create).await {
            Ok(_) => self.put(path, Write::Overwrite).await.map(Some),
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Another node won; if it died before replacing the lease, its marker is
                // removed once as old as a lease may get, and the next look tries again.
                if let Some(stale) = self.head(&marker).await?.filter(|m| m.expired(&marker)) {
                    let stale_etag = stale.etag.unwrap_or_default();
                    let _ = self.delete_if_match(&marker, &stale_etag).await;
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the lease again if it is still ours.
    async fn renew(&self, path: &Path, ours: &str) -> Renewal {
        let lost = |e: &object_store::Error| {
            matches!(
                e,
                object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::NotFound { .. }
            )
        };
        if !self.writes.replace_if_match {
            match self.head(path).await {
                Ok(Some(held)) if held.etag.as_deref() == Some(ours) => {}
                Ok(_) => return Renewal::Lost,
                Err(e) => return Renewal::Failed(e),
            }
        }
        let write = if self.writes.replace_if_match {
            Write::IfMatch(ours)
        } else {
            Write::Overwrite
        };
        match self.put(path, write).await {
            Ok(etag) => Renewal::Renewed(etag),
            Err(e) if lost(&e) => Renewal::Lost,
            Err(e) => Renewal::Failed(e),
        }
    }

    /// Deletes `path` if its ETag is `etag` (a store that ignores `If-Match` deletes it anyway);
    /// `Ok` also when it is gone or no longer that version.
    async fn delete_if_match(&self, path: &Path, etag: &str) -> object_store::Result<()> {
        let if_match = [(http::header::IF_MATCH, etag)];
        let request = self.send(Method::DELETE, path, &if_match, Bytes::new());
        match self.link.run("lease", request).await {
            Ok(_)
            | Err(object_store::Error::NotFound { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Renews the lease at `path` (last written at `written_at`, with `etag`) until `stop` is
    /// notified, then releases it (see the module documentation).
    async fn hold(self, path: Path, mut etag: String, mut written_at: Instant, stop: Arc<Notify>) {
        let mut next = LEASE_RENEW;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.notified() => break,
                _ = tokio::time::sleep(next) => {}
            }
            let attempt_at = Instant::now();
            match self.renew(&path, &etag).await {
                Renewal::Renewed(renewed) => {
                    (etag, written_at, next, failing) = (renewed, attempt_at, LEASE_RENEW, false);
                }
                Renewal::Lost => {
                    log::warn!("S3 store: lease {path} lost: another node took it over");
                    return;
                }
                Renewal::Failed(e) => {
                    if !failing {
                        LEASE_TROUBLE.note(|| {
                            format!(
                                "S3 store: renewing the lease {path} failed (trying again every \
                                 {}s): {e}",
                                RENEW_RETRY.as_secs()
                            )
                        });
                    }
                    (next, failing) = (RENEW_RETRY, true);
                }
            }
        }
        self.release(&path, &etag, written_at).await;
    }

    /// Deletes our lease, retrying a failure while a retry can still land before the lease
    /// would expire by itself.
    async fn release(&self, path: &Path, etag: &str, written_at: Instant) {
        let lease_life = Duration::from_secs(LEASE_SECS.unsigned_abs());
        // A request started later might land after the expiry: another node's lease by then.
        let last_start = written_at
            + lease_life.saturating_sub(self.link.request_timeout() + Duration::from_secs(1));
        let mut wait = RELEASE_RETRY_FIRST;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.delete_if_match(path, etag).await {
                Ok(()) => {
                    if tries > 1 {
                        LEASE_TROUBLE.note(|| {
                            format!("S3 store: released the lease {path} after {tries} tries")
                        });
                    }
                    return;
                }
                Err(e) => {
                    if tries == 1 {
                        LEASE_TROUBLE.note(|| {
                            format!(
                                "S3 store: releasing the lease {path} failed (trying again \
                                 until it would expire): {e}"
                            )
                        });
                    }
                    if Instant::now() + wait >= last_start {
                        LEASE_TROUBLE.note(|| {
                            format!(
                                "S3 store: gave up releasing the lease {path} after {tries} \
                                 tries; it expires by itself"
                            )
                        });
                        return;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RELEASE_RETRY_MAX);
                }
            }
        }
    }

    /// Checks that the store refuses a second conditional create of one object, as the
    /// configured mode asks, and whether it refuses a stale `If-Match`; returns how lease
    /// writes are to be made. The error says which mode failed and what to set.
    pub async fn probe(&self, s3_bucket: &str, endpoint: &str) -> Result<LeaseWrites, String> {
        let mode = self.writes.create;
        if mode == ConditionalPut::None {
            return Ok(LeaseWrites::assumed(mode));
        }
        let path = Path::parse(format!(
            "{}{TAKEOVER_FOLDER}probe-{:032x}",
            self.prefix,
            rand::random::<u128>()
        ))
        .map_err(|e| e.to_string())?;
        let at = format!("S3 bucket {s3_bucket:?} at {endpoint}");
        let outcome = async {
            self.put(&path, Write::Create)
                .await
                .map_err(|e| format!("cannot write the probe object {path} in {at}: {e}"))?;
            let refused = match self.put(&path, Write::Create).await {
                Ok(_) => false,
                Err(object_store::Error::AlreadyExists { .. }) => true,
                Err(e) => return Err(format!("probing {at}: {e}")),
            };
            if !refused {
                return Err(not_honoured(mode, &at));
            }
            let replace_if_match = match self.put(&path, Write::IfMatch("\"0\"")).await {
                Ok(_) => false,
                Err(object_store::Error::Precondition { .. }) => true,
                Err(_) => false,
            };
            Ok(LeaseWrites {
                create: mode,
                replace_if_match,
            })
        }
        .await;
        let _ = self.link.run("lease", self.client.delete(&path)).await;
        outcome
    }
}

/// The start-up error when the store did not refuse a second conditional create.
fn not_honoured(mode: ConditionalPut, at: &str) -> String {
    match mode {
        ConditionalPut::IfNoneMatch => format!(
            "store.s3.conditional_put: if_none_match: {at} accepted a second `If-None-Match: *` \
             PUT of one object instead of refusing it (412), so every node would fetch each cold \
             key from the origin. Set `conditional_put: cos_forbid_overwrite` for Tencent COS, \
             or `conditional_put: none` to accept duplicate origin fetches"
        ),
        ConditionalPut::CosForbidOverwrite => format!(
            "store.s3.conditional_put: cos_forbid_overwrite: {at} accepted a second PUT with \
             `x-cos-forbid-overwrite: true` instead of refusing it (409 FileAlreadyExists; COS \
             ignores it on a bucket that ever had versioning), so every node would fetch each \
             cold key from the origin. Set `conditional_put: if_none_match` for a store that \
             honours `If-None-Match: *`, or `conditional_put: none` to accept duplicate origin \
             fetches"
        ),
        ConditionalPut::None => String::new(),
    }
}

/// Held by the copy's claim: dropping it stops the renewals and releases the lease.
struct LeaseGuard {
    stop: Arc<Notify>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        // Stored if the lease's task is renewing just now: it stops after that renewal.
        self.stop.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_by_the_store_clock_alone() {
        let at = |text: &str| http_date(text).unwrap();
        let written = at("Mon, 02 Jan 2006 15:04:05 GMT");
        // Dates long past by this node's clock: only the store's `Date` decides.
        assert!(!lease_expired(written, at("Mon, 02 Jan 2006 15:05:04 GMT")));
        assert!(lease_expired(written, at("Mon, 02 Jan 2006 15:05:05 GMT")));
        // A lease the store dates in its own future (renewed since the Date was read) is live.
        assert!(!lease_expired(written, at("Mon, 02 Jan 2006 15:00:00 GMT")));
    }

    #[test]
    fn every_lease_body_is_different() {
        assert_ne!(lease_body(), lease_body());
    }
}
