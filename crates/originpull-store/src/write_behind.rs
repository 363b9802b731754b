//! Where a new disk object's bytes go while it is copied: two threads of the blocking pool, one
//! computing the MD5 ETag and one writing the file (and computing the CRC-64, which costs a
//! fraction of the MD5), so receiving, hashing and writing overlap instead of taking turns on the
//! request thread. The origin's small reads are gathered into 256 KiB pieces first: handing each
//! socket read to both threads cost a wake-up per read (measured in `docs/benchmarks.md`).
//!
//! Bodies are written in aligned 1 MiB blocks with `O_DIRECT` where the filesystem allows it:
//! on the disk measured in `docs/benchmarks.md`, flushing 1 GiB from the page cache at `fsync`
//! took four times as long as writing it directly. The part of the body that does not fill a
//! block, and the trailer, go through the page cache, and the final `fsync` covers both.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::checksum::Crc64;
use super::md5::Md5;

/// Chunks queued for each thread: bounds what a fast origin and a slow disk can pile up.
const QUEUE_CHUNKS: usize = 16;
/// Smaller pieces from the origin are gathered up to this size before they are queued: one
/// hand-over (and one wake-up of each thread) per 256 KiB instead of one per socket read.
const GATHER_BYTES: usize = 256 * 1024;
/// Size of each direct write; a multiple of every block device's logical block size.
const DIRECT_BLOCK: usize = 1024 * 1024;
/// Alignment of the direct-write buffer in memory (and of every direct write's offset).
const DIRECT_ALIGN: usize = 4096;

enum ToFile {
    Body(Bytes),
    /// The body is complete: send its CRC-64 back.
    EndOfBody(oneshot::Sender<u64>),
    /// The body is complete: write this trailer after it and make it all durable.
    Finish(Vec<u8>),
}

/// The sending side, owned by the object's writer on the request thread.
pub struct WriteBehind {
    /// `None` once the digests were asked for: the hasher has seen the whole body.
    to_hasher: Option<mpsc::Sender<Bytes>>,
    to_file: mpsc::Sender<ToFile>,
    hasher: JoinHandle<[u8; 16]>,
    file: JoinHandle<io::Result<()>>,
    /// Pieces gathered and not queued yet.
    gathered: BytesMut,
}

