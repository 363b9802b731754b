//! The S3-compatible bucket store: each originpull bucket's objects live in an S3 bucket (COS,
//! AWS S3, MinIO, R2, Ceph RGW...), so every edge node sharing it serves what any of them
//! copied, and objects put there by any S3 tool are hits.
//!
//! Client crate: Apache `object_store` (0.14, `aws` feature). It is the well-kept, widely used
//! one of the three candidates; it streams multipart uploads with a bounded number of parts in
//! flight (`WriteMultipart`), carries Content-Type, Cache-Control, Content-Disposition,
//! Content-Encoding and `x-amz-meta-*` both ways (`Attributes`), does ranged GETs as streams,
//! and does conditional PUTs (`PutMode::Create` = `If-None-Match: *`, `PutMode::Update` =
//! `If-Match`), which is what a fleet-wide lease needs. Its gap: a multipart complete cannot be
//! made conditional. `aws-sdk-s3` adds checksum headers that COS, R2 and MinIO refuse unless
//! configured away and costs far more to build; `opendal` brings a larger abstraction than the
//! two operations needed here.
//!
//! Mapping: object key = `prefix` + originpull key. An object is read with a HEAD (`open`) and
//! then one ranged GET per contiguous run of reads, pinned to the version opened by `If-Match`,
//! so memory does not grow with the object. A new object is buffered up to one part: if it
//! ends there it is one PUT (its ETag is then the MD5, as on disk); otherwise it becomes a
//! multipart upload with at most [`PARTS_IN_FLIGHT`] parts in flight, completed only by
//! `commit` and aborted when the writer is dropped or fails, so no half object is ever visible
//! and a failed copy leaves no upload behind; an upload in flight is journaled on this node's
//! disk, so one left by a process killed mid-copy is aborted at the next start
//! (`store/s3_uploads.rs`). The ETag served is whatever the store returns (for multipart
//! uploads, `<md5 of part md5s>-<parts>`, not the content's MD5).

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, GetRange, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
    UpdateVersion, WriteMultipart,
};
use parking_lot::Mutex;

use super::s3_uploads::{JournaledUpload, UploadJournal};
use super::{
    BucketStore, FillClaim, ListedObject, NewObject, ObjectMeta, ObjectWriter, StoreError,
    StoredObject,
};
use crate::config::S3Settings;
use crate::key::{encode_origin_path, ObjectKey};
use crate::metrics::STORE_METRICS;

/// Part size of a multipart upload, and the largest object sent as a single PUT. S3 needs at
/// least 5 MiB per part (but the last); 8 MiB keeps a 10 000-part upload above 78 GiB.
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploaded at once by one writer: a copy holds at most this many parts (plus the one
/// being filled) in memory.
pub const PARTS_IN_FLIGHT: usize = 3;
/// Lease objects live under this folder (inside `prefix`); keys under it are never served.
pub const LEASE_FOLDER: &str = ".originpull-leases/";
/// A lease not renewed for this long may be taken over: a node that died mid-copy blocks its
/// key for at most this long.
pub const LEASE_SECS: i64 = 60;
/// The holder renews its lease this often while the copy runs.
const LEASE_RENEW: Duration = Duration::from_secs(20);
/// A failing store answers within this: a request is not held for minutes of retries.
const RETRY_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_RETRIES: usize = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Life of the presigned URL of a lease's HEAD: it is used at once.
const LEASE_HEAD_URL_LIFE: Duration = Duration::from_secs(60);

/// Access keys for the S3 endpoint. Never printed: `Debug` shows only the key id's source.
#[derive(Clone)]
pub struct S3Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3Credentials(<redacted>)")
    }
}

