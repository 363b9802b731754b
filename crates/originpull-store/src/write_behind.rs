//! Where a new disk object's bytes go while it is copied, and how its file is completed:
//! digests, trailer, `fsync`, and the caller's publishing step (the rename into place).
//!
//! A body of up to [`SMALL_BODY`] (most of a site's files) stays in memory as it arrives and is
//! completed in one go on one thread of the blocking pool: MD5 and CRC-64, the temporary file
//! created and written with one `pwritev` through the page cache, `fsync`, then the publishing
//! step. Handing such a body piece by piece between threads cost more than hashing it: a cold
//! mirrored 256 KiB object took 19 `futex` calls and five trips through the blocking pool
//! (`docs/benchmarks.md`, "Cold mirror misses: small copies on one thread").
//!
//! A larger body goes to two threads of the blocking pool as it arrives, one computing the MD5
//! and one writing the file (and computing the CRC-64, which costs a fraction of the MD5), so
//! receiving, hashing and writing overlap instead of taking turns on the request thread. The
//! origin's small reads are gathered into 256 KiB pieces first: handing each socket read to
//! both threads cost a wake-up per read (measured in `docs/benchmarks.md`).
//!
//! Bodies larger than a block are written in aligned 1 MiB blocks with `O_DIRECT` where the
//! filesystem allows it, and so are the whole pages of their last block: on the disk measured
//! in `docs/benchmarks.md`, flushing 1 GiB from the page cache at `fsync` took four times as
//! long as writing it directly. A body of one block or less, the last part-page and the trailer
//! go through the page cache (where the hits that follow a copy find them), and the final
//! `fsync` covers both.
//!
//! The temporary file is created when the body is first written out, so a copy that fails
//! before that leaves no file behind.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::checksum::Crc64;
use super::md5::Md5;

/// Bodies up to this size are kept in memory and completed on one thread; larger ones stream
/// to the hashing and writing threads. Also the most a copy holds in memory before that.
pub const SMALL_BODY: usize = 1024 * 1024;
/// Chunks queued for each thread: bounds what a fast origin and a slow disk can pile up.
const QUEUE_CHUNKS: usize = 16;
/// Smaller pieces from the origin are gathered up to this size before they are queued: one
/// hand-over (and one wake-up of each thread) per 256 KiB instead of one per socket read.
const GATHER_BYTES: usize = 256 * 1024;
/// Size of each direct write; a multiple of every block device's logical block size.
const DIRECT_BLOCK: usize = 1024 * 1024;
/// Alignment of the direct-write buffer in memory (and of every direct write's offset).
const DIRECT_ALIGN: usize = 4096;

/// The step that makes a completed file the object (renaming it into place); it runs on the
/// thread that made the file durable.
pub type Publish = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// The body's writer, owned by the object's writer on the request thread.
pub struct WriteBehind {
    /// The temporary file the body goes to.
    path: PathBuf,
    body: Body,
}

enum Body {
    /// No thread has seen the body yet: all of it so far, as it arrived.
    InMemory { pieces: Vec<Bytes>, len: usize },
    /// Over [`SMALL_BODY`]: going to the hashing and writing threads.
    Streaming(Threads),
    /// Completed, or failed while completing: nothing more may be pushed.
    Ended,
}

impl WriteBehind {
    /// A writer of a new temporary file at `path` (created when the body is first written out).
    pub fn new(path: PathBuf) -> WriteBehind {
        WriteBehind {
            path,
            body: Body::InMemory {
                pieces: Vec::new(),
                len: 0,
            },
        }
    }

    /// Takes the next `chunk` of the body.
    pub async fn push(&mut self, chunk: Bytes) -> io::Result<()> {
        match &mut self.body {
            Body::InMemory { pieces, len } if *len + chunk.len() <= SMALL_BODY => {
                *len += chunk.len();
                pieces.push(chunk);
                Ok(())
            }
            Body::InMemory { pieces, len } => {
                // Past the small size: the threads start with everything so far, in one piece.
                let mut first = BytesMut::with_capacity(*len + chunk.len());
                for piece in pieces.drain(..) {
                    first.extend_from_slice(&piece);
                }
                first.extend_from_slice(&chunk);
                let mut threads = Threads::start(self.path.clone());
                let queued = threads.queue(first.freeze()).await;
                self.body = Body::Streaming(threads);
                queued
            }
            Body::Streaming(threads) => threads.push(chunk).await,
            Body::Ended => Err(io::Error::other("the object's body was already completed")),
        }
    }

