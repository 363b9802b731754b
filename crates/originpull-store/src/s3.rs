//! The S3-compatible bucket store: each originpull bucket's objects live in an S3 bucket (COS,
//! AWS S3, MinIO, R2, Ceph RGW...), so every edge node sharing it serves what any of them
//! copied, and objects put there by any S3 tool are hits.
//!
//! Client crate: Apache `object_store` (0.14, `aws` feature). It is the well-kept, widely used
//! one of the three candidates; it streams multipart uploads with a bounded number of parts in
//! flight (`WriteMultipart`), carries Content-Type, Cache-Control, Content-Disposition,
//! Content-Encoding and `x-amz-meta-*` both ways (`Attributes`), does ranged GETs as streams,
//! does conditional PUTs (`PutMode::Create` = `If-None-Match: *`, `PutMode::Update` =
//! `If-Match`), which is what a fleet-wide lease needs, and brings the AWS credential chain
//! (web identity, container and instance roles, refreshed before they expire). Its gap: a
//! multipart complete cannot be made conditional. `aws-sdk-s3` adds checksum headers that COS,
//! R2 and MinIO refuse unless configured away and costs far more to build; `opendal` brings a
//! larger abstraction than the two operations needed here.
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
//!
//! Every request has a deadline and a store failing repeatedly is skipped for a while
//! (`store/s3_link.rs`); the fill leases are in `store/s3_lease.rs`, the credentials in
//! `store/s3_credentials.rs`, originpull's own small objects (ACME's state) in
//! `store/s3_private.rs`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredentialProvider};
use object_store::client::{HttpClient, HttpConnector};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, Certificate, ClientOptions, GetOptions,
    GetRange, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};
use parking_lot::Mutex;

use super::s3_credentials::CredentialSource;
use super::s3_lease::{LeaseWrites, Leases, LEASE_FOLDER, TAKEOVER_FOLDER};
use super::s3_link::{DeadlineConnector, StoreLink};
use super::s3_private::{PrivateObjects, PRIVATE_FOLDER};
use super::s3_uploads::{JournaledUpload, UploadJournal};
use super::{
    BucketStore, FillClaim, ListedObject, NewObject, ObjectMeta, ObjectWriter, StoreError,
    StoredObject,
};
use crate::key::ObjectKey;
use crate::metrics::STORE_METRICS;
use originpull_config::S3Settings;
use originpull_support::log_summary::SummarizedLog;

/// Folders of originpull's own objects: never served, stored from an origin or listed.
const RESERVED_FOLDERS: [&str; 3] = [LEASE_FOLDER, TAKEOVER_FOLDER, PRIVATE_FOLDER];

/// Aborts that fail while the store fails: one per copy cut off then.
static ABORT_FAILURES: SummarizedLog =
    SummarizedLog::new(log::Level::Warn, module_path!(), "upload aborts failed");

