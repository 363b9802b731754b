//! The disk bucket store: one file per object under `data_dir`, written crash-safely.
//!
//! Layout: `<data_dir>/<bucket>/objects/<h0h1>/<h2h3>/<sha256(key) in hex>` holds the content
//! followed by a trailer (metadata JSON, its length, a magic tag); `<data_dir>/<bucket>/tmp/`
//! holds objects being written. Because file names are hashes, no key can name a file outside its
//! bucket, keys that are prefixes of each other (`a`, `a/b`) coexist, and long keys fit.
//!
//! A new object is written to `tmp/` (hashed and written off the request thread, see
//! [`super::write_behind`]), fsynced, renamed into place and its directory fsynced, so a reader
//! (or a restart after `kill -9` or power loss) sees either nothing or the whole object.
//! Start-up empties only the `tmp/` directories: it never walks the objects.
//!
//! Reads use plain positional reads on the calling thread, as nginx does without `aio`: hot
//! objects come from the page cache, and a thread hop per read would cost more than it saves.
//! A small object file is read whole when it is opened (one read for trailer and body). Files
//! may be kept open between requests ([`super::open_files`]); every change made here to an
//! object's file drops it from there.
//!
//! A variant of an object sits beside it as `<object file>.<variant>` (e.g. `….br`), in the
//! same format, its metadata naming the version it was made from; one of an older version is
//! ignored and then overwritten. Variants are renamed into place without `fsync`: one torn by
//! a crash fails its trailer check, reads as absent and is made again.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use super::capacity::Capacity;
use super::checksum::SequentialCheck;
use super::open_files::{FileState, OpenFile, OpenFiles};
use super::write_behind::{remove_unfinished, Digests, WriteBehind};
use super::{
    BucketStore, Derived, ListedObject, NewObject, ObjectMeta, ObjectWriter, StoreError,
    StoredObject,
};
use crate::key::{FileHash, ObjectKey};

/// Ends every object file; a file without it is not an object (it was never committed).
const MAGIC: &[u8; 8] = b"OPOBJv1\n";
/// Metadata length (u32 LE), four reserved bytes, then [`MAGIC`].
const TRAILER_FIXED: usize = 16;
/// One read usually fetches the whole trailer.
const TRAILER_READ: usize = 4096;
/// Object files up to this size are read whole when opened: one read gives the trailer and the
/// body, where a small hit read the trailer and then the body (`docs/benchmarks.md`, disk hits).
const READ_WHOLE_UP_TO: u64 = 32 * 1024;

/// The file holding `key` of `bucket` in a store rooted at `root` (the layout in the module
/// documentation; `bucket` is a configured name, one DNS label); also used by tests to find,
/// and damage, an object's file.
pub fn object_path_under(root: &Path, bucket: &str, key: &ObjectKey) -> PathBuf {
    file_path_under(root, bucket, &FileHash::of(key))
}

/// The file named by `hash` in `bucket`'s objects.
fn file_path_under(root: &Path, bucket: &str, hash: &FileHash) -> PathBuf {
    // Built in one allocation: every miss builds it (`hex::encode` and five joins cost about
    // half a microsecond, a sixth of a miss's own work).
    let hex = hash.to_hex();
    let hex = String::from_utf8_lossy(&hex);
    let mut path = PathBuf::with_capacity(root.as_os_str().len() + bucket.len() + 84);
    path.push(root);
    path.push(bucket);
    path.push("objects");
    path.push(&hex[0..2]);
    path.push(&hex[2..4]);
    path.push(&*hex);
    path
}

#[derive(Debug, Clone)]
pub struct DiskStore {
    root: PathBuf,
    /// Object files kept open between requests; `None`: each open opens the file.
    open_files: Option<Arc<OpenFiles>>,
    /// What the files weigh and the order of eviction; `None` in stores that are not evicted
    /// (the local tier's).
    capacity: Option<Arc<Capacity>>,
}

impl DiskStore {
    /// Opens (creating when needed) the store at `root` and discards objects left half-written
    /// by processes that are gone. Temporary files are named after their writer's process id,
    /// so during a zero-downtime upgrade the new process leaves the old one's copies alone.
    pub fn open(root: &Path) -> io::Result<DiskStore> {
        std::fs::create_dir_all(root)?;
        for bucket in std::fs::read_dir(root)? {
            let tmp = bucket?.path().join("tmp");
            if tmp.is_dir() {
                for leftover in std::fs::read_dir(&tmp)? {
                    let leftover = leftover?.path();
                    if writer_is_alive(&leftover) {
                        continue;
                    }
                    if let Err(e) = std::fs::remove_file(&leftover) {
                        log::warn!("cannot remove leftover {}: {e}", leftover.display());
                    }
                }
            }
        }
        Ok(DiskStore {
            root: root.to_path_buf(),
            open_files: None,
            capacity: None,
        })
    }

    /// This store, keeping up to `max_files` object files open between requests (0: none),
    /// each served for `trusted_for` at most before its name is opened again (changes made
    /// through this store are seen at once).
    pub fn keeping_open_files(self, max_files: usize, trusted_for: Duration) -> DiskStore {
        let keep = max_files > 0 && !trusted_for.is_zero();
        DiskStore {
            open_files: keep.then(|| Arc::new(OpenFiles::new(max_files, trusted_for))),
            ..self
        }
    }