impl WriteBehind {
    /// Starts hashing and writing into `file`, which was just created at `path`.
    pub fn start(file: File, path: &Path) -> WriteBehind {
        let path = path.to_path_buf();
        let (to_hasher, hashed) = mpsc::channel(QUEUE_CHUNKS);
        let (to_file, written) = mpsc::channel(QUEUE_CHUNKS);
        WriteBehind {
            to_hasher: Some(to_hasher),
            to_file,
            gathered: BytesMut::new(),
            hasher: tokio::task::spawn_blocking(move || hash(hashed)),
            file: tokio::task::spawn_blocking(move || {
                // The direct handle is optional: tmpfs and some filesystems refuse O_DIRECT.
                let direct = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&path)
                    .ok();
                write_file(BodyFile::new(file, direct), written)
            }),
        }
    }

    /// Takes `chunk`, queueing what was gathered for both threads once it is large enough.
    pub async fn push(&mut self, chunk: Bytes) -> io::Result<()> {
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
    pub async fn digests(&mut self) -> io::Result<Digests> {
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

    /// Writes `trailer` after the body and waits until the whole file is durable.
    pub async fn finish(&mut self, trailer: Vec<u8>) -> io::Result<()> {
        if self.to_file.send(ToFile::Finish(trailer)).await.is_err() {
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

/// What the bytes of a finished body hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digests {
    pub md5: [u8; 16],
    pub crc64: u64,
}

fn hash(mut chunks: mpsc::Receiver<Bytes>) -> [u8; 16] {
    let mut md5 = Md5::new();
    while let Some(chunk) = chunks.blocking_recv() {
        md5.update(&chunk);
    }
    md5.finalize()
}

fn write_file(mut out: BodyFile, mut queue: mpsc::Receiver<ToFile>) -> io::Result<()> {
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
            ToFile::Finish(trailer) => return out.finish(&trailer),
        }
    }
    // The writer was dropped without a commit: the temporary file is being discarded.
    Ok(())
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
        let block = self.block.filled();
        let direct_done = match &self.direct {
            Some(direct) => match direct.write_all_at(block, self.offset) {
                Ok(()) => true,
                Err(e) => {
                    // Some filesystems accept O_DIRECT at open and refuse the write itself; the
                    // page cache then writes this block again, whole, and all that follow.
                    log::debug!("direct write refused ({e}); writing through the page cache");
                    false
                }
            },
            None => false,
        };
        if !direct_done {
            self.direct = None;
            self.buffered.write_all_at(block, self.offset)?;
        }
        self.offset += block.len() as u64;
        self.block.clear();
        Ok(())
    }

    fn finish(mut self, trailer: &[u8]) -> io::Result<()> {
        let tail = self.block.filled();
        self.buffered.write_all_at(tail, self.offset)?;
        self.offset += tail.len() as u64;
        self.buffered.write_all_at(trailer, self.offset)?;
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

    /// A writer into a new file `object` in `dir`.
    fn new_writer(dir: &Path) -> (WriteBehind, std::path::PathBuf) {
        let path = dir.join("object");
        let writer = WriteBehind::start(File::create(&path).unwrap(), &path);
        (writer, path)
    }

    async fn write_through(dir: &Path, pieces: &[Bytes], trailer: &[u8]) -> (Digests, Vec<u8>) {
        let (mut writer, path) = new_writer(dir);
        for piece in pieces {
            writer.push(piece.clone()).await.unwrap();
        }
        let digests = writer.digests().await.unwrap();
        writer.finish(trailer.to_vec()).await.unwrap();
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
    async fn bodies_of_every_alignment_are_written_whole_with_their_digests() {
        // Under the target dir, not /tmp: a tmpfs /tmp would refuse O_DIRECT and skip that path.
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        let dir = tempfile::tempdir_in(&target).unwrap();
        for len in [
            0,
            1,
            4095,
            DIRECT_BLOCK,
            DIRECT_BLOCK + 1,
            3 * DIRECT_BLOCK + 12345,
        ] {
            let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            // Uneven pieces, so blocks fill across piece boundaries.
            let pieces: Vec<Bytes> = body.chunks(65_521).map(Bytes::copy_from_slice).collect();
            let (digests, file) = write_through(dir.path(), &pieces, b"TRAILER").await;
            assert_eq!(
                digests.md5,
                <[u8; 16]>::from(md5::Md5::digest(&body)),
                "len {len}"
            );
            assert_eq!(digests.crc64, crc64_xz_bitwise(&body), "len {len}");
            assert_eq!(&file[..len], &body[..], "len {len}");
            assert_eq!(&file[len..], b"TRAILER", "len {len}");
        }
    }

    #[tokio::test]
    async fn a_write_error_reaches_the_writer() {
        // Every write to /dev/full fails with ENOSPC, as on a full disk.
        let path = Path::new("/dev/full");
        let file = OpenOptions::new().write(true).open(path).unwrap();
        let mut writer = WriteBehind::start(file, path);
        let mut failure = None;
        for _ in 0..3 * DIRECT_BLOCK / 65_536 {
            if let Err(e) = writer.push(Bytes::from(vec![1u8; 65_536])).await {
                failure = Some(e);
                break;
            }
        }
        let failure = match failure {
            Some(e) => e,
            None => match writer.digests().await {
                Err(e) => e,
                Ok(_) => writer.finish(b"T".to_vec()).await.unwrap_err(),
            },
        };
        assert_eq!(failure.raw_os_error(), Some(libc::ENOSPC), "{failure}");
    }

    #[tokio::test]
    async fn a_push_after_the_digests_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = new_writer(dir.path());
        writer.push(Bytes::from_static(b"body")).await.unwrap();
        writer.digests().await.unwrap();
        let late = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            writer.push(Bytes::from_static(b"late")),
        )
        .await
        .expect("refused at once, not waiting on a thread");
        assert!(late.is_err());
    }

    #[tokio::test]
    async fn a_writer_dropped_before_finishing_stops_its_threads() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = new_writer(dir.path());
        writer.push(Bytes::from_static(b"partial")).await.unwrap();
        let (hasher, file) = (writer.hasher.abort_handle(), writer.file.abort_handle());
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
