//! Multipart uploads of the S3 store that nobody will finish: this node's journal of the
//! uploads it has in flight, and the start-up clean-up that aborts those a killed (`kill -9`,
//! power loss) earlier run left behind, plus any upload under the store's prefix older than a
//! day, so no upload's parts stay billed in the store forever.
//!
//! The journal is a directory (`.s3-uploads/` in the local tier's dir, else in `data_dir`) with
//! one small JSON file per upload in flight: S3 bucket, key, upload id, start time and the pid.
//! [`JournaledUpload`] writes it (fsynced, file and directory) right after the store hands out
//! the upload id and before the first part, and removes it once the upload is completed or
//! aborted. An entry that cannot be written (a full or read-only disk) aborts the upload before
//! its first part and fails the copy: no upload runs that a crash could leave behind unknown.
//! An abort that fails (the store is down just then) is tried again in the background while the
//! node runs, backing off up to [`ABORT_RETRY_MAX`], and its entry stays until it succeeds. It drives the upload through object_store's `MultipartStore` API, because the
//! `put_multipart_opts` upload never reveals its id; `create_multipart_opts` carries the same
//! Content-Type and metadata. At start the entries of processes that are no longer running are
//! aborted by id, which touches only this node's uploads (an entry of a process still running,
//! the old process of a graceful upgrade, is left to it). An upload created in the instant
//! before its entry reached the disk is caught by the day-old sweep.
//!
//! The day-old sweep needs `ListMultipartUploads` (`GET /?uploads`), for which object_store has
//! no call. It is signed by object_store's own SigV4 signer (`Signer::signed_url_opts`, a
//! presigned URL carrying the `uploads`, `prefix` and marker parameters) and sent with
//! object_store's HTTP client (with the store's deadlines), so no signing code of ours and no second
//! S3 client crate (`rusty-s3` has no ListMultipartUploads action; `aws-sigv4` would sign the
//! same request with a second copy of what object_store already has). The XML is read with
//! `quick-xml`, which object_store already uses. Uploads younger than a day are never swept:
//! another live node may own them. The age is judged by the store's `Date` against the
//! upload's `Initiated`, not by this node's clock.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use object_store::client::HttpRequestBody;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{MultipartId, MultipartUpload, PutPayload, PutResult, UploadPart};
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};

use super::s3::S3Store;
use super::s3_lease::{generic_error, store_date};
use super::s3_link::StoreLink;
use crate::metrics::STORE_METRICS;

/// The journal's directory inside the node's state directory.
pub const JOURNAL_DIR: &str = ".s3-uploads";
/// Uploads older than this under the store's prefix are aborted at start, whoever began them.
pub const STALE_UPLOAD_SECS: i64 = 24 * 60 * 60;
/// Life of the presigned listing URL: it is used at once.
const LIST_URL_SECS: u64 = 60;
/// Pages of 1000 uploads; more than this many pages means something is wrong with the markers.
const MAX_LIST_PAGES: usize = 10_000;
/// The first wait before a failed abort is tried again; it doubles up to [`ABORT_RETRY_MAX`].
const ABORT_RETRY_FIRST: Duration = Duration::from_secs(1);
const ABORT_RETRY_MAX: Duration = Duration::from_secs(60);

/// One multipart upload in flight, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub s3_bucket: String,
    /// The S3 key (with the store's prefix).
    pub key: String,
    pub upload_id: String,
    /// When the upload was created, in seconds since the Unix epoch.
    pub started: u64,
    /// The process that created it.
    pub pid: u32,
}

/// This node's journal of multipart uploads in flight (see the module documentation).
#[derive(Debug)]
pub struct UploadJournal {
    dir: PathBuf,
    /// Names this process's files apart from an earlier run's, even under the same pid.
    run: String,
    next: AtomicU64,
    /// Entries left by processes that are no longer running, read before this one wrote any.
    earlier: Mutex<Vec<(PathBuf, JournalEntry)>>,
}