    /// This store, telling `capacity` of every file it adds, serves and removes.
    pub fn with_capacity(self, capacity: Arc<Capacity>) -> DiskStore {
        DiskStore {
            capacity: Some(capacity),
            ..self
        }
    }

    pub fn capacity(&self) -> Option<&Arc<Capacity>> {
        self.capacity.as_ref()
    }

    /// The key of the object in the file `hash` names, read from its trailer; `None` when
    /// there is no such file or it is not a whole object. Blocking.
    pub fn key_of(&self, bucket: &str, hash: &FileHash) -> Option<ObjectKey> {
        let file = open_existing(&file_path_under(&self.root, bucket, hash)).ok()??;
        let meta = read_trailer(&file, None).ok()?;
        ObjectKey::from_stored(&meta.key).ok()
    }

    /// Removes the file `hash` names and its variants, whatever they hold (an eviction's
    /// victim that is not a whole object). Blocking.
    pub fn remove_files(&self, bucket: &str, hash: &FileHash) {
        let path = file_path_under(&self.root, bucket, hash);
        remove_variants(&path);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
        if let Some(capacity) = &self.capacity {
            capacity.removed(bucket, hash);
        }
    }

    /// Walks every bucket's files and brings the eviction order in line with them (after a
    /// start that was not clean; see [`Capacity`]). Blocking; returns (admitted, dropped).
    pub fn reconcile_capacity(&self) -> io::Result<(usize, usize)> {
        let Some(capacity) = &self.capacity else {
            return Ok((0, 0));
        };
        let found = walk_object_files(&self.root)?;
        capacity.reconcile(&found, |bucket, hash| {
            file_path_under(&self.root, bucket, hash).exists()
        })
    }

    /// Drops what is kept of `key`'s file after this process changed it.
    fn changed(&self, bucket: &str, key: &ObjectKey) {
        if let Some(files) = &self.open_files {
            files.forget(files.id(bucket, key));
        }
    }

    /// Opens `key`'s file and reads its metadata (and a small object's body, read with it);
    /// `None` when there is no such file.
    fn open_file(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<(OpenFile, Option<Bytes>)>, StoreError> {
        let hash = FileHash::of(key);
        let path = file_path_under(&self.root, bucket, &hash);
        let Some(file) = open_existing(&path)? else {
            return Ok(None);
        };
        // One fstat for the length and the check time.
        let stat = file.metadata()?;
        let file_len = stat.len();
        if let Some(capacity) = &self.capacity {
            capacity.served(bucket, &hash, file_len);
        }
        let (mut meta, body) = if file_len <= READ_WHOLE_UP_TO {
            let mut whole = read_new_buffer_at(&file, file_len as usize, 0)?;
            let meta = meta_from_tail(&file, file_len, &whole, Some(key))?;
            whole.truncate(meta.size as usize);
            (meta, Some(whole))
        } else {
            (read_trailer_of(&file, file_len, Some(key))?, None)
        };
        meta.checked_at = secs_since_epoch(stat.modified()?);
        let seen = FileState::of(&stat)?;
        Ok(Some((OpenFile::new(bucket, file, path, meta, seen), body)))
    }

    fn bucket_dir(&self, bucket: &str) -> PathBuf {
        // Bucket names come from the validated configuration: one DNS label.
        self.root.join(bucket)
    }

    /// The file holding `key`.
    pub fn object_path(&self, bucket: &str, key: &ObjectKey) -> PathBuf {
        object_path_under(&self.root, bucket, key)
    }

    /// The file holding `variant` of `key`, beside the object's file.
    fn variant_path(&self, bucket: &str, key: &ObjectKey, variant: &str) -> io::Result<PathBuf> {
        if variant.is_empty()
            || !variant
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("variant name {variant:?} is not lower-case letters and digits"),
            ));
        }
        let mut path = self.object_path(bucket, key).into_os_string();
        path.push(".");
        path.push(variant);
        Ok(PathBuf::from(path))
    }

    /// A new temporary file's path in the bucket's `tmp/`, named after this process (so
    /// [`DiskStore::open`] removes it if this process dies before renaming it into place).
    pub(super) fn tmp_path(&self, bucket: &str) -> PathBuf {
        self.bucket_dir(bucket).join("tmp").join(format!(
            "{}-{:032x}",
            std::process::id(),
            rand::random::<u128>()
        ))
    }

    /// The metadata of the object file at `path`, which must hold `key`: `Ok(None)` when there
    /// is no such file, `Err(Corrupt)` when it is not a whole object (no trailer) or holds
    /// another key. Reads the trailer only, not the content.
    pub(super) fn committed_meta(
        &self,
        path: &Path,
        key: &ObjectKey,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        let Some(file) = open_existing(path)? else {
            return Ok(None);
        };
        read_trailer(&file, Some(key)).map(Some)
    }
}

#[async_trait]
impl BucketStore for DiskStore {
    fn served_above(&self, bucket: &str, key: &ObjectKey) {
        if let Some(capacity) = &self.capacity {
            capacity.served_if_known(bucket, || Some(FileHash::of(key)));
        }
    }

    fn has_room(&self, _bucket: &str, bytes: u64) -> bool {
        self.capacity
            .as_ref()
            .is_none_or(|capacity| capacity.has_room(bytes))
    }

