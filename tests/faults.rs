//! Issue #13, faults: an object file damaged by hand (truncated, or its bytes changed at the same
//! size) is never served short or whole-but-wrong; it is treated as a miss, redirected, and
//! replaced by a new copy. Objects carry COS's CRC-64 (`x-cos-hash-crc64ecma`). A full or
//! read-only `data_dir` (a tmpfs the test mounts, as root; skipped with a message otherwise)
//! fails copies with `store_error`, leaves no temporary file, keeps serving what is stored, and
//! copies succeed again once it is writable. An origin flapping up and down never makes a
//! request fail or an object be stored damaged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use originpull_store::disk::object_path_under;
use originpull_store::key::ObjectKey;

const BUCKET: &str = "example-1250000000";

/// The disk store's file for `key`.
fn object_file(server: &Originpull, key: &str) -> PathBuf {
    let key = ObjectKey::from_request_path(&format!("/{key}")).expect("a valid key");
    object_path_under(server.data_dir(), BUCKET, &key)
}

/// A server with the memory tier off (every hit reads the file) that has copied `path` from
/// `origin`.
async fn stored_on_disk_only(origin: &TestOrigin, path: &str) -> Originpull {
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_extra_yaml("memory_cache:\n  max_bytes: 0\n"),
    );
    assert_eq!(get(&server, BUCKET, path).await.status(), 302);
    assert!(server.wait_stored(BUCKET, path).await);
    server
}

#[tokio::test]
async fn a_truncated_object_file_is_a_miss_and_is_replaced_never_served_short() {
    let origin = TestOrigin::start();
    let body = generated_bytes(300_000);
    origin.route("/page.bin", Behavior::ok(body.clone()));
    let server = stored_on_disk_only(&origin, "/page.bin").await;

    let file = object_file(&server, "page.bin");
    let len = std::fs::metadata(&file).expect("object file").len();
    let handle = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    handle.set_len(len / 2).unwrap();
    drop(handle);

    // Never a short 200: the damaged object is a miss (302) and a new copy replaces it.
    let damaged = get(&server, BUCKET, "/page.bin").await;
    assert_eq!(damaged.status(), 302, "a truncated object was served");
    let replaced = served_whole_eventually(&server, "/page.bin", &body).await;
    assert!(
        replaced,
        "the damaged object was not replaced by a whole copy"
    );
    assert_eq!(origin.hits("/page.bin"), 2);
}

/// CRC-64/XZ from the `crc` crate: an implementation independent of the server's.
fn crc64_xz(bytes: &[u8]) -> u64 {
    crc::Crc::<u64>::new(&crc::CRC_64_XZ).checksum(bytes)
}

/// Flips one byte in the middle of the object's content, keeping the file's size and trailer.
fn flip_a_byte(file: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .expect("open object file");
    let mut byte = [0u8; 1];
    handle.read_exact_at(&mut byte, at).unwrap();
    byte[0] ^= 0xff;
    handle.write_all_at(&byte, at).unwrap();
}

#[tokio::test]
async fn hits_and_heads_carry_the_objects_crc64_as_cos_sends_it() {
    let origin = TestOrigin::start();
    let body = generated_bytes(1_234_567);
    origin.route("/data.bin", Behavior::ok(body.clone()));
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    assert_eq!(get(&server, BUCKET, "/data.bin").await.status(), 302);
    assert!(server.wait_stored(BUCKET, "/data.bin").await);

    let expected = crc64_xz(&body).to_string();
    let hit = get(&server, BUCKET, "/data.bin").await;
    assert_eq!(hit.status(), 200);
    assert_eq!(hit.headers()["x-cos-hash-crc64ecma"], expected.as_str());
    assert_eq!(hit.bytes().await.unwrap().as_ref(), body.as_slice());

    let head = server
        .request(reqwest::Method::HEAD, BUCKET, "/data.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["x-cos-hash-crc64ecma"], expected.as_str());

    // A range is part of the object the CRC describes, as COS sends it.
    let part = get_range(&server, BUCKET, "/data.bin", "bytes=0-9").await;
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["x-cos-hash-crc64ecma"], expected.as_str());
}

#[tokio::test]
async fn a_large_object_changed_on_disk_is_cut_short_then_replaced() {
    let origin = TestOrigin::start();
    let body = generated_bytes(3_000_000);
    origin.route("/big.bin", Behavior::ok(body.clone()));
    // The hit streams the file, checking it as it goes.
    let server = stored_on_disk_only(&origin, "/big.bin").await;
    flip_a_byte(&object_file(&server, "big.bin"), 1_500_000);

    // The headers went out before the damage could be seen: the body must end abnormally,
    // short of its Content-Length, never as a clean 200 with the wrong bytes.
    let damaged = get(&server, BUCKET, "/big.bin").await;
    assert_eq!(damaged.status(), 200);
    match damaged.bytes().await {
        Err(_) => {}
        Ok(served) => panic!(
            "a damaged object was served whole ({} bytes, equal to the origin's: {})",
            served.len(),
            served.as_ref() == body.as_slice()
        ),
    }

    // Then it is a miss, and a new copy replaces it.
    let replaced = served_whole_eventually(&server, "/big.bin", &body).await;
    assert!(
        replaced,
        "the damaged object was not replaced by a whole copy"
    );
    assert_eq!(origin.hits("/big.bin"), 2);
}