impl UploadJournal {
    /// Opens (creating) the journal in `dir` and reads what earlier runs left in it.
    pub fn open(dir: &FsPath) -> std::io::Result<UploadJournal> {
        std::fs::create_dir_all(dir)?;
        let own_pid = std::process::id();
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut earlier = Vec::new();
        for file in std::fs::read_dir(dir)? {
            let path = file?.path();
            let entry = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<JournalEntry>(&bytes).ok());
            match entry {
                Some(entry) if entry.pid != own_pid && process_running(entry.pid) => {}
                Some(entry) => earlier.push((path, entry)),
                None => {
                    // Cut short by a crash while being written: its upload had no part yet,
                    // and the day-old sweep aborts it.
                    log::warn!(
                        "S3 store: removing the unreadable upload journal entry {}",
                        path.display()
                    );
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(UploadJournal {
            dir: dir.to_path_buf(),
            run: format!("{own_pid}-{started}"),
            next: AtomicU64::new(0),
            earlier: Mutex::new(earlier),
        })
    }

    /// Writes `entry` durably; the returned ticket removes it.
    async fn record(self: &Arc<Self>, entry: JournalEntry) -> std::io::Result<JournalTicket> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}-{number}.json", self.run));
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
            let mut file = std::fs::File::create(&path)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            // The new name must survive a crash too.
            std::fs::File::open(&dir)?.sync_all()?;
            Ok(JournalTicket { path })
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// The entries earlier runs left (each handed out once).
    fn take_earlier(&self) -> Vec<(PathBuf, JournalEntry)> {
        std::mem::take(&mut *self.earlier.lock())
    }
}

/// Whether `pid` is a running process (Linux: it has a `/proc` entry).
fn process_running(pid: u32) -> bool {
    FsPath::new("/proc").join(pid.to_string()).exists()
}

/// One journal file; removed once its upload is completed or aborted.
#[derive(Debug)]
struct JournalTicket {
    path: PathBuf,
}

impl JournalTicket {
    fn remove(self) {
        // A removal lost in a crash only makes the next start abort an upload that is gone.
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!(
                "S3 store: removing the upload journal entry {}: {e}",
                self.path.display()
            );
        }
    }
}

/// A multipart upload created with its id in hand, journaled until it is completed or aborted;
/// `WriteMultipart` drives it like object_store's own upload.
#[derive(Debug)]
pub(super) struct JournaledUpload {
    client: Arc<object_store::aws::AmazonS3>,
    link: Arc<StoreLink>,
    path: Path,
    id: MultipartId,
    next_part: usize,
    parts: Arc<Mutex<Vec<Option<PartId>>>>,
    ticket: Option<JournalTicket>,
}

impl JournaledUpload {
    /// Creates the upload with `options` and journals it (when `journal` is set). When the
    /// entry cannot be written the upload is aborted at once and this fails: an upload a crash
    /// could leave behind with no entry is never started.
    pub(super) async fn create(
        client: Arc<object_store::aws::AmazonS3>,
        link: Arc<StoreLink>,
        path: Path,
        s3_bucket: &str,
        options: object_store::PutMultipartOptions,
        journal: Option<&Arc<UploadJournal>>,
    ) -> object_store::Result<JournaledUpload> {
        let id = link
            .run(
                "multipart_start",
                client.create_multipart_opts(&path, options),
            )
            .await?;
        let mut upload = JournaledUpload {
            client,
            link,
            path,
            id,
            next_part: 0,
            parts: Arc::new(Mutex::new(Vec::new())),
            ticket: None,
        };
        let Some(journal) = journal else {
            return Ok(upload);
        };
        let entry = JournalEntry {
            s3_bucket: s3_bucket.to_string(),
            key: upload.path.as_ref().to_string(),
            upload_id: upload.id.clone(),
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            pid: std::process::id(),
        };
        match journal.record(entry).await {
            Ok(ticket) => {
                upload.ticket = Some(ticket);
                Ok(upload)
            }
            Err(e) => {
                STORE_METRICS.errors.with_label_values(&["journal"]).inc();
                let why = format!(
                    "cannot journal the multipart upload of {} in {} ({e}), so it is not started",
                    upload.path,
                    journal.dir.display()
                );
                // Nothing was uploaded yet; a failed abort is tried again in the background.
                let _ = upload.abort().await;
                Err(generic_error(&why))
            }
        }
    }

    fn forget(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            ticket.remove();
        }
    }
}