    /// Completes the file: computes the body's digests, writes the trailer `seal` makes of them
    /// after the body, makes the file durable, then runs `publish`. Returns what `seal` gave
    /// beside the trailer. Nothing may be pushed after, whatever the outcome.
    pub async fn complete<T: Send + 'static>(
        &mut self,
        seal: impl FnOnce(Digests) -> io::Result<(Vec<u8>, T)> + Send + 'static,
        publish: Publish,
    ) -> io::Result<T> {
        match std::mem::replace(&mut self.body, Body::Ended) {
            Body::InMemory { pieces, .. } => {
                let path = self.path.clone();
                tokio::task::spawn_blocking(move || {
                    let completed = (|| {
                        let digests = Digests::of(&pieces);
                        let (trailer, sealed) = seal(digests)?;
                        write_whole_file(&path, &pieces, &trailer)?;
                        publish()?;
                        Ok(sealed)
                    })();
                    if completed.is_err() {
                        // This thread may have made the file after the writer gave up on it.
                        remove_unfinished(&path);
                    }
                    completed
                })
                .await
                .map_err(io::Error::other)?
            }
            Body::Streaming(mut threads) => {
                let digests = threads.digests().await?;
                let (trailer, sealed) = seal(digests)?;
                threads.finish(trailer, publish).await?;
                Ok(sealed)
            }
            Body::Ended => Err(io::Error::other("the object's body was already completed")),
        }
    }
}

/// What the bytes of a finished body hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digests {
    pub md5: [u8; 16],
    pub crc64: u64,
}

impl Digests {
    fn of(pieces: &[Bytes]) -> Digests {
        let mut md5 = Md5::new();
        let mut crc = Crc64::new();
        for piece in pieces {
            md5.update(piece);
            crc.update(piece);
        }
        Digests {
            md5: md5.finalize(),
            crc64: crc.value(),
        }
    }
}

/// A new file at `path` holding `pieces` and then `trailer`, durable when this returns. Written
/// through the page cache straight from the pieces: a small body needs no direct handle and no
/// aligned block to copy into.
fn write_whole_file(path: &Path, pieces: &[Bytes], trailer: &[u8]) -> io::Result<()> {
    let file = create_new_file(path)?;
    let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|piece| IoSlice::new(piece)).collect();
    slices.push(IoSlice::new(trailer));
    write_all_vectored_at(&file, &mut slices, 0)?;
    file.sync_all()
}

/// The most slices one `pwritev` takes (Linux's `IOV_MAX`); a body of many small chunks is
/// written in several calls.
const MAX_SLICES_PER_WRITE: usize = 1024;

