//! Issue #13, faults: an object file damaged by hand is never served short; it is treated as a
//! miss, redirected, and replaced by a new copy.

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
