//! This node's journal of the multipart uploads of the S3 store it has in flight, so that none
//! is left for nobody to finish.
//!
//! The journal is a directory (`.s3-uploads/` in the local tier's dir, else in `data_dir`) with
//! one small JSON file per upload in flight: S3 bucket, key, upload id, start time and the pid.
//! [`JournaledUpload`] writes it (fsynced, file and directory) right after the store hands out
//! the upload id and before the first part, and removes it once the upload is completed or
//! aborted. An entry that cannot be written (a full or read-only disk) aborts the upload before
//! its first part and fails the copy: no upload runs that a crash could leave behind unknown.
//! An abort that fails (the store is down just then) is tried again in the background while the
//! node runs, backing off up to [`ABORT_RETRY_MAX`], and its entry stays until it succeeds. It
//! drives the upload through object_store's `MultipartStore` API, because the
//! `put_multipart_opts` upload never reveals its id; `create_multipart_opts` carries the same
//! Content-Type and metadata. What a killed earlier run left behind is cleaned up at start
//! ([`crate::s3_cleanup`]).

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, MultipartUpload, PutPayload, PutResult, UploadPart};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::s3_lease::generic_error;
use super::s3_link::StoreLink;
use crate::metrics::STORE_METRICS;

/// The journal's directory inside the node's state directory.
pub const JOURNAL_DIR: &str = ".s3-uploads";
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
    pub(crate) fn take_earlier(&self) -> Vec<(PathBuf, JournalEntry)> {
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
pub(crate) async fn abort_once(
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
}