/// Part size of a multipart upload, and the largest object sent as a single PUT. S3 needs at
/// least 5 MiB per part (but the last); 8 MiB keeps a 10 000-part upload above 78 GiB.
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploaded at once by one writer: a copy holds at most this many parts (plus the one
/// being filled) in memory.
pub const PARTS_IN_FLIGHT: usize = 3;
/// Retries of one failed request (5xx, no connection), within the operation's deadline.
const MAX_RETRIES: usize = 2;
/// A connection is given at most this long (and no longer than a request's deadline).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Objects in S3 buckets, one client per originpull bucket (built on first use, so buckets
/// added by a reload work too).
pub struct S3Store {
    settings: S3Settings,
    credentials: CredentialSource,
    link: Arc<StoreLink>,
    lease_writes: LeaseWrites,
    /// Clients by S3 bucket.
    clients: Mutex<HashMap<String, Arc<AmazonS3>>>,
    /// The credential provider the first client built, shared by the others (one refresh).
    provider: Mutex<Option<AwsCredentialProvider>>,
    journal: Option<Arc<UploadJournal>>,
    /// The HTTP client of requests object_store has no call for (leases, upload listings).
    raw_http: Mutex<Option<HttpClient>>,
}

impl S3Store {
    /// A store with clients of its own, sharing `link` (deadlines and health) with the others
    /// of this process.
    pub fn new(
        settings: S3Settings,
        credentials: CredentialSource,
        link: Arc<StoreLink>,
    ) -> S3Store {
        // Exported from the start, before the first request.
        LazyLock::force(&STORE_METRICS);
        S3Store {
            lease_writes: LeaseWrites::assumed(settings.conditional_put),
            settings,
            credentials,
            link,
            clients: Mutex::new(HashMap::new()),
            provider: Mutex::new(None),
            journal: None,
            raw_http: Mutex::new(None),
        }
    }

    /// Journals this store's multipart uploads in `journal` (see `store/s3_uploads.rs`).
    pub fn with_upload_journal(mut self, journal: Arc<UploadJournal>) -> S3Store {
        self.journal = Some(journal);
        self
    }

    /// Writes leases as the start-up probe found the store can (see [`S3Store::probe_leases`]).
    pub fn with_lease_writes(mut self, writes: LeaseWrites) -> S3Store {
        self.lease_writes = writes;
        self
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    pub(super) fn link(&self) -> &Arc<StoreLink> {
        &self.link
    }

    /// Checks that the S3 bucket behind each of `buckets` answers a listing, and names each one
    /// that does not.
    pub async fn check_reachable(&self, buckets: &[String]) -> Result<(), Vec<String>> {
        let mut failures = Vec::new();
        for bucket in buckets {
            let outcome = match self.client(bucket) {
                Ok(client) => {
                    let prefix = Path::from(self.settings.prefix.as_str());
                    let first_page = async {
                        match client.list(Some(&prefix)).next().await {
                            None | Some(Ok(_)) => Ok(()),
                            Some(Err(e)) => Err(e),
                        }
                    };
                    self.link
                        .run("list", first_page)
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(why) = outcome {
                failures.push(format!(
                    "bucket {bucket:?}: S3 bucket {:?} at {} is not reachable (credentials: \
                     {}): {why}",
                    self.settings.s3_bucket_for(bucket),
                    self.settings.endpoint,
                    self.credentials.describe()
                ));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }

    /// Checks in each S3 bucket behind `buckets` that the store refuses what the fleet's leases
    /// rely on (`store.s3.conditional_put`; see `store/s3_lease.rs`), and returns how leases
    /// are to be written. The error says which mode failed and what to set.
    pub async fn probe_leases(&self, buckets: &[String]) -> Result<LeaseWrites, String> {
        let mut s3_buckets: Vec<String> = buckets
            .iter()
            .map(|b| self.settings.s3_bucket_for(b))
            .collect();
        s3_buckets.sort();
        s3_buckets.dedup();
        let mut writes = LeaseWrites::assumed(self.settings.conditional_put);
        for s3_bucket in s3_buckets {
            let leases = self.leases_of(&s3_bucket).map_err(|e| e.to_string())?;
            let found = leases.probe(&s3_bucket, &self.settings.endpoint).await?;
            writes.replace_if_match &= found.replace_if_match;
        }
        Ok(writes)
    }

    /// The client of originpull bucket `bucket`'s S3 bucket.
    fn client(&self, bucket: &str) -> Result<Arc<AmazonS3>, StoreError> {
        self.client_of(&self.settings.s3_bucket_for(bucket))
    }

    /// Options of every HTTP client talking to the store. No overall timeout: a GET streams a
    /// whole object to a client at the client's pace; the link's deadlines bound each wait.
    fn client_options(&self) -> Result<ClientOptions, StoreError> {
        let mut options = ClientOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT.min(self.link.request_timeout()))
            .with_timeout_disabled()
            .with_allow_http(self.settings.endpoint.starts_with("http://"));
        if let Some(ca_file) = &self.settings.ca_file {
            for certificate in read_ca_file(ca_file).map_err(StoreError::Unavailable)? {
                options = options.with_root_certificate(certificate);
            }
        }
        Ok(options)
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
        // Retries only while the operation's deadline (`StoreLink::run`) lasts.
        let retry = RetryConfig {
            max_retries: MAX_RETRIES,
            retry_timeout: self.link.request_timeout(),
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
        };
        let builder = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_region(&self.settings.region)
            .with_bucket_name(s3_bucket)
            .with_virtual_hosted_style_request(!self.settings.path_style)
            .with_retry(retry)
            .with_http_connector(DeadlineConnector {
                link: self.link.clone(),
            })
            .with_client_options(self.client_options()?);
        let mut provider = self.provider.lock();
        let builder = match provider.as_ref() {
            Some(shared) => builder.with_credentials(shared.clone()),
            None => self.credentials.apply(builder),
        };
        let client = Arc::new(builder.build().map_err(store_error)?);
        provider.get_or_insert_with(|| client.credentials().clone());
        clients.insert(s3_bucket.to_string(), client.clone());
        Ok(client)
    }

    /// The HTTP client of requests sent by hand, made on first use with the store's options
    /// and deadlines.
    pub(super) fn raw_http(&self) -> Result<HttpClient, StoreError> {
        let mut raw_http = self.raw_http.lock();
        if let Some(http) = raw_http.as_ref() {
            return Ok(http.clone());
        }
        let connector = DeadlineConnector {
            link: self.link.clone(),
        };
        let http = connector
            .connect(&self.client_options()?)
            .map_err(store_error)?;
        *raw_http = Some(http.clone());
        Ok(http)
    }

    /// The lease requests of S3 bucket `s3_bucket`.
    fn leases_of(&self, s3_bucket: &str) -> Result<Leases, StoreError> {
        Ok(Leases {
            client: self.client_of(s3_bucket)?,
            http: self.raw_http()?,
            link: self.link.clone(),
            writes: self.lease_writes,
            prefix: self.settings.prefix.clone(),
        })
    }

    /// originpull's own objects of originpull bucket `bucket` (`store/s3_private.rs`).
    pub fn private_objects(&self, bucket: &str) -> Result<PrivateObjects, StoreError> {
        let leases = self.leases_of(&self.settings.s3_bucket_for(bucket))?;
        Ok(PrivateObjects(leases))
    }

    /// The S3 key of `key`; `None` for keys an S3 path cannot hold as is (empty segments, a
    /// trailing `/`), which are then never stored, and for keys under the reserved folders
    /// (leases, takeover markers, originpull's private objects).
    fn path_of(&self, key: &ObjectKey) -> Option<Path> {
        if RESERVED_FOLDERS.iter().any(|f| key.as_str().starts_with(f)) {
            return None;
        }
        let full = format!("{}{}", self.settings.prefix, key.as_str());
        if full.is_empty() || full.ends_with('/') || full.contains("//") {
            return None;
        }
        Path::parse(full).ok()
    }
}

/// The certificates of `store.s3.ca_file`.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<Certificate>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("store.s3.ca_file {}: cannot read: {e}", path.display()))?;
    let certificates = Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("store.s3.ca_file {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "store.s3.ca_file {}: holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certificates)
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
        let result = match self.link.run("head", client.get_opts(&path, head)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error(e)),
        };
        let meta = object_meta(key, &result.meta, &result.attributes);
        Ok(Some(Box::new(S3Object {
            client,
            link: self.link.clone(),
            path,
            version: result.meta.e_tag.clone(),
            meta,
            reader: None,
        })))
    }

    /// The lease object `LEASE_FOLDER + key` (see `store/s3_lease.rs`): the store decides
    /// each race, exactly one node wins (with `conditional_put: none`, best effort).
    async fn claim_fill(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<FillClaim>, StoreError> {
        let leases = self.leases_of(&self.settings.s3_bucket_for(bucket))?;
        let Some(path) = leases
            .lease_path(key.as_str())
            .filter(|_| self.path_of(key).is_some())
        else {
            // Not storable: the copy fails at `create`, no lease needed.
            return Ok(Some(FillClaim::default()));
        };
        leases.claim(key.as_str(), path).await.map_err(store_error)
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
            link: self.link.clone(),
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
        match self.link.run("delete", client.delete(&path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(Some(meta)),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        use futures::TryStreamExt;
        let client = self.client(bucket)?;
        let store_prefix = format!("{}{prefix}", self.settings.prefix);
        // Not bounded as a whole (a large bucket lists for long): each page has its deadline.
        if !self.link.admit("list") {
            return Err(store_error(super::s3_link::store_marked_down()));
        }
        let objects: Vec<object_store::ObjectMeta> = client
            .list(None)
            .try_filter(|meta| {
                std::future::ready(meta.location.as_ref().starts_with(store_prefix.as_str()))
            })
            .try_collect()
            .await
            .map_err(|e| {
                STORE_METRICS.errors.with_label_values(&["list"]).inc();
                store_error(e)
            })?;
        let reserved = RESERVED_FOLDERS.map(|f| format!("{}{f}", self.settings.prefix));
        Ok(objects
            .into_iter()
            .filter(|meta| {
                !reserved
                    .iter()
                    .any(|folder| meta.location.as_ref().starts_with(folder.as_str()))
            })
            .filter_map(|meta| {
                let key = meta
                    .location
                    .as_ref()
                    .strip_prefix(self.settings.prefix.as_str())?;
                let key = ObjectKey::from_stored(key).ok()?;
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
    link: Arc<StoreLink>,
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
            let result = (self.link)
                .run("get", self.client.get_opts(&self.path, options))
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
    link: Arc<StoreLink>,
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
                self.link.clone(),
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
    link: &StoreLink,
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
    if let Ok(result) = link.run("head", client.get_opts(path, head)).await {
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
                let bytes = payload.content_length() as u64;
                (self.link)
                    .run_sending(
                        "put",
                        bytes,
                        self.client.put_opts(&self.path, payload, options),
                    )
                    .await
                    .map_err(store_error)?
                    .e_tag
            }
            Some(upload) => {
                // Each part and the completion have their deadlines (`JournaledUpload`), and
                // `finish` aborts the upload itself when completing it fails.
                upload.finish().await.map_err(store_error)?.e_tag
            }
        };
        let (client, link) = (self.client.clone(), self.link.clone());
        let (path, key, written) = (self.path.clone(), self.key.clone(), self.written);
        drop(self);
        Ok(committed_meta(&client, &link, &path, &key, written, &object, etag).await)
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
                        ABORT_FAILURES.note(|| {
                            format!(
                                "S3 store: aborting the upload of {path} failed (tried again in \
                                 the background): {e}"
                            )
                        });
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