    async fn open(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        let Some(files) = &self.open_files else {
            let opened = self.open_file(bucket, key)?;
            return Ok(opened.map(|(open, body)| -> Box<dyn StoredObject> {
                DiskObject::boxed(Arc::new(open), body, None, self.capacity.clone())
            }));
        };
        let id = files.id(bucket, key);
        if let Some(open) = files.get(id, bucket, key) {
            if let (Some(capacity), true) = (&self.capacity, open.use_told.due()) {
                capacity.served_if_known(bucket, || {
                    FileHash::from_file_name(open.path.file_name()?.as_encoded_bytes())
                });
            }
            return Ok(Some(DiskObject::boxed(
                open,
                None,
                Some((files.clone(), id)),
                self.capacity.clone(),
            )));
        }
        let changes_before = files.changes();
        let Some((open, body)) = self.open_file(bucket, key)? else {
            return Ok(None);
        };
        let open = Arc::new(open);
        files.keep(id, &open, changes_before);
        Ok(Some(DiskObject::boxed(
            open,
            body,
            Some((files.clone(), id)),
            self.capacity.clone(),
        )))
    }

    async fn delete(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        let hash = FileHash::of(key);
        let path = file_path_under(&self.root, bucket, &hash);
        let Some(file) = open_existing(&path)? else {
            return Ok(None);
        };
        // A damaged file is removed too, but was never an object: nothing to report.
        let meta = read_trailer(&file, Some(key)).ok();
        remove_variants(&path);
        let removed = std::fs::remove_file(&path);
        self.changed(bucket, key);
        if let Some(capacity) = &self.capacity {
            capacity.removed(bucket, &hash);
        }
        match removed {
            Ok(()) => Ok(meta),
            // Removed meanwhile by another purge: that one reports it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        let objects = self.bucket_dir(bucket).join("objects");
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || list_objects(&objects, &prefix))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(e)))?
    }

    async fn mark_checked(&self, bucket: &str, key: &ObjectKey) -> Result<bool, StoreError> {
        // The check time is the file's modification time: setting it rewrites nothing, and a
        // reader holding the old file sees the same bytes.
        match File::options()
            .write(true)
            .open(self.object_path(bucket, key))
        {
            Ok(file) => {
                let set = file.set_modified(SystemTime::now());
                self.changed(bucket, key);
                set?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn create(
        &self,
        bucket: &str,
        key: &ObjectKey,
    ) -> Result<Box<dyn ObjectWriter>, StoreError> {
        let tmp_path = self.tmp_path(bucket);
        let hash = FileHash::of(key);
        Ok(Box::new(DiskWriter {
            body: WriteBehind::new(tmp_path.clone()),
            tmp_path: Some(tmp_path),
            final_path: file_path_under(&self.root, bucket, &hash),
            tracked: self
                .capacity
                .clone()
                .map(|capacity| (capacity, bucket.to_string(), hash)),
            key: key.as_str().to_string(),
            written: 0,
            kept_in: self
                .open_files
                .as_ref()
                .map(|files| (files.clone(), files.id(bucket, key))),
        }))
    }

    async fn open_variant(
        &self,
        bucket: &str,
        key: &ObjectKey,
        of: &ObjectMeta,
        variant: &str,
    ) -> Result<Option<Box<dyn StoredObject>>, StoreError> {
        let path = self.variant_path(bucket, key, variant)?;
        let Some(file) = open_existing(&path)? else {
            return Ok(None);
        };
        let stat = file.metadata()?;
        match read_trailer_of(&file, stat.len(), Some(key)) {
            Ok(meta) if meta.is_variant_of(of) => {
                let seen = FileState::of(&stat)?;
                let open = Arc::new(OpenFile::new(bucket, file, path, meta, seen));
                let mut variant = DiskObject::boxed(open, None, None, None);
                // A variant's metadata carries its object's CRC, not its own.
                variant.check = None;
                Ok(Some(variant))
            }
            // Made from an older version: as good as absent.
            Ok(_) => Ok(None),
            Err(StoreError::Corrupt(why)) => {
                log::warn!("bucket {bucket}: variant {variant}: {why}; making it again");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn put_variant(
        &self,
        bucket: &str,
        key: &ObjectKey,
        of: &ObjectMeta,
        variant: &str,
        body: Bytes,
    ) -> Result<(), StoreError> {
        let final_path = self.variant_path(bucket, key, variant)?;
        let meta = ObjectMeta {
            size: body.len() as u64,
            ..of.clone()
        };
        let trailer = encode_trailer(&meta)?;
        let tmp_path = self.tmp_path(bucket);
        let hash = FileHash::of(key);
        let tracked = self.capacity.clone().map(|capacity| {
            let object_path = file_path_under(&self.root, bucket, &hash);
            (capacity, bucket.to_string(), hash, object_path)
        });
        tokio::task::spawn_blocking(move || {
            write_variant(&tmp_path, &final_path, &body, &trailer)?;
            if let Some((capacity, bucket, hash, object_path)) = tracked {
                capacity.variant_written(&bucket, &hash, || weigh_files(&object_path));
            }
            io::Result::Ok(())
        })
        .await
        .map_err(|e| StoreError::Io(io::Error::other(e)))??;
        Ok(())
    }
}

/// Writes a variant's file and renames it into place; no `fsync`, see the module docs.
fn write_variant(
    tmp_path: &Path,
    final_path: &Path,
    body: &[u8],
    trailer: &[u8],
) -> io::Result<()> {
    use std::io::Write;
    let written = (|| {
        if let Some(dir) = tmp_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = File::create(tmp_path)?;
        file.write_all(body)?;
        file.write_all(trailer)?;
        drop(file);
        std::fs::rename(tmp_path, final_path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(tmp_path);
    }
    written
}

/// The trailer that ends an object file: metadata JSON, its length, [`MAGIC`].
fn encode_trailer(meta: &ObjectMeta) -> Result<Vec<u8>, StoreError> {
    let meta_json = serde_json::to_vec(meta)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode metadata: {e}")))?;
    let meta_len = u32::try_from(meta_json.len())
        .map_err(|_| StoreError::Corrupt("metadata too large".into()))?;
    let mut trailer = meta_json;
    let mut fixed = [0u8; TRAILER_FIXED];
    fixed[0..4].copy_from_slice(&meta_len.to_le_bytes());
    fixed[8..].copy_from_slice(MAGIC);
    trailer.extend_from_slice(&fixed);
    Ok(trailer)
}

/// Whether the temporary file at `path` belongs to another process that is still running.
fn writer_is_alive(path: &Path) -> bool {
    let pid = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('-'))
        .and_then(|(pid, _)| pid.parse::<u32>().ok());
    match pid {
        Some(pid) if pid != std::process::id() => Path::new("/proc").join(pid.to_string()).exists(),
        _ => false,
    }
}

/// The file's modification time in seconds since the Unix epoch: when the object was last
/// committed or confirmed by its origin.
fn secs_since_epoch(modified: SystemTime) -> u64 {
    modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every object file of every bucket under `root`, with the bytes of its file and variants
/// (`<hash>` and `<hash>.<variant>`): what the eviction order should hold.
fn walk_object_files(root: &Path) -> io::Result<HashMap<(String, FileHash), u64>> {
    let mut found: HashMap<(String, FileHash), u64> = HashMap::new();
    for bucket in dir_entries(root)? {
        // Bucket names are DNS labels; anything else (`.eviction`) is not a bucket.
        let Some(name) = bucket.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if originpull_config::validate_bucket_name(&name).is_err() {
            continue;
        }
        for_each_object_file(&bucket.path().join("objects"), |file| {
            let file_name = file.file_name();
            let bytes = file_name.as_encoded_bytes();
            let Some(hash) = FileHash::from_file_name(&bytes[..bytes.len().min(64)]) else {
                return;
            };
            if bytes.len() > 64 && bytes[64] != b'.' {
                return;
            }
            if let Some(stat) = file.metadata().ok().filter(|stat| stat.is_file()) {
                *found.entry((name.clone(), hash)).or_default() += stat.len().max(1);
            }
        })?;
    }
    Ok(found)
}

/// Calls `f` with every file in a bucket's `objects/<h0h1>/<h2h3>/` (objects and their
/// variants), one leaf directory at a time.
fn for_each_object_file(objects: &Path, mut f: impl FnMut(std::fs::DirEntry)) -> io::Result<()> {
    for level1 in dir_entries(objects)? {
        for level2 in dir_entries(&level1.path())? {
            dir_entries(&level2.path())?.into_iter().for_each(&mut f);
        }
    }
    Ok(())
}

/// What `dir` holds; nothing when it is missing, or is a stray file where a directory
/// should be.
fn dir_entries(dir: &Path) -> io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.filter_map(Result::ok).collect()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// The variants kept beside the object file at `path` (`<file>.<variant>`).
fn variant_files(path: &Path) -> Vec<std::fs::DirEntry> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let mut prefix = name.to_os_string();
    prefix.push(".");
    let prefix = prefix.as_encoded_bytes().to_vec();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().as_encoded_bytes().starts_with(&prefix))
        .collect()
}

/// Removes the variants kept beside the object file at `path`; they could never be served
/// again, but would hold disk space.
fn remove_variants(path: &Path) {
    for variant in variant_files(path) {
        let _ = std::fs::remove_file(variant.path());
    }
}

/// What the object file at `path` and its variants weigh on disk now, in file bytes (each at
/// least 1, as the eviction order counts them).
fn weigh_files(path: &Path) -> u64 {
    let own = std::fs::metadata(path).map_or(0, |stat| stat.len().max(1));
    own + variant_files(path)
        .iter()
        .filter_map(|variant| variant.metadata().ok())
        .map(|stat| stat.len().max(1))
        .sum::<u64>()
}

/// Walks `<bucket>/objects/`, reading each file's trailer (a few KiB) for its key and size.
/// Files that are not whole objects are skipped, as `open` would treat them as missing.
fn list_objects(objects: &Path, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
    let mut found = Vec::new();
    for_each_object_file(objects, |entry| {
        let path = entry.path();
        // Object files are named by their hash alone; `<hash>.<variant>` are variants.
        if path.extension().is_some() {
            return;
        }
        let Ok(file) = File::open(&path) else {
            return; // purged meanwhile
        };
        let Ok(meta) = read_trailer(&file, None) else {
            return;
        };
        if meta.key.starts_with(prefix) {
            // Stored keys were valid keys; a file that somehow holds an invalid one is skipped.
            if let Ok(key) = ObjectKey::from_stored(&meta.key) {
                found.push(ListedObject {
                    key,
                    size: meta.size,
                });
            }
        }
    })?;
    Ok(found)
}

/// Reads an object file's metadata; with `key`, also checks that the file holds that key.
fn read_trailer(file: &File, key: Option<&ObjectKey>) -> Result<ObjectMeta, StoreError> {
    read_trailer_of(file, file.metadata()?.len(), key)
}

/// [`read_trailer`] of a file whose length is known.
fn read_trailer_of(
    file: &File,
    file_len: u64,
    key: Option<&ObjectKey>,
) -> Result<ObjectMeta, StoreError> {
    let tail_len = file_len.min(TRAILER_READ as u64) as usize;
    let mut tail = vec![0u8; tail_len];
    file.read_exact_at(&mut tail, file_len - tail_len as u64)?;
    meta_from_tail(file, file_len, &tail, key)
}

/// The metadata of an object file of `file_len` bytes whose last bytes are `tail` (the file's
/// own, read already); the rest of the trailer is read if `tail` does not hold all of it.
fn meta_from_tail(
    file: &File,
    file_len: u64,
    tail: &[u8],
    key: Option<&ObjectKey>,
) -> Result<ObjectMeta, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("object {key:?}: {why}"));
    let tail_len = tail.len();
    if file_len < TRAILER_FIXED as u64 || tail_len < TRAILER_FIXED {
        return Err(corrupt("shorter than its trailer"));
    }
    let fixed = &tail[tail_len - TRAILER_FIXED..];
    if &fixed[8..] != MAGIC {
        return Err(corrupt("no trailer"));
    }
    let meta_len = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]) as u64;
    let trailer_len = meta_len + TRAILER_FIXED as u64;
    if trailer_len > file_len {
        return Err(corrupt("trailer longer than the file"));
    }
    let meta_bytes = if trailer_len as usize <= tail_len {
        tail[tail_len - trailer_len as usize..tail_len - TRAILER_FIXED].to_vec()
    } else {
        let mut buf = vec![0u8; meta_len as usize];
        file.read_exact_at(&mut buf, file_len - trailer_len)?;
        buf
    };
    let meta: ObjectMeta =
        serde_json::from_slice(&meta_bytes).map_err(|e| corrupt(&format!("metadata: {e}")))?;
    if key.is_some_and(|key| meta.key != key.as_str()) {
        return Err(corrupt("file holds another key"));
    }
    if meta.size != file_len - trailer_len {
        return Err(corrupt("size does not match its metadata"));
    }
    Ok(meta)
}

/// Reads exactly `len` bytes of `file` at `offset` into a new buffer, which is not zeroed
/// first (zeroing was 5% of a 1 MiB hit's CPU).
fn read_new_buffer_at(file: &File, len: usize, offset: u64) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The spare capacity may have been larger than asked for.
    buf.truncate(len);
    Ok(Bytes::from(buf))
}

