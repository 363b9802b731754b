//! Issue #13, faults: an object file damaged by hand (truncated, or its bytes changed at the same
//! size) is never served short or whole-but-wrong; it is treated as a miss, redirected, and
//! replaced by a new copy. Objects carry COS's CRC-64 (`x-cos-hash-crc64ecma`).

mod common;

use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

const BUCKET: &str = "example-1250000000";

/// The disk store's file for `key` (objects are named by the SHA-256 of their key).
fn object_file(server: &Originpull, key: &str) -> std::path::PathBuf {
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    server
        .bucket_dir(BUCKET)
        .join("objects")
        .join(&hash[0..2])
        .join(&hash[2..4])
        .join(hash)
}

#[tokio::test]
async fn a_truncated_object_file_is_a_miss_and_is_replaced_never_served_short() {
    let origin = TestOrigin::start();
    let body = generated_bytes(300_000);
    origin.route("/page.bin", Behavior::ok(body.clone()));
    // Memory tier off: every hit reads the file.
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_extra_yaml("memory_cache:\n  max_bytes: 0\n"),
    );
    assert_eq!(get(&server, BUCKET, "/page.bin").await.status(), 302);
    assert!(server.wait_stored(BUCKET, "/page.bin").await);

    let file = object_file(&server, "page.bin");
    let len = std::fs::metadata(&file).expect("object file").len();
    let handle = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    handle.set_len(len / 2).unwrap();
    drop(handle);

    // Never a short 200: the damaged object is a miss (302) and a new copy replaces it.
    let damaged = get(&server, BUCKET, "/page.bin").await;
    assert_eq!(damaged.status(), 302, "a truncated object was served");
    let replaced = wait_until(Duration::from_secs(15), || async {
        let (status, served) = get_body(&server, BUCKET, "/page.bin").await;
        status == 200 && served == body
    })
    .await;
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
    // Memory tier off: the hit streams the file, checking it as it goes.
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_extra_yaml("memory_cache:\n  max_bytes: 0\n"),
    );
    assert_eq!(get(&server, BUCKET, "/big.bin").await.status(), 302);
    assert!(server.wait_stored(BUCKET, "/big.bin").await);
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
    let replaced = wait_until(Duration::from_secs(15), || async {
        let (status, served) = get_body(&server, BUCKET, "/big.bin").await;
        status == 200 && served == body
    })
    .await;
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
    let replaced = wait_until(Duration::from_secs(15), || async {
        let (status, served) = get_body(&server, BUCKET, "/small.css").await;
        status == 200 && served == body
    })
    .await;
    assert!(
        replaced,
        "the damaged object was not replaced by a whole copy"
    );
    assert_eq!(origin.hits("/small.css"), 2);
}