#[tokio::test]
async fn a_small_object_changed_on_disk_is_a_miss_before_any_byte_is_sent() {
    let origin = TestOrigin::start();
    let body = generated_bytes(20_000);
    origin.route("/small.css", Behavior::ok(body.clone()));
    // The memory tier (on by default) reads small objects whole, so it sees the damage first.
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    assert_eq!(get(&server, BUCKET, "/small.css").await.status(), 302);
    // Not a HEAD: that would read the whole object into memory before it is damaged.
    assert!(server.wait_fill_outcome(BUCKET, "stored", 1.0).await);
    flip_a_byte(&object_file(&server, "small.css"), 10_000);

    assert_eq!(
        get(&server, BUCKET, "/small.css").await.status(),
        302,
        "a damaged small object was served"
    );
    let replaced = served_whole_eventually(&server, "/small.css", &body).await;
    assert!(
        replaced,
        "the damaged object was not replaced by a whole copy"
    );
    assert_eq!(origin.hits("/small.css"), 2);
}

/// Fills the filesystem holding `dir` up to all but `leave` bytes, with one file; returns it.
fn fill_filesystem(dir: &Path, leave: usize) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create filler");
    let block = vec![0xa5u8; 64 * 1024];
    let mut written = 0usize;
    while file.write_all(&block).is_ok() {
        written += block.len();
    }
    drop(file);
    let keep = written.saturating_sub(leave) as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(keep))
        .expect("shrink filler");
    path
}

/// Memory tier off (every hit reads the disk); a failed key may be copied again at once.
const DISK_ONLY_RETRY_AT_ONCE: &str =
    "memory_cache:\n  max_bytes: 0\nfill:\n  negative_ttl_secs: 0\n";

/// A server whose `data_dir` is a tmpfs of `size_kib`, see [`DISK_ONLY_RETRY_AT_ONCE`]; `None`
/// where the tmpfs cannot be mounted.
fn server_on_tmpfs(origin: &TestOrigin, size_kib: u64, test: &str) -> Option<(Originpull, Tmpfs)> {
    let mut server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_extra_yaml(DISK_ONLY_RETRY_AT_ONCE),
    );
    server.kill9();
    let tmpfs = Tmpfs::mount(server.data_dir(), size_kib, test)?;
    server.restart();
    Some((server, tmpfs))
}

/// Asks for `path` until it is served whole (each miss starts a copy); whether it was.
async fn served_whole_eventually(server: &Originpull, path: &str, body: &[u8]) -> bool {
    wait_until(Duration::from_secs(15), || async {
        let (status, served) = get_body(server, BUCKET, path).await;
        status == 200 && served == body
    })
    .await
}

#[tokio::test]
async fn a_full_disk_fails_copies_cleanly_and_they_succeed_once_space_is_freed() {
    let origin = TestOrigin::start();
    let kept = generated_bytes(100_000);
    let big = generated_bytes(3_000_000);
    origin.route("/kept.bin", Behavior::ok(kept.clone()));
    origin.route("/big.bin", Behavior::ok(big.clone()));
    let Some((server, _tmpfs)) = server_on_tmpfs(&origin, 8 * 1024, "disk full") else {
        return;
    };
    assert_eq!(get(&server, BUCKET, "/kept.bin").await.status(), 302);
    assert!(server.wait_fill_outcome(BUCKET, "stored", 1.0).await);

    let filler = fill_filesystem(server.data_dir(), 1024 * 1024);
    assert_eq!(get(&server, BUCKET, "/big.bin").await.status(), 302);
    assert!(
        server.wait_fill_outcome(BUCKET, "store_error", 1.0).await,
        "a copy onto a full disk did not end in store_error"
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            server.temporary_files(BUCKET).is_empty()
        })
        .await,
        "temporary files left behind: {:?}",
        server.temporary_files(BUCKET)
    );
    let (status, served) = get_body(&server, BUCKET, "/kept.bin").await;
    assert_eq!(status, 200, "a stored object stopped being served");
    assert_eq!(served, kept);

    std::fs::remove_file(filler).unwrap();
    assert!(
        served_whole_eventually(&server, "/big.bin", &big).await,
        "copies did not succeed again once space was freed"
    );
}