/// The file at `path` opened for reading, `None` when there is none.
fn open_existing(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

struct DiskObject {
    open: Arc<OpenFile>,
    /// Where `open` is kept between requests, and its id there.
    kept_in: Option<(Arc<OpenFiles>, u64)>,
    /// The stored CRC, checked while the object is read whole (`None` for variants, for
    /// objects stored before CRCs were kept, and for a kept file already checked whole).
    check: Option<SequentialCheck>,
    /// A small object's body, read with its trailer when the file was opened.
    body: Option<Bytes>,
    /// Told when the file is found damaged and removed (`None` for variants).
    capacity: Option<Arc<Capacity>>,
}

impl DiskObject {
    fn boxed(
        open: Arc<OpenFile>,
        body: Option<Bytes>,
        kept_in: Option<(Arc<OpenFiles>, u64)>,
        capacity: Option<Arc<Capacity>>,
    ) -> Box<DiskObject> {
        let check = if kept_in.is_some() && open.is_verified() {
            None
        } else {
            SequentialCheck::new(open.meta.crc64, open.meta.size)
        };
        Box::new(DiskObject {
            check,
            open,
            kept_in,
            body,
            capacity,
        })
    }

    /// Removes this object's file, found damaged, so the next request is a miss and a new copy
    /// replaces it; unless a new version has been renamed into its place meanwhile.
    fn discard(&self) {
        use std::os::unix::fs::MetadataExt;
        if let Some((files, id)) = &self.kept_in {
            files.forget(*id);
        }
        let path = &self.open.path;
        let (Ok(open), Ok(named)) = (self.open.file.metadata(), std::fs::metadata(path)) else {
            return;
        };
        if (open.dev(), open.ino()) != (named.dev(), named.ino()) {
            return;
        }
        remove_variants(path);
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("cannot remove damaged {}: {e}", path.display());
        }
        let hash = path
            .file_name()
            .and_then(|name| FileHash::from_file_name(name.as_encoded_bytes()));
        if let (Some(capacity), Some(hash)) = (&self.capacity, hash) {
            capacity.removed(&self.open.bucket, &hash);
        }
    }
}