#[async_trait]
impl MultipartUpload for JournaledUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let index = self.next_part;
        self.next_part += 1;
        let (client, path, id) = (self.client.clone(), self.path.clone(), self.id.clone());
        let (link, parts) = (self.link.clone(), self.parts.clone());
        Box::pin(async move {
            let bytes = data.content_length() as u64;
            let part = link
                .run_sending(
                    "multipart_part",
                    bytes,
                    client.put_part(&path, &id, index, data),
                )
                .await?;
            let mut parts = parts.lock();
            if parts.len() <= index {
                parts.resize(index + 1, None);
            }
            parts[index] = Some(part);
            Ok(())
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let parts: Option<Vec<PartId>> = {
            let parts = self.parts.lock();
            (parts.len() == self.next_part)
                .then(|| parts.iter().cloned().collect())
                .flatten()
        };
        let parts = parts.ok_or_else(|| object_store::Error::Generic {
            store: "S3",
            source: format!("{}: a part of the upload is missing", self.path).into(),
        })?;
        let result = self
            .link
            .run(
                "multipart_complete",
                self.client.complete_multipart(&self.path, &self.id, parts),
            )
            .await?;
        self.forget();
        Ok(result)
    }

    /// Aborts the upload; when that fails, hands it to a task that tries again in the
    /// background (keeping its journal entry until then) and returns the failure.
    async fn abort(&mut self) -> object_store::Result<()> {
        match abort_once(&self.link, &self.client, &self.path, &self.id).await {
            Ok(()) => {
                self.forget();
                Ok(())
            }
            Err(e) => {
                let retry = AbortRetry {
                    client: self.client.clone(),
                    link: self.link.clone(),
                    path: self.path.clone(),
                    id: self.id.clone(),
                    ticket: self.ticket.take(),
                };
                tokio::spawn(retry.run());
                Err(e)
            }
        }
    }
}

/// One abort of upload `id` of `path`; an upload already gone counts as aborted.
async fn abort_once(
    link: &StoreLink,
    client: &object_store::aws::AmazonS3,
    path: &Path,
    id: &MultipartId,
) -> object_store::Result<()> {
    match link
        .run("multipart_abort", client.abort_multipart(path, id))
        .await
    {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// An abort that failed, tried again in the background until it succeeds (see the module
/// documentation); its journal entry goes once it did.
struct AbortRetry {
    client: Arc<object_store::aws::AmazonS3>,
    link: Arc<StoreLink>,
    path: Path,
    id: MultipartId,
    ticket: Option<JournalTicket>,
}

impl AbortRetry {
    async fn run(self) {
        let mut wait = ABORT_RETRY_FIRST;
        let mut tries = 1;
        loop {
            tokio::time::sleep(wait).await;
            tries += 1;
            if abort_once(&self.link, &self.client, &self.path, &self.id)
                .await
                .is_ok()
            {
                break;
            }
            wait = (wait * 2).min(ABORT_RETRY_MAX);
        }
        STORE_METRICS
            .uploads_aborted
            .with_label_values(&["retried"])
            .inc();
        log::info!(
            "S3 store: aborted the upload of {} after {tries} tries",
            self.path
        );
        if let Some(ticket) = self.ticket {
            ticket.remove();
        }
    }
}

/// `ListMultipartUploadsResult`, the parts read here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadListing {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<ListedUpload>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedUpload {
    key: String,
    upload_id: String,
    initiated: String,
}

fn parse_listing(xml: &[u8]) -> Result<UploadListing, String> {
    let text = std::str::from_utf8(xml).map_err(|e| e.to_string())?;
    quick_xml::de::from_str(text).map_err(|e| format!("unreadable ListMultipartUploads: {e}"))
}

/// Whether an upload `initiated` (RFC 3339, the store's clock) is older than a day at `now`.
fn is_stale(initiated: &str, now: chrono::DateTime<chrono::Utc>) -> bool {
    chrono::DateTime::parse_from_rfc3339(initiated)
        .map(|at| (now - at.with_timezone(&chrono::Utc)).num_seconds() > STALE_UPLOAD_SECS)
        .unwrap_or(false)
}

/// What became of an upload an earlier run journaled, once the clean-up asked the store to
/// abort it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeftUpload {
    /// This clean-up aborted it.
    Aborted,
    /// It was gone already: completed, or aborted by anyone.
    Gone,
    /// The store could not tell; the entry is kept for the next start.
    Unknown,
}

/// Aborted uploads of one S3 bucket, by why.
#[derive(Debug, Default, Clone, Copy)]
struct Aborted {
    earlier_run: u64,
    older_than_a_day: u64,
}

/// The start-up clean-up, run once in the background right after start (serving does not
/// wait for it). It has its own store clients, on its own runtime.
pub struct UploadCleanup {
    store: S3Store,
    journal: Arc<UploadJournal>,
    /// The originpull buckets whose S3 buckets are swept.
    buckets: Vec<String>,
}

impl UploadCleanup {
    pub fn new(store: S3Store, journal: Arc<UploadJournal>, buckets: Vec<String>) -> Self {
        UploadCleanup {
            store,
            journal,
            buckets,
        }
    }

