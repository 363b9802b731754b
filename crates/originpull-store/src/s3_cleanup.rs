//! The start-up clean-up of the S3 store's multipart uploads that nobody will finish: those a
//! killed (`kill -9`, power loss) earlier run of this node left behind, found in its journal
//! ([`crate::s3_uploads`]), plus any upload under the store's prefix older than a day, so no
//! upload's parts stay billed in the store forever.
//!
//! At start the journal entries of processes that are no longer running are aborted by id,
//! which touches only this node's uploads (an entry of a process still running, the old process
//! of a graceful upgrade, is left to it). An upload created in the instant before its entry
//! reached the disk is caught by the day-old sweep.
//!
//! The day-old sweep needs `ListMultipartUploads` (`GET /?uploads`), for which object_store has
//! no call. It is signed by object_store's own SigV4 signer (`Signer::signed_url_opts`, a
//! presigned URL carrying the `uploads`, `prefix` and marker parameters) and sent with
//! object_store's HTTP client (with the store's deadlines), so no signing code of ours and no
//! second S3 client crate (`rusty-s3` has no ListMultipartUploads action; `aws-sigv4` would sign
//! the same request with a second copy of what object_store already has). The XML is read with
//! `quick-xml`, which object_store already uses. Uploads younger than a day are never swept:
//! another live node may own them. The age is judged by the store's `Date` against the
//! upload's `Initiated`, not by this node's clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::client::HttpRequestBody;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use serde::Deserialize;

use super::s3::S3Store;
use super::s3_lease::{generic_error, store_date};
use super::s3_uploads::{abort_once, JournalEntry, UploadJournal};
use crate::metrics::STORE_METRICS;

/// Uploads older than this under the store's prefix are aborted at start, whoever began them.
pub const STALE_UPLOAD_SECS: i64 = 24 * 60 * 60;
/// Life of the presigned listing URL: it is used at once.
const LIST_URL_SECS: u64 = 60;
/// Pages of 1000 uploads; more than this many pages means something is wrong with the markers.
const MAX_LIST_PAGES: usize = 10_000;

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

    /// Aborts what is left (see the module documentation); logs what it did.
    pub async fn run(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