#[async_trait]
impl StoredObject for DiskObject {
    fn meta(&self) -> &ObjectMeta {
        &self.open.meta
    }

    fn derived(&self) -> Option<&Derived> {
        // Only a file kept open outlives the request: then the head is made once.
        self.kept_in.as_ref().map(|_| &self.open.derived)
    }

    async fn read_at(&mut self, offset: u64, max: usize) -> Result<Bytes, StoreError> {
        let remaining = self.open.meta.size.saturating_sub(offset);
        let len = remaining.min(max as u64) as usize;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let buf = match &self.body {
            Some(body) => body.slice(offset as usize..offset as usize + len),
            None => read_new_buffer_at(&self.open.file, len, offset)?,
        };
        if let Some(check) = &mut self.check {
            if let Err(why) = check.check(offset, &buf) {
                self.discard();
                return Err(StoreError::Corrupt(format!(
                    "object {:?}: {why}; removed",
                    self.open.meta.key
                )));
            }
            if check.passed() {
                self.open.mark_verified();
            }
        }
        Ok(buf)
    }
}

struct DiskWriter {
    body: WriteBehind,
    /// `None` once committed; otherwise removed on drop.
    tmp_path: Option<PathBuf>,
    final_path: PathBuf,
    /// Told of the new file once it is in place.
    tracked: Option<(Arc<Capacity>, String, FileHash)>,
    key: String,
    written: u64,
    /// Where the key's file may be kept open, and its id there: dropped once a new version
    /// replaces it.
    kept_in: Option<(Arc<OpenFiles>, u64)>,
}