/// `pwritev` until every slice is written, from `offset` on.
fn write_all_vectored_at(
    file: &File,
    mut slices: &mut [IoSlice<'_>],
    mut offset: u64,
) -> io::Result<()> {
    // Empty slices would make a finished write look like a short one.
    while slices.first().is_some_and(|s| s.is_empty()) {
        slices = &mut slices[1..];
    }
    while !slices.is_empty() {
        let batch = slices.len().min(MAX_SLICES_PER_WRITE);
        match rustix::io::pwritev(file, &slices[..batch], offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                offset += written as u64;
                IoSlice::advance_slices(&mut slices, written);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Creates the temporary file (and its directory when missing); refuses to reuse one.
fn create_new_file(path: &Path) -> io::Result<File> {
    let create = || OpenOptions::new().write(true).create_new(true).open(path);
    match create() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            create()
        }
        opened => opened,
    }
}

enum ToFile {
    Body(Bytes),
    /// The body is complete: send its CRC-64 back.
    EndOfBody(oneshot::Sender<u64>),
    /// The body is complete: write this trailer after it, make it all durable, then publish.
    Finish(Vec<u8>, Publish),
}

/// The sending side of a large body's two threads.
struct Threads {
    /// `None` once the digests were asked for: the hasher has seen the whole body.
    to_hasher: Option<mpsc::Sender<Bytes>>,
    to_file: mpsc::Sender<ToFile>,
    hasher: JoinHandle<[u8; 16]>,
    file: JoinHandle<io::Result<()>>,
    /// Pieces gathered and not queued yet.
    gathered: BytesMut,
}

impl Threads {
    /// Starts hashing, and writing into a new file at `path`.
    fn start(path: PathBuf) -> Threads {
        let (to_hasher, hashed) = mpsc::channel(QUEUE_CHUNKS);
        let (to_file, written) = mpsc::channel(QUEUE_CHUNKS);
        Threads {
            to_hasher: Some(to_hasher),
            to_file,
            gathered: BytesMut::new(),
            hasher: tokio::task::spawn_blocking(move || hash(hashed)),
            file: tokio::task::spawn_blocking(move || {
                let written = BodyFile::create(&path).and_then(|out| write_file(out, written));
                if !matches!(written, Ok(FileEnd::Published)) {
                    // The writer may have dropped the file's name before this thread made it.
                    remove_unfinished(&path);
                }
                written.map(|_| ())
            }),
        }
    }

    /// Takes `chunk`, queueing what was gathered for both threads once it is large enough.
    async fn push(&mut self, chunk: Bytes) -> io::Result<()> {
        if self.to_hasher.is_none() {
            return Err(io::Error::other("the object's body was already completed"));
        }
        if self.gathered.is_empty() && chunk.len() >= GATHER_BYTES {
            return self.queue(chunk).await;
        }
        if self.gathered.is_empty() {
            // One allocation per gathered piece, not a doubling series of copies.
            self.gathered.reserve(GATHER_BYTES + chunk.len());
        }
        self.gathered.extend_from_slice(&chunk);
        if self.gathered.len() >= GATHER_BYTES {
            let gathered = self.gathered.split().freeze();
            self.queue(gathered).await?;
        }
        Ok(())
    }

    /// Queues `chunk` for both threads, waiting while their queues are full.
    async fn queue(&mut self, chunk: Bytes) -> io::Result<()> {
        let Some(to_hasher) = &self.to_hasher else {
            return Err(io::Error::other("the object's body was already completed"));
        };
        if to_hasher.send(chunk.clone()).await.is_err() {
            // Only a panic ends the hasher early; the file thread ends when `self` is dropped.
            return Err(io::Error::other("the MD5 thread stopped"));
        }
        if self.to_file.send(ToFile::Body(chunk)).await.is_err() {
            // The file thread ended early: on a write error, which it returns.
            return Err(self.stopped_error().await);
        }
        Ok(())
    }

    /// The MD5 and CRC-64 of everything pushed; no body may be pushed after.
    async fn digests(&mut self) -> io::Result<Digests> {
        if !self.gathered.is_empty() && self.to_hasher.is_some() {
            let rest = self.gathered.split().freeze();
            self.queue(rest).await?;
        }
        // Closing its queue lets the hasher finish.
        self.to_hasher = None;
        let (crc_sender, crc) = oneshot::channel();
        if self
            .to_file
            .send(ToFile::EndOfBody(crc_sender))
            .await
            .is_err()
        {
            return Err(self.stopped_error().await);
        }
        let md5 = (&mut self.hasher).await.map_err(io::Error::other)?;
        let Ok(crc64) = crc.await else {
            return Err(self.stopped_error().await);
        };
        Ok(Digests { md5, crc64 })
    }

    /// Writes `trailer` after the body and waits until the whole file is durable and published.
    async fn finish(&mut self, trailer: Vec<u8>, publish: Publish) -> io::Result<()> {
        if self
            .to_file
            .send(ToFile::Finish(trailer, publish))
            .await
            .is_err()
        {
            return Err(self.stopped_error().await);
        }
        (&mut self.file).await.map_err(io::Error::other)?
    }

    /// Why the file thread, which has ended, stopped before `finish`.
    async fn stopped_error(&mut self) -> io::Error {
        match (&mut self.file).await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => io::Error::other("object writer stopped early"),
            Err(join) => io::Error::other(join),
        }
    }
}

fn hash(mut chunks: mpsc::Receiver<Bytes>) -> [u8; 16] {
    let mut md5 = Md5::new();
    while let Some(chunk) = chunks.blocking_recv() {
        md5.update(&chunk);
    }
    md5.finalize()
}

/// How a large body's file thread ended without an error.
enum FileEnd {
    Published,
    /// The writer was dropped before completing the body.
    Abandoned,
}

fn write_file(mut out: BodyFile, mut queue: mpsc::Receiver<ToFile>) -> io::Result<FileEnd> {
    let mut crc = Crc64::new();
    while let Some(message) = queue.blocking_recv() {
        match message {
            ToFile::Body(chunk) => {
                crc.update(&chunk);
                out.write(&chunk)?
            }
            ToFile::EndOfBody(reply) => {
                // The writer waits for it; if it went away, the drop discards the file anyway.
                let _ = reply.send(crc.value());
            }
            ToFile::Finish(trailer, publish) => {
                out.finish(&trailer)?;
                publish()?;
                return Ok(FileEnd::Published);
            }
        }
    }
    Ok(FileEnd::Abandoned)
}

/// Removes the temporary file of a body that was not published (gone already is fine).
pub fn remove_unfinished(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove unfinished {}: {e}", path.display()),
    }
}