#[tokio::test]
async fn a_read_only_data_dir_fails_copies_and_serving_goes_on() {
    let origin = TestOrigin::start();
    let kept = generated_bytes(100_000);
    let later = generated_bytes(500_000);
    origin.route("/kept.bin", Behavior::ok(kept.clone()));
    origin.route("/later.bin", Behavior::ok(later.clone()));
    let Some((mut server, tmpfs)) = server_on_tmpfs(&origin, 8 * 1024, "read-only data_dir") else {
        return;
    };
    assert_eq!(get(&server, BUCKET, "/kept.bin").await.status(), 302);
    assert!(server.wait_fill_outcome(BUCKET, "stored", 1.0).await);

    tmpfs.remount("ro");
    assert_eq!(get(&server, BUCKET, "/later.bin").await.status(), 302);
    assert!(
        server.wait_fill_outcome(BUCKET, "store_error", 1.0).await,
        "a copy into a read-only data_dir did not end in store_error"
    );
    let (status, served) = get_body(&server, BUCKET, "/kept.bin").await;
    assert_eq!(status, 200, "a stored object stopped being served");
    assert_eq!(served, kept);
    assert!(server.is_running());

    tmpfs.remount("rw");
    assert!(
        served_whole_eventually(&server, "/later.bin", &later).await,
        "copies did not succeed again once the data_dir was writable"
    );
    assert!(server.temporary_files(BUCKET).is_empty());
}

#[tokio::test]
async fn an_origin_flapping_up_and_down_fails_no_request_and_damages_no_object() {
    const KEYS: usize = 40;
    let bodies: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| generated_bytes(150_000 + i * 7_919))
        .collect();
    // Slow enough that copies are in flight when the origin goes away.
    let serve = {
        let bodies = bodies.clone();
        move |origin: &TestOrigin| {
            for (i, body) in bodies.iter().enumerate() {
                origin.route(
                    &format!("/flap/{i}.bin"),
                    Behavior::Slow {
                        body: body.clone(),
                        chunk: 16 * 1024,
                        delay_ms: 50,
                        headers: Vec::new(),
                    },
                );
            }
        }
    };
    let first = TestOrigin::start();
    serve(&first);
    let port = first.addr().port();
    let origin = Arc::new(Mutex::new(Some(first)));
    let mut server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &format!("127.0.0.1:{port}"))
            // The breaker (opened by 20 failed copies in a row) pauses copies for 2 s, not 30.
            .with_extra_yaml(&format!("{DISK_ONLY_RETRY_AT_ONCE}  breaker_secs: 2\n")),
    );

    // Up 2 s, down 2 s, for 10 s; then up for good.
    let flapping = Arc::new(AtomicBool::new(true));
    let flapper = {
        let origin = origin.clone();
        let flapping = flapping.clone();
        let serve = serve.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                std::thread::sleep(Duration::from_secs(2));
                let down = origin.lock().unwrap().take();
                drop(down);
                std::thread::sleep(Duration::from_secs(2));
                let up = TestOrigin::start_at(port);
                serve(&up);
                *origin.lock().unwrap() = Some(up);
            }
            flapping.store(false, Ordering::SeqCst);
        })
    };

    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut round = 0usize;
    while flapping.load(Ordering::SeqCst) {
        let i = round % KEYS;
        round += 1;
        let path = format!("/flap/{i}.bin");
        let response = get(&server, BUCKET, &path).await;
        let status = response.status().as_u16();
        *statuses.entry(status).or_default() += 1;
        match status {
            302 => {
                let location = response.headers()["location"].to_str().unwrap().to_string();
                assert_eq!(location, format!("http://127.0.0.1:{port}{path}"));
            }
            200 => {
                let served = response
                    .bytes()
                    .await
                    .unwrap_or_else(|e| panic!("hit of {path} cut short: {e:?}"));
                assert!(
                    served.as_ref() == bodies[i].as_slice(),
                    "{path} was stored damaged"
                );
            }
            other => panic!("{path}: unexpected status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flapper.join().unwrap();
    let metrics = server.metrics_text().await;
    let fills: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("originpull_fills_total"))
        .collect();
    eprintln!(
        "statuses while flapping: {statuses:?}\n{}",
        fills.join("\n")
    );
    assert!(statuses.get(&302).is_some_and(|&n| n > 0));
    assert!(statuses.get(&200).is_some_and(|&n| n > 0));

    // With the origin back for good, every key ends up stored whole.
    for (i, body) in bodies.iter().enumerate() {
        assert!(
            served_whole_eventually(&server, &format!("/flap/{i}.bin"), body).await,
            "/flap/{i}.bin was never stored whole"
        );
    }
    assert!(server.is_running());
}