#[async_trait]
impl ObjectWriter for DiskWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.written += chunk.len() as u64;
        self.body.push(chunk).await?;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>, object: NewObject) -> Result<ObjectMeta, StoreError> {
        let last_modified = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let meta = ObjectMeta {
            key: std::mem::take(&mut self.key),
            size: self.written,
            content_type: object
                .content_type
                .unwrap_or_else(|| "application/octet-stream".to_string()),
            etag: String::new(),
            crc64: None,
            last_modified,
            headers: object.headers,
            origin_etag: object.origin_etag,
            origin_last_modified: object.origin_last_modified,
            checked_at: last_modified,
        };
        let seal = move |digests: Digests| {
            let meta = ObjectMeta {
                etag: hex::encode(digests.md5),
                crc64: Some(digests.crc64),
                ..meta
            };
            let trailer = encode_trailer(&meta).map_err(io::Error::other)?;
            Ok((trailer, meta))
        };
        let tmp_path = self.tmp_path.clone().unwrap_or_default();
        let final_path = self.final_path.clone();
        let tracked = self.tracked.take();
        let publish_tracked = move || {
            // The old version's variants could never be served again: they go first.
            let replacing = final_path.symlink_metadata().is_ok();
            if replacing {
                remove_variants(&final_path);
            }
            let len = std::fs::metadata(&tmp_path)?.len();
            publish(&tmp_path, &final_path)?;
            if let Some((capacity, bucket, hash)) = tracked {
                // A variant of the old version written meanwhile is on disk too.
                capacity.committed(&bucket, &hash, || match replacing {
                    true => weigh_files(&final_path),
                    false => len,
                });
            }
            Ok(())
        };
        let completed = self.body.complete(seal, Box::new(publish_tracked)).await;
        // Even a failed publish may have renamed the new version into place.
        if let Some((files, id)) = &self.kept_in {
            files.forget(*id);
        }
        let meta = completed?;
        // Published: nothing left for drop to clean up.
        self.tmp_path = None;
        Ok(meta)
    }
}