/// The file being written, through the page cache and, when possible, directly.
struct BodyFile {
    buffered: File,
    direct: Option<File>,
    block: AlignedBlock,
    /// Where the block starts in the file; everything before it is written.
    offset: u64,
}

impl BodyFile {
    /// A new file at `path`, with a direct handle when the filesystem gives one (tmpfs and
    /// some others refuse `O_DIRECT`).
    fn create(path: &Path) -> io::Result<BodyFile> {
        let buffered = create_new_file(path)?;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(BodyFile::new(buffered, direct))
    }

    fn new(buffered: File, direct: Option<File>) -> BodyFile {
        let block = AlignedBlock::new();
        let direct = direct.filter(|_| block.is_aligned());
        BodyFile {
            buffered,
            direct,
            block,
            offset: 0,
        }
    }

    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let taken = self.block.fill_from(data);
            data = &data[taken..];
            if self.block.is_full() {
                self.write_block()?;
            }
        }
        Ok(())
    }

    fn write_block(&mut self) -> io::Result<()> {
        let len = self.block.filled().len();
        self.write_out(len)?;
        self.offset += len as u64;
        self.block.clear();
        Ok(())
    }

    /// Writes the block's first `len` bytes at the block's offset: directly when the file takes
    /// direct writes (`len` a whole number of pages), else through the page cache.
    fn write_out(&mut self, len: usize) -> io::Result<()> {
        let data = &self.block.filled()[..len];
        if let Some(direct) = &self.direct {
            match direct.write_all_at(data, self.offset) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // Some filesystems accept O_DIRECT at open and refuse the write itself; the
                    // page cache then writes these bytes again, and all that follow.
                    log::debug!("direct write refused ({e}); writing through the page cache");
                    self.direct = None;
                }
            }
        }
        self.buffered.write_all_at(data, self.offset)
    }

    /// Writes the rest of the body and `trailer`, then makes the file durable; the rest's whole
    /// pages go directly, as the blocks before them did. (Only bodies over [`SMALL_BODY`] come
    /// here: written directly, a small body cost a third less CPU, but the hits that follow a
    /// copy then read the disk; `docs/benchmarks.md`, cold mirror misses.)
    fn finish(mut self, trailer: &[u8]) -> io::Result<()> {
        let rest = self.block.filled().len();
        let pages = match self.direct {
            Some(_) => rest / DIRECT_ALIGN * DIRECT_ALIGN,
            None => 0,
        };
        if pages > 0 {
            self.write_out(pages)?;
        }
        let part_page = &self.block.filled()[pages..];
        let at = self.offset + pages as u64;
        self.buffered.write_all_at(part_page, at)?;
        self.buffered
            .write_all_at(trailer, at + part_page.len() as u64)?;
        self.buffered.sync_all()
    }
}