    async fn run(&self) {
        let mut aborted: BTreeMap<String, Aborted> = BTreeMap::new();
        for (file, entry) in self.journal.take_earlier() {
            match self.abort_journaled(&entry).await {
                LeftUpload::Aborted => {
                    aborted
                        .entry(entry.s3_bucket.clone())
                        .or_default()
                        .earlier_run += 1;
                    STORE_METRICS
                        .uploads_aborted
                        .with_label_values(&["earlier_run"])
                        .inc();
                }
                LeftUpload::Gone => {}
                // Kept: the next start tries again.
                LeftUpload::Unknown => continue,
            }
            let _ = std::fs::remove_file(&file);
        }
        let mut s3_buckets: Vec<String> = self
            .buckets
            .iter()
            .map(|b| self.store.settings().s3_bucket_for(b))
            .collect();
        s3_buckets.sort();
        s3_buckets.dedup();
        for s3_bucket in s3_buckets {
            match self.sweep_stale(&s3_bucket).await {
                Ok(count) => aborted.entry(s3_bucket).or_default().older_than_a_day += count,
                Err(why) => log::warn!(
                    "S3 store: cannot list the multipart uploads of S3 bucket {s3_bucket:?} \
                     (stale uploads are left until the next start): {why}"
                ),
            }
        }
        for (s3_bucket, count) in aborted {
            let total = count.earlier_run + count.older_than_a_day;
            if total > 0 {
                log::info!(
                    "S3 store: aborted {total} multipart upload(s) in S3 bucket {s3_bucket:?}: \
                     {} left by an earlier run of this node, {} older than a day",
                    count.earlier_run,
                    count.older_than_a_day
                );
            }
        }
    }

    /// Aborts a journaled upload.
    async fn abort_journaled(&self, entry: &JournalEntry) -> LeftUpload {
        let Ok(path) = Path::parse(&entry.key) else {
            return LeftUpload::Gone;
        };
        let client = match self.store.client_of(&entry.s3_bucket) {
            Ok(client) => client,
            Err(e) => {
                log::warn!("S3 store: {e}");
                return LeftUpload::Unknown;
            }
        };
        match (self.store.link())
            .run(
                "multipart_abort",
                client.abort_multipart(&path, &entry.upload_id),
            )
            .await
        {
            Ok(()) => LeftUpload::Aborted,
            Err(object_store::Error::NotFound { .. }) => LeftUpload::Gone,
            Err(e) => {
                log::warn!(
                    "S3 store: aborting the upload of {path} left by an earlier run \
                     (tried again at the next start): {e}"
                );
                LeftUpload::Unknown
            }
        }
    }

    /// Lists the uploads under the store's prefix page by page and aborts those older than a
    /// day; returns how many it aborted.
    async fn sweep_stale(&self, s3_bucket: &str) -> Result<u64, String> {
        let client = self.store.client_of(s3_bucket).map_err(|e| e.to_string())?;
        let http = self.store.raw_http().map_err(|e| e.to_string())?;
        let prefix = self.store.settings().prefix.clone();
        let mut markers: Option<(String, String)> = None;
        let mut aborted = 0;
        for _ in 0..MAX_LIST_PAGES {
            let mut query = vec![("uploads", String::new()), ("prefix", prefix.clone())];
            if let Some((key, upload_id)) = &markers {
                query.push(("key-marker", key.clone()));
                query.push(("upload-id-marker", upload_id.clone()));
            }
            let options = SignedUrlOptions::new().with_query(query);
            let url = client
                .signed_url_opts(
                    http::Method::GET,
                    &Path::default(),
                    Duration::from_secs(LIST_URL_SECS),
                    &options,
                )
                .await
                .map_err(|e| e.to_string())?;
            let request = http::Request::get(url.as_str())
                .body(HttpRequestBody::empty())
                .map_err(|e| e.to_string())?;
            let listed = self
                .store
                .link()
                .run("list_uploads", async {
                    let response = http
                        .execute(request)
                        .await
                        .map_err(|e| generic_error(&e.to_string()))?;
                    let status = response.status();
                    let now = store_date(response.headers()).unwrap_or_else(chrono::Utc::now);
                    let body = response
                        .into_body()
                        .bytes()
                        .await
                        .map_err(|e| generic_error(&e.to_string()))?;
                    if !status.is_success() {
                        return Err(generic_error(&format!(
                            "ListMultipartUploads answered {status}: {}",
                            String::from_utf8_lossy(&body)
                                .chars()
                                .take(300)
                                .collect::<String>()
                        )));
                    }
                    parse_listing(&body)
                        .map(|listing| (listing, now))
                        .map_err(|e| generic_error(&e))
                })
                .await
                .map_err(|e| e.to_string())?;
            let (listing, now) = listed;
            for upload in &listing.uploads {
                if !upload.key.starts_with(prefix.as_str()) || !is_stale(&upload.initiated, now) {
                    continue;
                }
                let Ok(path) = Path::parse(&upload.key) else {
                    continue;
                };
                match abort_once(self.store.link(), &client, &path, &upload.upload_id).await {
                    Ok(()) => {
                        aborted += 1;
                        STORE_METRICS
                            .uploads_aborted
                            .with_label_values(&["older_than_a_day"])
                            .inc();
                    }
                    Err(e) => log::warn!("S3 store: aborting the stale upload of {path}: {e}"),
                }
            }
            let next = listing
                .next_key_marker
                .filter(|k| !k.is_empty())
                .zip(listing.next_upload_id_marker.filter(|u| !u.is_empty()));
            match (listing.is_truncated, next) {
                (true, Some(next)) if markers.as_ref() != Some(&next) => markers = Some(next),
                _ => return Ok(aborted),
            }
        }
        Ok(aborted)
    }
}