/// Renames the finished temporary file into place and makes the rename durable.
fn publish(tmp_path: &Path, final_path: &Path) -> io::Result<()> {
    let dir = final_path
        .parent()
        .ok_or_else(|| io::Error::other("object path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    std::fs::rename(tmp_path, final_path)?;
    File::open(dir)?.sync_all()
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp_path.take() {
            // The open handle may still be flushing; unlinking the name is enough.
            remove_unfinished(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;

    fn key(k: &str) -> ObjectKey {
        ObjectKey::from_request_path(&format!("/{k}")).unwrap()
    }

    #[tokio::test]
    async fn committed_objects_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        for k in ["a", "a/b", "a/b/c"] {
            let mut w = store.create("b-1", &key(k)).await.unwrap();
            w.write(Bytes::copy_from_slice(k.as_bytes())).await.unwrap();
            w.commit(NewObject::default()).await.unwrap();
        }
        for k in ["a", "a/b", "a/b/c"] {
            let mut obj = store.open("b-1", &key(k)).await.unwrap().unwrap();
            assert_eq!(obj.meta().size, k.len() as u64);
            assert_eq!(&obj.read_at(0, 100).await.unwrap()[..], k.as_bytes());
            assert_eq!(obj.meta().etag, hex::encode(md5::Md5::digest(k.as_bytes())));
        }
    }

    #[tokio::test]
    async fn uncommitted_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        // A small body (kept in memory) and one large enough to be written as it arrives.
        for len in [7, 3 * 1024 * 1024] {
            let mut w = store.create("b-1", &key("x")).await.unwrap();
            w.write(Bytes::from(vec![b'p'; len])).await.unwrap();
            drop(w);
            assert!(store.open("b-1", &key("x")).await.unwrap().is_none());
            // A large body's file thread notices the drop on its own.
            let left_in_tmp = || match std::fs::read_dir(dir.path().join("b-1/tmp")) {
                Ok(entries) => entries.count(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                Err(e) => panic!("{e}"),
            };
            let mut left = left_in_tmp();
            for _ in 0..500 {
                if left == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                left = left_in_tmp();
            }
            assert_eq!(left, 0, "len {len}");
        }
    }

    #[tokio::test]
    async fn leftover_temporaries_are_removed_at_open_unless_their_writer_runs() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("b-1/tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        // Process 1 (init) is always alive; u32::MAX never is.
        std::fs::write(tmp.join("stale"), b"half").unwrap();
        std::fs::write(tmp.join(format!("{}-ab", u32::MAX)), b"half").unwrap();
        std::fs::write(tmp.join("1-ab"), b"half").unwrap();
        DiskStore::open(dir.path()).unwrap();
        assert!(!tmp.join("stale").exists());
        assert!(!tmp.join(format!("{}-ab", u32::MAX)).exists());
        assert!(tmp.join("1-ab").exists(), "a running writer's file is kept");
    }

    #[tokio::test]
    async fn a_variant_is_kept_beside_its_version_and_ignored_for_another() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let v1 = put(&store, "a", b"one").await;
        assert!(store
            .open_variant("b-1", &key("a"), &v1, "br")
            .await
            .unwrap()
            .is_none());
        store
            .put_variant("b-1", &key("a"), &v1, "br", Bytes::from_static(b"1"))
            .await
            .unwrap();
        let mut variant = store
            .open_variant("b-1", &key("a"), &v1, "br")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(variant.meta().size, 1);
        assert_eq!(variant.meta().etag, v1.etag);
        assert_eq!(&variant.read_at(0, 10).await.unwrap()[..], b"1");
        assert!(store
            .open_variant("b-1", &key("a"), &v1, "gzip")
            .await
            .unwrap()
            .is_none());

        let v2 = put(&store, "a", b"two").await;
        assert!(store
            .open_variant("b-1", &key("a"), &v2, "br")
            .await
            .unwrap()
            .is_none());
        assert!(store
            .open_variant("b-1", &key("a"), &v1, "../x")
            .await
            .is_err());
    }

    /// A store in `dir` keeping up to 100 files open.
    fn keeping_files(dir: &tempfile::TempDir) -> DiskStore {
        DiskStore::open(dir.path())
            .unwrap()
            .keeping_open_files(100, Duration::from_secs(60))
    }

    async fn put(store: &DiskStore, k: &str, body: &[u8]) -> ObjectMeta {
        let mut w = store.create("b-1", &key(k)).await.unwrap();
        w.write(Bytes::copy_from_slice(body)).await.unwrap();
        w.commit(NewObject::default()).await.unwrap()
    }

    /// What the files of `bucket` under `root` weigh, walked.
    fn bytes_on_disk(root: &Path, bucket: &str) -> u64 {
        walk_object_files(root)
            .unwrap()
            .iter()
            .filter(|((b, _), _)| b == bucket)
            .map(|(_, bytes)| bytes)
            .sum()
    }

    #[tokio::test]
    async fn the_eviction_order_weighs_exactly_the_files_through_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let (capacity, _) = Capacity::open(dir.path()).unwrap();
        capacity.set_policy(originpull_config::CapacityLimits::default(), ["b-1"]);
        let store = keeping_files(&dir).with_capacity(capacity.clone());
        let check = |why: &str| {
            assert_eq!(capacity.bytes(), bytes_on_disk(dir.path(), "b-1"), "{why}");
            assert_eq!(capacity.bucket_bytes("b-1"), capacity.bytes(), "{why}");
        };
        let first = put(&store, "a", &[1u8; 5000]).await;
        put(&store, "b", b"small").await;
        check("two commits");
        let variant = |name: &'static str, body: &'static [u8]| {
            let (store, first) = (store.clone(), first.clone());
            async move {
                let body = Bytes::from_static(body);
                store
                    .put_variant("b-1", &key("a"), &first, name, body)
                    .await
            }
        };
        variant("br", &[2u8; 700]).await.unwrap();
        variant("gzip", &[3u8; 900]).await.unwrap();
        check("two variants");
        variant("br", &[2u8; 300]).await.unwrap();
        check("a variant made again");
        // A new version: the old version's variants go with it.
        put(&store, "a", &[4u8; 100]).await;
        check("a new version");
        assert_eq!(capacity.entries(), 2);
        assert_eq!(
            store.key_of("b-1", &FileHash::of(&key("a"))),
            Some(key("a"))
        );
        store.delete("b-1", &key("b")).await.unwrap();
        check("a purge");
        assert_eq!(capacity.entries(), 1);
        // Damage found while reading removes the file, and its entry.
        let path = store.object_path("b-1", &key("a"));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let mut object = store.open("b-1", &key("a")).await.unwrap().unwrap();
        assert!(object.read_at(0, 1000).await.is_err());
        check("damage");
        assert_eq!(capacity.entries(), 0);
    }

    #[tokio::test]
    async fn a_walk_finds_what_the_order_missed_and_forgets_what_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (capacity, _) = Capacity::open(dir.path()).unwrap();
        let store = DiskStore::open(dir.path())
            .unwrap()
            .with_capacity(capacity.clone());
        let meta = put(&store, "tracked", b"one").await;
        store
            .put_variant(
                "b-1",
                &key("tracked"),
                &meta,
                "br",
                Bytes::from_static(b"1"),
            )
            .await
            .unwrap();
        put(&store, "removed behind our back", b"two").await;
        // Written by a store that does not tell the order (a crash before its save).
        let untracked = DiskStore::open(dir.path()).unwrap();
        put(&untracked, "unknown", b"three").await;
        std::fs::remove_file(store.object_path("b-1", &key("removed behind our back"))).unwrap();
        std::fs::write(dir.path().join("b-1").join("objects").join("stray"), b"x").unwrap();
        let (admitted, dropped) = store.reconcile_capacity().unwrap();
        assert_eq!((admitted, dropped), (1, 1));
        assert_eq!(capacity.entries(), 2);
        assert_eq!(capacity.bytes(), bytes_on_disk(dir.path(), "b-1"));
    }

    /// A store keeping files open, holding a 64 KiB object "big" (returned with its body).
    async fn keeping_a_big_object() -> (tempfile::TempDir, DiskStore, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let store = keeping_files(&dir);
        let body = vec![b'x'; 64 * 1024];
        put(&store, "big", &body).await;
        (dir, store, body)
    }

    /// Writes `byte` at offset 10 of `path` and sets its modification time `later` than it was.
    fn damage_in_place(path: &Path, byte: &[u8], later: Duration) {
        let file = File::options().write(true).open(path).unwrap();
        let modified = file.metadata().unwrap().modified().unwrap();
        file.write_all_at(byte, 10).unwrap();
        file.set_modified(modified + later).unwrap();
    }

    async fn body_of(store: &DiskStore, k: &str) -> Option<Vec<u8>> {
        let mut object = store.open("b-1", &key(k)).await.unwrap()?;
        Some(object.read_whole().await.unwrap().to_vec())
    }

    #[tokio::test]
    async fn a_kept_open_file_gives_way_to_every_change_made_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = keeping_files(&dir);
        put(&store, "a", b"one").await;
        assert_eq!(body_of(&store, "a").await.as_deref(), Some(&b"one"[..]));
        // Changes made behind the store's back are seen on the next hit: removed,
        let path = store.object_path("b-1", &key("a"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(body_of(&store, "a").await, None);
        // replaced by a rename (another process's commit),
        put(&store, "a", b"one").await;
        assert_eq!(body_of(&store, "a").await.as_deref(), Some(&b"one"[..]));
        put(&DiskStore::open(dir.path()).unwrap(), "a", b"uno").await;
        assert_eq!(body_of(&store, "a").await.as_deref(), Some(&b"uno"[..]));
        // truncated in place.
        let len = std::fs::metadata(&path).unwrap().len();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        assert!(store.open("b-1", &key("a")).await.is_err(), "no trailer");
        // Changes made through the store are seen at once: a new version,
        put(&store, "a", b"two").await;
        assert_eq!(body_of(&store, "a").await.as_deref(), Some(&b"two"[..]));
        // a new check time too (kept while it said an hour ago),
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let checked = |o: Box<dyn StoredObject>| o.meta().checked_at;
        let kept_check = checked(store.open("b-1", &key("a")).await.unwrap().unwrap());
        assert_eq!(kept_check, secs_since_epoch(hour_ago));
        assert!(store.mark_checked("b-1", &key("a")).await.unwrap());
        let new_check = checked(store.open("b-1", &key("a")).await.unwrap().unwrap());
        assert!(new_check >= kept_check + 3000, "{new_check} {kept_check}");
        // and a purge.
        store.delete("b-1", &key("a")).await.unwrap();
        assert_eq!(body_of(&store, "a").await, None);
    }

    #[tokio::test]
    async fn a_kept_open_file_found_damaged_is_dropped_and_removed() {
        let (_dir, store, body) = keeping_a_big_object().await;
        assert_eq!(body_of(&store, "big").await, Some(body));
        // Damaged in place (the kept descriptor's fstat sees a new modification time): the
        // file is opened again and its read fails its CRC...
        let path = store.object_path("b-1", &key("big"));
        damage_in_place(&path, b"y", Duration::from_secs(1));
        let mut object = store.open("b-1", &key("big")).await.unwrap().unwrap();
        assert!(object.read_whole().await.is_err());
        // ...and the object is gone, from disk and from the kept files.
        assert!(!path.exists());
        assert!(store.open("b-1", &key("big")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_kept_file_is_checked_until_it_has_been_read_whole_once() {
        let (_dir, store, body) = keeping_a_big_object().await;
        let path = store.object_path("b-1", &key("big"));
        // A change fstat cannot see: same length, same modification time.
        let damage_unseen = |byte: &[u8]| damage_in_place(&path, byte, Duration::ZERO);
        // Kept after a range read only: not yet checked, so still checked.
        let mut object = store.open("b-1", &key("big")).await.unwrap().unwrap();
        assert_eq!(object.read_at(100, 10).await.unwrap().len(), 10);
        drop(object);
        damage_unseen(b"y");
        let mut object = store.open("b-1", &key("big")).await.unwrap().unwrap();
        assert!(object.read_whole().await.is_err(), "not checked yet");

        // Read whole once and found sound: hits of the same kept file are not checked again
        // (as the memory tier serves what it checked once).
        put(&store, "big", &body).await;
        assert_eq!(body_of(&store, "big").await, Some(body.clone()));
        damage_unseen(b"z");
        let served = body_of(&store, "big").await.unwrap();
        assert_eq!(served.len(), body.len());
        assert_eq!(
            served[10], b'z',
            "served from the kept file without a check"
        );
    }

    #[test]
    fn a_read_into_a_new_buffer_gives_exactly_the_bytes_asked_for_or_fails_short() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(&read_new_buffer_at(&file, 5, 3).unwrap()[..], b"34567");
        assert_eq!(read_new_buffer_at(&file, 0, 10).unwrap().len(), 0);
        let short = read_new_buffer_at(&file, 20, 0).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_file_without_trailer_is_reported_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let path = store.object_path("b-1", &key("x"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"garbage without a trailer").unwrap();
        assert!(store.open("b-1", &key("x")).await.is_err());
    }
}