/// A [`DIRECT_BLOCK`]-sized buffer at a [`DIRECT_ALIGN`]-aligned address, as `O_DIRECT` needs.
/// Its memory is reserved up front but only touched as it fills, so a small object's copy
/// costs a page or two of memory, not the whole block.
struct AlignedBlock {
    /// Never grows past its capacity, so the data's address never moves.
    storage: Vec<u8>,
    /// Where the block starts within `storage`.
    start: usize,
}

impl AlignedBlock {
    fn new() -> AlignedBlock {
        let mut storage: Vec<u8> = Vec::with_capacity(DIRECT_BLOCK + DIRECT_ALIGN);
        // `align_offset` may decline to answer; the block is then used unaligned.
        let start = match storage.as_ptr().align_offset(DIRECT_ALIGN) {
            offset if offset < DIRECT_ALIGN => offset,
            _ => 0,
        };
        storage.resize(start, 0);
        AlignedBlock { storage, start }
    }

    fn is_aligned(&self) -> bool {
        self.filled().as_ptr().align_offset(DIRECT_ALIGN) == 0
    }

    fn fill_from(&mut self, data: &[u8]) -> usize {
        let taken = data.len().min(DIRECT_BLOCK - self.filled().len());
        self.storage.extend_from_slice(&data[..taken]);
        taken
    }

    fn is_full(&self) -> bool {
        self.filled().len() == DIRECT_BLOCK
    }

    fn filled(&self) -> &[u8] {
        &self.storage[self.start..]
    }

