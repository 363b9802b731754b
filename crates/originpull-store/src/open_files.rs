//! Object files the disk store keeps open between requests, with their parsed metadata (what
//! nginx's `open_file_cache` does for static files).
//!
//! A disk hit on a file kept open costs one positional read, where it otherwise costs a path
//! walk, `open`, `fstat`, a read and parse of the trailer, and `close`: most of a small disk
//! hit's CPU beside the socket's (docs/benchmarks.md, "Open files kept"). Entries are bounded
//! in number (each holds a descriptor) under TinyUFO's admission and eviction, with a
//! [`Doorkeeper`] in front once full (a file opened once is not kept), dropped by every
//! change this process makes to the file (a new version committed, a purge, a new check time,
//! damage found). Changes behind our back (another process: the old one of an upgrade while
//! it drains, an operator by hand) are caught by an `fstat` of the kept descriptor on every
//! hit, far cheaper than the path walk: a file removed or replaced by a rename (no link left),
//! truncated or grown, or given a new check time is opened again by name. What `fstat` cannot
//! see (a kept file moved to another name) lasts the memory tier's revalidation time at most.
//!
//! A kept file's content is checked against its CRC-64 on its first whole read and not on the
//! hits after it, as the memory tier serves what it checked once: the bytes come from the same
//! page cache, and a change in place that `fstat` sees (length, modification time) opens the file
//! again, to be checked again. The check was a fifth of a 1 MiB hit's CPU.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tinyufo::TinyUfo;

use super::{Derived, ObjectMeta};
use crate::doorkeeper::Doorkeeper;
use crate::key::{ObjectIds, ObjectKey};
use crate::order::UseThrottle;
use originpull_support::clock::coarse_now;

/// One object file, open, with what was read from it when it was opened.
pub(crate) struct OpenFile {
    pub(crate) bucket: Box<str>,
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) meta: ObjectMeta,
    /// The head of the object's answers, made once while the file is kept.
    pub(crate) derived: Derived,
    /// The file as it was when opened, to see changes made behind our back.
    seen: FileState,
    opened_at: Instant,
    /// Read whole since it was opened, and found to match its CRC-64.
    verified: AtomicBool,
    /// When its last hit was told to the eviction order.
    pub(crate) use_told: UseThrottle,
}

/// What `fstat` tells of a file that changes whenever its object does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileState {
    len: u64,
    modified: SystemTime,
    /// 0 once the name is gone (removed, or replaced by a rename).
    links: u64,
}

impl FileState {
    pub(crate) fn of(stat: &Metadata) -> io::Result<FileState> {
        Ok(FileState {
            len: stat.len(),
            modified: stat.modified()?,
            links: stat.nlink(),
        })
    }
}

impl OpenFile {
    /// `seen` is the `fstat` the open read its length and check time from.
    pub(crate) fn new(
        bucket: &str,
        file: File,
        path: PathBuf,
        meta: ObjectMeta,
        seen: FileState,
    ) -> OpenFile {
        OpenFile {
            bucket: bucket.into(),
            file,
            path,
            meta,
            derived: Derived::default(),
            seen,
            opened_at: coarse_now(),
            verified: AtomicBool::new(false),
            use_told: UseThrottle::new(),
        }
    }

    /// Whether the content was read whole and matched its CRC-64 since the file was opened.
    pub(crate) fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_verified(&self) {
        self.verified.store(true, Ordering::Relaxed);
    }

    /// Whether the file is as it was when opened, still under its name.
    fn unchanged(&self) -> bool {
        let now = self.file.metadata().and_then(|stat| FileState::of(&stat));
        matches!(now, Ok(now) if now == self.seen && now.links > 0)
    }
}

pub(crate) struct OpenFiles {
    files: TinyUfo<u64, Arc<OpenFile>>,
    doorkeeper: Doorkeeper,
    /// Bumped by every change to a file, so an open that raced with one does not keep what it
    /// opened (it may be the old version).
    changes: AtomicU64,
    /// How long an open file is served without opening its name again.
    trusted_for: Duration,
    ids: ObjectIds,
}

impl std::fmt::Debug for OpenFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFiles").finish_non_exhaustive()
    }
}

impl OpenFiles {
    /// Keeps at most `max_files` files open, each served for `trusted_for` at most.
    pub(crate) fn new(max_files: usize, trusted_for: Duration) -> OpenFiles {
        OpenFiles {
            files: TinyUfo::new(max_files.max(1), max_files.max(16)),
            doorkeeper: Doorkeeper::new(max_files),
            changes: AtomicU64::new(0),
            trusted_for,
            ids: ObjectIds::default(),
        }
    }

    pub(crate) fn id(&self, bucket: &str, key: &ObjectKey) -> u64 {
        self.ids.of(bucket, key)
    }

    /// The kept file of exactly this bucket and key, if it is unchanged and still trusted.
    pub(crate) fn get(&self, id: u64, bucket: &str, key: &ObjectKey) -> Option<Arc<OpenFile>> {
        let open = self.files.get(&id)?;
        if &*open.bucket != bucket || open.meta.key != key.as_str() {
            return None;
        }
        let trusted = coarse_now().saturating_duration_since(open.opened_at) < self.trusted_for;
        if !trusted || !open.unchanged() {
            // Opened again by name; whatever that finds replaces this entry.
            self.files.remove(&id);
            return None;
        }
        Some(open)
    }

    /// The change count to pass to [`OpenFiles::keep`]; read before opening the file.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Keeps `open` unless a file changed since `changes_before` was read, or the doorkeeper
    /// turns it away.
    pub(crate) fn keep(&self, id: u64, open: &Arc<OpenFile>, changes_before: u64) {
        if self.changes() != changes_before || !self.doorkeeper.admits(id) {
            return;
        }
        let evicted = self.files.put(id, open.clone(), 1);
        self.doorkeeper.note_evictions(evicted.len());
        // A change between the check above and the put has dropped nothing yet: drop it here.
        if self.changes() != changes_before {
            self.files.remove(&id);
        }
    }

    /// Drops the file kept for `id`; called after its file changed on disk.
    pub(crate) fn forget(&self, id: u64) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.files.remove(&id);
    }
}