impl S3Credentials {
    /// Reads `[default]` from an AWS shared-credentials file, or without one the
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`) variables. The
    /// error names what is missing, never a value.
    pub fn load(settings: &S3Settings) -> Result<S3Credentials, String> {
        match &settings.credentials_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "store.s3.credentials_file {}: cannot read: {e}",
                        path.display()
                    )
                })?;
                parse_shared_credentials(&text, path)
            }
            None => {
                let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
                match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                    (Some(access_key_id), Some(secret_access_key)) => Ok(S3Credentials {
                        access_key_id,
                        secret_access_key,
                        session_token: var("AWS_SESSION_TOKEN"),
                    }),
                    _ => Err("store.s3: no credentials_file, and AWS_ACCESS_KEY_ID / \
                              AWS_SECRET_ACCESS_KEY are not both set"
                        .to_string()),
                }
            }
        }
    }
}

/// The `[default]` profile of an AWS shared-credentials (INI) file.
fn parse_shared_credentials(text: &str, path: &FsPath) -> Result<S3Credentials, String> {
    let mut in_default = false;
    let mut values: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_default = section.trim() == "default";
            continue;
        }
        if let (true, Some((name, value))) = (in_default, line.split_once('=')) {
            values.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let mut take = |name: &str| values.remove(name).filter(|v| !v.is_empty());
    match (take("aws_access_key_id"), take("aws_secret_access_key")) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(S3Credentials {
            access_key_id,
            secret_access_key,
            session_token: take("aws_session_token"),
        }),
        _ => Err(format!(
            "store.s3.credentials_file {}: the [default] profile needs aws_access_key_id and \
             aws_secret_access_key",
            path.display()
        )),
    }
}

/// Objects in S3 buckets, one client per originpull bucket (built on first use, so buckets
/// added by a reload work too).
pub struct S3Store {
    settings: S3Settings,
    credentials: S3Credentials,
    /// Clients by S3 bucket.
    clients: Mutex<HashMap<String, Arc<AmazonS3>>>,
    journal: Option<Arc<UploadJournal>>,
    /// The HTTP client of requests object_store has no call for (see [`S3Store::head_lease`]).
    raw_http: Mutex<Option<HttpClient>>,
}

impl S3Store {
    pub fn new(settings: S3Settings, credentials: S3Credentials) -> S3Store {
        // Exported from the start, before the first request.
        LazyLock::force(&STORE_METRICS);
        S3Store {
            settings,
            credentials,
            clients: Mutex::new(HashMap::new()),
            journal: None,
            raw_http: Mutex::new(None),
        }
    }

    /// Journals this store's multipart uploads in `journal` (see `store/s3_uploads.rs`).
    pub fn with_upload_journal(mut self, journal: Arc<UploadJournal>) -> S3Store {
        self.journal = Some(journal);
        self
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// Checks that the S3 bucket behind each of `buckets` answers a listing, and names each one
    /// that does not.
    pub async fn check_reachable(&self, buckets: &[String]) -> Result<(), Vec<String>> {
        let mut failures = Vec::new();
        for bucket in buckets {
            let outcome = match self.client(bucket) {
                Ok(client) => {
                    let prefix = Path::from(self.settings.prefix.as_str());
                    let mut listing = client.list(Some(&prefix));
                    match listing.next().await {
                        None | Some(Ok(_)) => Ok(()),
                        Some(Err(e)) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(why) = outcome {
                failures.push(format!(
                    "bucket {bucket:?}: S3 bucket {:?} at {} is not reachable: {why}",
                    self.settings.s3_bucket_for(bucket),
                    self.settings.endpoint
                ));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }

    /// The client of originpull bucket `bucket`'s S3 bucket.
    fn client(&self, bucket: &str) -> Result<Arc<AmazonS3>, StoreError> {
        self.client_of(&self.settings.s3_bucket_for(bucket))
    }

    /// Options of every HTTP client talking to the store.
    pub(super) fn client_options(&self) -> ClientOptions {
        // No overall timeout: a GET streams a whole object to a client at the client's pace.
        ClientOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout_disabled()
            .with_allow_http(self.settings.endpoint.starts_with("http://"))
    }

    /// The client of S3 bucket `s3_bucket`.
    pub(super) fn client_of(&self, s3_bucket: &str) -> Result<Arc<AmazonS3>, StoreError> {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get(s3_bucket) {
            return Ok(client.clone());
        }
        let endpoint = if self.settings.path_style {
            self.settings.endpoint.clone()
        } else {
            // Virtual-hosted style: object_store expects the bucket in the endpoint's host.
            match self.settings.endpoint.split_once("://") {
                Some((scheme, host)) => format!("{scheme}://{s3_bucket}.{host}"),
                None => self.settings.endpoint.clone(),
            }
        };
        let retry = RetryConfig {
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
            ..RetryConfig::default()
        };
        let options = self.client_options();
        let mut builder = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_region(&self.settings.region)
            .with_bucket_name(s3_bucket)
            .with_virtual_hosted_style_request(!self.settings.path_style)
            .with_access_key_id(&self.credentials.access_key_id)
            .with_secret_access_key(&self.credentials.secret_access_key)
            .with_retry(retry)
            .with_client_options(options);
        if let Some(token) = &self.credentials.session_token {
            builder = builder.with_token(token);
        }
        let client = Arc::new(builder.build().map_err(store_error)?);
        clients.insert(s3_bucket.to_string(), client.clone());
        Ok(client)
    }

    /// The HTTP client of requests sent by hand, made on first use with the store's options.
    fn raw_http(&self) -> object_store::Result<HttpClient> {
        let mut raw_http = self.raw_http.lock();
        if let Some(http) = raw_http.as_ref() {
            return Ok(http.clone());
        }
        let http = ReqwestConnector::default().connect(&self.client_options())?;
        *raw_http = Some(http.clone());
        Ok(http)
    }

    /// Reads the lease at `path` with a HEAD, and the store's time of its answer; `None` when
    /// there is no lease. object_store's `head` drops the response's `Date`, so this HEAD is
    /// sent by hand: a URL presigned by object_store's own signer, sent with its HTTP client.
    /// The lease's age is then judged by the store's clock alone (its `Last-Modified` against
    /// its `Date`), so nodes with skewed clocks neither take a live lease over nor wait past
    /// an expired one.
    async fn head_lease(
        &self,
        client: &AmazonS3,
        path: &Path,
    ) -> object_store::Result<Option<HeldLease>> {
        let url = client
            .signed_url_opts(
                http::Method::HEAD,
                path,
                LEASE_HEAD_URL_LIFE,
                &SignedUrlOptions::new(),
            )
            .await?;
        let request = http::Request::head(url.as_str())
            .body(HttpRequestBody::empty())
            .map_err(|e| generic_error(&e.to_string()))?;
        let response = tokio::time::timeout(RETRY_TIMEOUT, self.raw_http()?.execute(request))
            .await
            .map_err(|_| generic_error("the lease HEAD timed out"))?
            .map_err(|e| generic_error(&e.to_string()))?;
        let status = response.status();
        if status == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(generic_error(&format!("the lease HEAD answered {status}")));
        }
        let headers = response.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let last_modified = text("last-modified")
            .and_then(http_date)
            .ok_or_else(|| generic_error("the lease HEAD has no readable Last-Modified"))?;
        Ok(Some(HeldLease {
            version: UpdateVersion {
                e_tag: text("etag").map(str::to_string),
                version: text("x-amz-version-id").map(str::to_string),
            },
            last_modified,
            store_now: store_date(headers),
        }))
    }

    /// The S3 key of `key`; `None` for keys an S3 path cannot hold as is (empty segments, a
    /// trailing `/`), which are then never stored.
    fn path_of(&self, key: &ObjectKey) -> Option<Path> {
        if key.as_str().starts_with(LEASE_FOLDER) {
            return None;
        }
        let full = format!("{}{}", self.settings.prefix, key.as_str());
        if full.is_empty() || full.ends_with('/') || full.contains("//") {
            return None;
        }
        Path::parse(full).ok()
    }
}

/// Renews a held lease until dropped, then deletes it.
struct LeaseGuard {
    client: Arc<AmazonS3>,
    path: Path,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renewer.abort();
        let (client, path) = (self.client.clone(), self.path.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = client.delete(&path).await {
                    // It expires by itself; another node takes it over after LEASE_SECS.
                    log::warn!("S3 store: releasing the lease {path}: {e}");
                }
            });
        }
    }
}

/// A lease as a HEAD found it.
struct HeldLease {
    /// Its ETag (and version), for the `If-Match` of a takeover.
    version: UpdateVersion,
    /// When it was last written (created or renewed), by the store's clock.
    last_modified: chrono::DateTime<chrono::Utc>,
    /// The `Date` of the store's answer: the store's clock at the HEAD.
    store_now: Option<chrono::DateTime<chrono::Utc>>,
}

/// Whether a lease last written at `last_modified` may be taken over at `store_now`, both read
/// from the store's clock.
fn lease_expired(
    last_modified: chrono::DateTime<chrono::Utc>,
    store_now: chrono::DateTime<chrono::Utc>,
) -> bool {
    (store_now - last_modified).num_seconds() >= LEASE_SECS
}

/// An HTTP date (`Date`, `Last-Modified`).
fn http_date(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
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

fn lease_body() -> PutPayload {
    PutPayload::from(format!(
        "originpull fill lease, pid {}\n",
        std::process::id()
    ))
}

fn version_of(result: object_store::PutResult) -> UpdateVersion {
    UpdateVersion {
        e_tag: result.e_tag,
        version: result.version,
    }
}

/// Keeps the lease fresh while the copy runs; stops if another node took it over.
async fn renew_lease(client: Arc<AmazonS3>, path: Path, mut version: UpdateVersion) {
    loop {
        tokio::time::sleep(LEASE_RENEW).await;
        let options = PutOptions {
            mode: PutMode::Update(version.clone()),
            ..PutOptions::default()
        };
        match timed("lease", client.put_opts(&path, lease_body(), options)).await {
            Ok(result) => version = version_of(result),
            Err(e) => {
                log::warn!("S3 store: lease {path} lost: {e}");
                return;
            }
        }
    }
}

/// Runs one request to the store, timing it and counting its failure under `operation`.
pub(super) async fn timed<T>(
    operation: &'static str,
    request: impl std::future::Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    let started = Instant::now();
    let result = request.await;
    STORE_METRICS
        .request_seconds
        .with_label_values(&[operation])
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        let expected = matches!(
            e,
            object_store::Error::NotFound { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
        );
        if !expected {
            STORE_METRICS.errors.with_label_values(&[operation]).inc();
        }
    }
    result
}

fn store_error(e: object_store::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The object's metadata as originpull describes it, from an S3 response.
fn object_meta(
    key: &ObjectKey,
    meta: &object_store::ObjectMeta,
    attributes: &Attributes,
) -> ObjectMeta {
    let text = |attribute: &Attribute| attributes.get(attribute).map(|v| v.as_ref().to_string());
    let mut headers = Vec::new();
    for (name, attribute) in [
        ("cache-control", Attribute::CacheControl),
        ("content-disposition", Attribute::ContentDisposition),
        ("content-encoding", Attribute::ContentEncoding),
        ("expires", Attribute::Metadata("expires".into())),
    ] {
        if let Some(value) = text(&attribute) {
            headers.push((name.to_string(), value));
        }
    }
    ObjectMeta {
        key: key.as_str().to_string(),
        size: meta.size,
        content_type: text(&Attribute::ContentType)
            .unwrap_or_else(|| "application/octet-stream".to_string()),
        etag: meta
            .e_tag
            .as_deref()
            .map(|t| t.trim_start_matches("W/").trim_matches('"').to_string())
            .unwrap_or_default(),
        last_modified: u64::try_from(meta.last_modified.timestamp()).unwrap_or(0),
        headers,
        // Origin validators and the check time are not kept in S3 metadata yet: revalidation
        // of an S3 object is judged by its store Last-Modified.
        origin_etag: None,
        origin_last_modified: None,
        // A multipart upload's metadata is sent before its bytes, so the CRC cannot travel
        // with it; the store keeps its own checksums.
        crc64: None,
        checked_at: 0,
    }
}

/// Content-Type and the kept origin headers as S3 headers; `expires` has no S3 attribute in
/// object_store, so it travels as `x-amz-meta-expires`.
fn attributes_of(object: &NewObject) -> Attributes {
    let mut attributes = Attributes::new();
    if let Some(content_type) = &object.content_type {
        attributes.insert(
            Attribute::ContentType,
            AttributeValue::from(content_type.clone()),
        );
    }
    for (name, value) in &object.headers {
        let attribute = match name.as_str() {
            "cache-control" => Attribute::CacheControl,
            "content-disposition" => Attribute::ContentDisposition,
            "content-encoding" => Attribute::ContentEncoding,
            other => Attribute::Metadata(other.to_string().into()),
        };
        attributes.insert(attribute, AttributeValue::from(value.clone()));
    }
    attributes
}

#[async_trait]
impl BucketStore for S3Store {
    async fn open(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        let Some(path) = self.path_of(key) else {
            return Ok(None);
        };
        let client = self.client(bucket)?;
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let result = match timed("head", client.get_opts(&path, head)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error(e)),
        };
        let meta = object_meta(key, &result.meta, &result.attributes);
        Ok(Some(Box::new(S3Object {
            client,
            path,
            version: result.meta.e_tag.clone(),
            meta,
            reader: None,
        })))
    }

    /// A lease object `LEASE_FOLDER + key`, created with `If-None-Match: *`; one older than
    /// [`LEASE_SECS`] by the store's clock (its Last-Modified against the `Date` of the HEAD
    /// that read it, see [`S3Store::head_lease`]) is taken over with `If-Match` on its ETag.
    /// The store decides each race: exactly one node wins.
    async fn claim_fill(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<FillClaim>, StoreError> {
        let Some(path) = Path::parse(format!(
            "{}{LEASE_FOLDER}{}",
            self.settings.prefix,
            key.as_str()
        ))
        .ok()
        .filter(|_| self.path_of(key).is_some()) else {
            // Not storable: the copy fails at `create`, no lease needed.
            return Ok(Some(FillClaim::default()));
        };
        let client = self.client(bucket)?;
        let create = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let version = match timed("lease", client.put_opts(&path, lease_body(), create)).await {
            Ok(result) => version_of(result),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let held = match timed("lease", self.head_lease(&client, &path)).await {
                    Ok(Some(held)) => held,
                    // Released meanwhile: the caller asks again.
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(store_error(e)),
                };
                let store_now = held.store_now.unwrap_or_else(|| {
                    log::warn!(
                        "S3 store: the store sent no Date with the lease {path}; judging its \
                         age by this node's clock"
                    );
                    chrono::Utc::now()
                });
                if !lease_expired(held.last_modified, store_now) {
                    return Ok(None);
                }
                let take_over = PutOptions {
                    mode: PutMode::Update(held.version),
                    ..PutOptions::default()
                };
                match timed("lease", client.put_opts(&path, lease_body(), take_over)).await {
                    Ok(result) => {
                        log::warn!("S3 store: took over the expired lease {path}");
                        version_of(result)
                    }
                    Err(
                        object_store::Error::Precondition { .. }
                        | object_store::Error::AlreadyExists { .. }
                        | object_store::Error::NotFound { .. },
                    ) => return Ok(None),
                    Err(e) => return Err(store_error(e)),
                }
            }
            Err(e) => return Err(store_error(e)),
        };
        let renewer = tokio::spawn(renew_lease(client.clone(), path.clone(), version));
        Ok(Some(FillClaim::held_by(LeaseGuard {
            client,
            path,
            renewer,
        })))
    }

    async fn create(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Box<dyn ObjectWriter>, StoreError> {
        let path = self.path_of(key).ok_or_else(|| {
            StoreError::Io(std::io::Error::other(format!(
                "key {:?} cannot be an S3 key (empty segment or trailing `/`)",
                key.as_str()
            )))
        })?;
        Ok(Box::new(S3Writer {
            client: self.client(bucket)?,
            s3_bucket: self.settings.s3_bucket_for(bucket),
            journal: self.journal.clone(),
            path,
            key: key.clone(),
            described: None,
            buffer: BytesMut::new(),
            upload: None,
            written: 0,
        }))
    }

    /// Variants (compressed encodings) are not written to the shared store: the memory tier
    /// keeps them on each node, and one lost is made again (see `store/mod.rs`).
    async fn open_variant(
        &self,
        _bucket: &str,
        _key: &ObjectKey,
        _of: &ObjectMeta,
        _variant: &str,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        Ok(None)
    }

    async fn put_variant(
        &self,
        _bucket: &str,
        _key: &ObjectKey,
        _of: &ObjectMeta,
        _variant: &str,
        _body: Bytes,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn delete(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        let Some(object) = self.open(bucket, key).await? else {
            return Ok(None);
        };
        let meta = object.meta().clone();
        let Some(path) = self.path_of(key) else {
            return Ok(None);
        };
        let client = self.client(bucket)?;
        match timed("delete", client.delete(&path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(Some(meta)),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        use futures::TryStreamExt;
        let client = self.client(bucket)?;
        let store_prefix = format!("{}{prefix}", self.settings.prefix);
        let objects: Vec<object_store::ObjectMeta> = client
            .list(None)
            .try_filter(|meta| {
                std::future::ready(meta.location.as_ref().starts_with(store_prefix.as_str()))
            })
            .try_collect()
            .await
            .map_err(store_error)?;
        let lease_folder = format!("{}{LEASE_FOLDER}", self.settings.prefix);
        Ok(objects
            .into_iter()
            .filter(|meta| !meta.location.as_ref().starts_with(lease_folder.as_str()))
            .filter_map(|meta| {
                let key = meta
                    .location
                    .as_ref()
                    .strip_prefix(self.settings.prefix.as_str())?;
                let key = ObjectKey::from_request_path(&encode_origin_path(key)).ok()?;
                Some(ListedObject {
                    key,
                    size: meta.size,
                })
            })
            .collect())
    }

    /// The check time is not written back to S3 (that would be a copy onto itself): a 304 is
    /// counted, and the object is checked again on a hit after the next period.
    async fn mark_checked(&self, bucket: &str, key: &ObjectKey) -> Result<bool, StoreError> {
        Ok(self.open(bucket, key).await?.is_some())
    }
}

/// An object opened with a HEAD; its bytes come from ranged GETs of that same version.
struct S3Object {
    client: Arc<AmazonS3>,
    path: Path,
    /// The ETag as the store sent it, for `If-Match`.
    version: Option<String>,
    meta: ObjectMeta,
    reader: Option<RangeReader>,
}

/// One open GET from `position` to the end of the object.
struct RangeReader {
    position: u64,
    pending: Bytes,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
}

#[async_trait]
impl StoredObject for S3Object {
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    fn is_remote(&self) -> bool {
        true
    }

    async fn read_at(&mut self, offset: u64, max: usize) -> Result<Bytes, StoreError> {
        if offset >= self.meta.size || max == 0 {
            return Ok(Bytes::new());
        }
        if self.reader.as_ref().map(|r| r.position) != Some(offset) {
            let options = GetOptions {
                range: Some(GetRange::Offset(offset)),
                if_match: self.version.clone(),
                ..GetOptions::default()
            };
            let result = timed("get", self.client.get_opts(&self.path, options))
                .await
                .map_err(|e| match e {
                    object_store::Error::Precondition { .. }
                    | object_store::Error::NotFound { .. } => StoreError::Corrupt(format!(
                        "{:?} changed or vanished in the store while being read",
                        self.meta.key
                    )),
                    other => store_error(other),
                })?;
            self.reader = Some(RangeReader {
                position: offset,
                pending: Bytes::new(),
                stream: result.into_stream(),
            });
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(Bytes::new());
        };
        // Up to `max` bytes, as the disk store reads them: callers (the memory tier) may read a
        // whole small object in one call.
        let mut out = BytesMut::new();
        while out.len() < max {
            if reader.pending.is_empty() {
                match reader.stream.next().await {
                    Some(Ok(chunk)) => reader.pending = chunk,
                    Some(Err(e)) => {
                        self.reader = None;
                        return Err(store_error(e));
                    }
                    None => break,
                }
            }
            let n = reader.pending.len().min(max - out.len());
            let piece = reader.pending.split_to(n);
            reader.position += n as u64;
            if out.is_empty() && n == max {
                return Ok(piece);
            }
            out.extend_from_slice(&piece);
        }
        Ok(out.freeze())
    }
}

/// A new object: one part buffered, then a multipart upload (see the module documentation).
struct S3Writer {
    client: Arc<AmazonS3>,
    s3_bucket: String,
    journal: Option<Arc<UploadJournal>>,
    path: Path,
    key: ObjectKey,
    /// Metadata known before the bytes, sent with the multipart upload's initiation.
    described: Option<NewObject>,
    buffer: BytesMut,
    upload: Option<WriteMultipart>,
    written: u64,
}

impl S3Writer {
    async fn start_upload(&mut self) -> Result<&mut WriteMultipart, StoreError> {
        if self.upload.is_none() {
            let options = PutMultipartOptions {
                attributes: self
                    .described
                    .as_ref()
                    .map(attributes_of)
                    .unwrap_or_default(),
                ..PutMultipartOptions::default()
            };
            let upload = JournaledUpload::create(
                self.client.clone(),
                self.path.clone(),
                &self.s3_bucket,
                options,
                self.journal.as_ref(),
            )
            .await
            .map_err(store_error)?;
            self.upload = Some(WriteMultipart::new_with_chunk_size(
                Box::new(upload),
                PART_BYTES,
            ));
        }
        self.upload
            .as_mut()
            .ok_or_else(|| StoreError::Io(std::io::Error::other("multipart upload missing")))
    }
}

/// The committed object as the store describes it; falls back to what was written when the
/// store cannot be asked right after the commit.
async fn committed_meta(
    client: &AmazonS3,
    path: &Path,
    key: &ObjectKey,
    written: u64,
    object: &NewObject,
    etag: Option<String>,
) -> ObjectMeta {
    let head = GetOptions {
        head: true,
        ..GetOptions::default()
    };
    if let Ok(result) = client.get_opts(path, head).await {
        return object_meta(key, &result.meta, &result.attributes);
    }
    let written = object_store::ObjectMeta {
        location: path.clone(),
        last_modified: chrono::Utc::now(),
        size: written,
        e_tag: etag,
        version: None,
    };
    object_meta(key, &written, &attributes_of(object))
}

#[async_trait]
impl ObjectWriter for S3Writer {
    fn describe(&mut self, object: &NewObject) {
        self.described = Some(object.clone());
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.written += chunk.len() as u64;
        if self.upload.is_none() && self.buffer.len() + chunk.len() <= PART_BYTES {
            self.buffer.extend_from_slice(&chunk);
            return Ok(());
        }
        let buffered = std::mem::take(&mut self.buffer).freeze();
        let upload = self.start_upload().await?;
        upload
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(store_error)?;
        if !buffered.is_empty() {
            upload.put(buffered);
        }
        upload.put(chunk);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>, object: NewObject) -> Result<ObjectMeta, StoreError> {
        let etag = match self.upload.take() {
            None => {
                let payload = PutPayload::from(std::mem::take(&mut self.buffer).freeze());
                let options = PutOptions {
                    attributes: attributes_of(&object),
                    ..PutOptions::default()
                };
                timed("put", self.client.put_opts(&self.path, payload, options))
                    .await
                    .map_err(store_error)?
                    .e_tag
            }
            Some(upload) => {
                // `finish` aborts the upload itself when completing it fails.
                timed("multipart_complete", upload.finish())
                    .await
                    .map_err(store_error)?
                    .e_tag
            }
        };
        let client = self.client.clone();
        let (path, key, written) = (self.path.clone(), self.key.clone(), self.written);
        drop(self);
        Ok(committed_meta(&client, &path, &key, written, &object, etag).await)
    }
}

impl Drop for S3Writer {
    /// A writer dropped before `commit` (origin fault, size limit, shutdown) aborts its upload,
    /// so the store keeps no parts of it.
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        let path = self.path.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = upload.abort().await {
                        log::warn!("S3 store: aborting the upload of {path}: {e}");
                    }
                });
            }
            Err(_) => log::warn!("S3 store: upload of {path} left unaborted (no runtime)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_default_profile_only() {
        let text = "[other]\naws_access_key_id = WRONG\naws_secret_access_key = WRONG\n\n\
                    [default]\n# comment\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key=secret/key+1\n";
        let credentials = parse_shared_credentials(text, FsPath::new("c")).unwrap();
        assert_eq!(credentials.access_key_id, "AKIDEXAMPLE");
        assert_eq!(credentials.secret_access_key, "secret/key+1");
        assert!(credentials.session_token.is_none());
        assert!(!format!("{credentials:?}").contains("secret"));
    }

    #[test]
    fn a_profile_without_the_secret_is_refused_without_showing_values() {
        let err = parse_shared_credentials(
            "[default]\naws_access_key_id = AKIDEXAMPLE\n",
            FsPath::new("/etc/c"),
        )
        .unwrap_err();
        assert!(
            err.contains("/etc/c") && err.contains("aws_secret_access_key"),
            "{err}"
        );
        assert!(!err.contains("AKIDEXAMPLE"), "{err}");
    }

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
    fn kept_headers_travel_as_s3_attributes_and_back() {
        let object = NewObject {
            content_type: Some("text/css".into()),
            headers: vec![
                ("cache-control".into(), "max-age=60".into()),
                ("expires".into(), "Thu, 01 Jan 2037 00:00:00 GMT".into()),
            ],
            ..NewObject::default()
        };
        let attributes = attributes_of(&object);
        let key = ObjectKey::from_request_path("/a.css").unwrap();
        let meta = object_store::ObjectMeta {
            location: Path::from("a.css"),
            last_modified: chrono::Utc::now(),
            size: 3,
            e_tag: Some("\"0123\"".into()),
            version: None,
        };
        let back = object_meta(&key, &meta, &attributes);
        assert_eq!(back.content_type, "text/css");
        assert_eq!(back.etag, "0123");
        assert_eq!(back.headers, object.headers);
    }
}