    fn clear(&mut self) {
        self.storage.truncate(self.start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;

    /// Completes `writer` with `trailer`, publishing nothing; returns the digests.
    async fn complete(writer: &mut WriteBehind, trailer: &[u8]) -> io::Result<Digests> {
        let trailer = trailer.to_vec();
        writer
            .complete(move |digests| Ok((trailer, digests)), Box::new(|| Ok(())))
            .await
    }

    async fn write_through(dir: &Path, pieces: &[Bytes], trailer: &[u8]) -> (Digests, Vec<u8>) {
        let path = dir.join(format!("object-{}", rand::random::<u64>()));
        let mut writer = WriteBehind::new(path.clone());
        for piece in pieces {
            writer.push(piece.clone()).await.unwrap();
        }
        let digests = complete(&mut writer, trailer).await.unwrap();
        (digests, std::fs::read(&path).unwrap())
    }

    /// CRC-64/XZ bit by bit, straight from its definition: the reference for the SIMD one.
    fn crc64_xz_bitwise(bytes: &[u8]) -> u64 {
        const REFLECTED_ECMA_182: u64 = 0xc96c_5795_d787_0f42;
        let mut crc = u64::MAX;
        for &byte in bytes {
            crc ^= u64::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ REFLECTED_ECMA_182
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[tokio::test]
    async fn bodies_of_every_size_and_alignment_are_written_whole_with_their_digests() {
        // Under the target dir, not /tmp: a tmpfs /tmp would refuse O_DIRECT and skip that path.
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        let dir = tempfile::tempdir_in(&target).unwrap();
        for len in [
            0,
            1,
            4095,
            DIRECT_ALIGN,
            3 * DIRECT_ALIGN + 5,
            GATHER_BYTES,
            SMALL_BODY,
            SMALL_BODY + 1,
            DIRECT_BLOCK + 1,
            DIRECT_BLOCK + 3 * DIRECT_ALIGN,
            3 * DIRECT_BLOCK + 12345,
        ] {
            let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            // Uneven pieces, so blocks fill across piece boundaries.
            let pieces: Vec<Bytes> = body.chunks(65_521).map(Bytes::copy_from_slice).collect();
            let (digests, file) = write_through(dir.path(), &pieces, b"TRAILER").await;
            check_written(&body, digests, &file);
        }
        // More pieces than one `pwritev` takes, some of them empty.
        let body: Vec<u8> = (0..5000usize).map(|i| (i % 251) as u8).collect();
        let pieces: Vec<Bytes> = body
            .chunks(3)
            .flat_map(|piece| [Bytes::new(), Bytes::copy_from_slice(piece)])
            .collect();
        let (digests, file) = write_through(dir.path(), &pieces, b"TRAILER").await;
        check_written(&body, digests, &file);
    }

    fn check_written(body: &[u8], digests: Digests, file: &[u8]) {
        let len = body.len();
        assert_eq!(
            digests.md5,
            <[u8; 16]>::from(md5::Md5::digest(body)),
            "len {len}"
        );
        assert_eq!(digests.crc64, crc64_xz_bitwise(body), "len {len}");
        assert_eq!(&file[..len], body, "len {len}");
        assert_eq!(&file[len..], b"TRAILER", "len {len}");
    }

    #[tokio::test]
    async fn a_small_body_makes_no_file_until_completed_and_a_large_one_is_written_as_it_comes() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("tmp/small");
        let mut writer = WriteBehind::new(small.clone());
        writer
            .push(Bytes::from(vec![7u8; SMALL_BODY]))
            .await
            .unwrap();
        assert!(!small.exists(), "a small body stays in memory");
        complete(&mut writer, b"T").await.unwrap();
        assert_eq!(
            std::fs::metadata(&small).unwrap().len(),
            SMALL_BODY as u64 + 1
        );

        let large = dir.path().join("tmp/large");
        let mut writer = WriteBehind::new(large.clone());
        writer
            .push(Bytes::from(vec![7u8; SMALL_BODY]))
            .await
            .unwrap();
        writer.push(Bytes::from_static(b"one more")).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !large.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("past the small size the file is made while the body arrives");
        complete(&mut writer, b"T").await.unwrap();
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_made_fails_the_writer_small_or_large() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the temporary file's directory should be: ENOTDIR, even as root.
        std::fs::write(dir.path().join("tmp"), b"not a directory").unwrap();
        for len in [10, 3 * SMALL_BODY] {
            let mut writer = WriteBehind::new(dir.path().join("tmp/object"));
            let mut failure = None;
            for _ in 0..len / 65_536 + 1 {
                if let Err(e) = writer.push(Bytes::from(vec![1u8; len.min(65_536)])).await {
                    failure = Some(e);
                    break;
                }
            }
            let failure = match failure {
                Some(e) => e,
                None => complete(&mut writer, b"T").await.unwrap_err(),
            };
            assert_eq!(
                failure.raw_os_error(),
                Some(libc::ENOTDIR),
                "len {len}: {failure}"
            );
        }
    }

    #[tokio::test]
    async fn a_push_after_completion_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for len in [4, 2 * SMALL_BODY] {
            let mut writer = WriteBehind::new(dir.path().join(format!("object-{len}")));
            writer.push(Bytes::from(vec![1u8; len])).await.unwrap();
            complete(&mut writer, b"T").await.unwrap();
            let late = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                writer.push(Bytes::from_static(b"late")),
            )
            .await
            .expect("refused at once, not waiting on a thread");
            assert!(late.is_err(), "len {len}");
        }
    }

    #[tokio::test]
    async fn a_writer_dropped_before_finishing_stops_its_threads() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = WriteBehind::new(dir.path().join("object"));
        writer
            .push(Bytes::from(vec![1u8; 2 * SMALL_BODY]))
            .await
            .unwrap();
        let Body::Streaming(threads) = &writer.body else {
            panic!("a body over the small size goes to the threads");
        };
        let (hasher, file) = (threads.hasher.abort_handle(), threads.file.abort_handle());
        drop(writer);
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !(hasher.is_finished() && file.is_finished()) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("both threads end once their queues close");
    }
}