#[async_trait]
impl BackgroundService for UploadCleanup {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.run().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pid: u32) -> JournalEntry {
        JournalEntry {
            s3_bucket: "b".into(),
            key: "dir/large.bin".into(),
            upload_id: "upload-1".into(),
            started: 1_700_000_000,
            pid,
        }
    }

    #[tokio::test]
    async fn a_recorded_upload_is_seen_by_the_next_run_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(UploadJournal::open(dir.path()).unwrap());
        assert!(journal.take_earlier().is_empty());
        let kept = journal.record(entry(std::process::id())).await.unwrap();
        let removed = journal.record(entry(std::process::id())).await.unwrap();
        removed.remove();

        let next_run = UploadJournal::open(dir.path()).unwrap();
        let earlier = next_run.take_earlier();
        assert_eq!(earlier.len(), 1, "{earlier:?}");
        assert_eq!(earlier[0].0, kept.path);
        assert_eq!(earlier[0].1, entry(std::process::id()));
        assert!(next_run.take_earlier().is_empty(), "handed out once");
    }

    #[test]
    fn entries_of_a_running_process_are_left_to_it_and_broken_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let running = std::os::unix::process::parent_id();
        std::fs::write(
            dir.path().join("running.json"),
            serde_json::to_vec(&entry(running)).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("cut.json"), b"{\"s3_bu").unwrap();
        let journal = UploadJournal::open(dir.path()).unwrap();
        assert!(journal.take_earlier().is_empty());
        assert!(dir.path().join("running.json").exists());
        assert!(!dir.path().join("cut.json").exists());
    }

    #[test]
    fn reads_a_list_multipart_uploads_page() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/b.bin</NextKeyMarker><NextUploadIdMarker>id-2</NextUploadIdMarker>
  <MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/a.bin</Key><UploadId>id-1</UploadId>
    <Initiator><ID>x</ID></Initiator><Initiated>2010-11-10T20:48:33.000Z</Initiated></Upload>
  <Upload><Key>p/b.bin</Key><UploadId>id-2</UploadId><Initiated>2026-11-27T05:00:00Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let listing = parse_listing(xml).unwrap();
        assert!(listing.is_truncated);
        assert_eq!(listing.next_key_marker.as_deref(), Some("p/b.bin"));
        assert_eq!(listing.next_upload_id_marker.as_deref(), Some("id-2"));
        assert_eq!(listing.uploads.len(), 2);
        assert_eq!(listing.uploads[0].key, "p/a.bin");
        assert_eq!(listing.uploads[1].upload_id, "id-2");

        let empty = parse_listing(
            b"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(!empty.is_truncated && empty.uploads.is_empty());
    }

    #[test]
    fn only_uploads_older_than_a_day_are_stale() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-27T06:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert!(is_stale("2026-11-26T05:59:59.000Z", now));
        assert!(!is_stale("2026-11-26T06:00:01Z", now));
        assert!(!is_stale("2026-11-27T05:00:00Z", now));
        assert!(
            !is_stale("not a date", now),
            "an unreadable date is left alone"
        );
    }
}
