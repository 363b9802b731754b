//! Issue #24 end to end: a bucket cache that fits its disk. `retention: cache` buckets are
//! evicted least recently used first past `store.max_bytes` or below `store.min_free_bytes`,
//! `keep` buckets never; the order and the accounting survive a graceful stop and a `kill -9`;
//! purges, new versions and variants keep the accounting exact. Checked against the real binary,
//! a loopback origin, and the files on disk (never with a request that would itself count as a
//! hit).

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use originpull_store::disk::object_path_under;
use originpull_store::key::ObjectKey;

const CACHE: &str = "cache-1250000000";
const KEEP: &str = "keep-1250000000";
const WAIT: Duration = Duration::from_secs(20);

fn cache_bucket(origin: &TestOrigin, extra: &str) -> String {
    format!(
        "name: {CACHE}\nretention: cache\norigin_pull:\n  enabled: true\n  origin: {}\n{extra}",
        origin.authority()
    )
}

fn keep_bucket(origin: &TestOrigin) -> String {
    format!(
        "name: {KEEP}\norigin_pull:\n  enabled: true\n  origin: {}\n",
        origin.authority()
    )
}

/// A body of `len` bytes that differs per `name`.
fn body_of(name: &str, len: usize) -> Vec<u8> {
    let seed = name
        .bytes()
        .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

fn name(i: usize) -> String {
    format!("obj-{i:03}.bin")
}

fn file_of(server: &Originpull, bucket: &str, key: &str) -> std::path::PathBuf {
    object_path_under(
        server.data_dir(),
        bucket,
        &ObjectKey::from_stored(key).unwrap(),
    )
}

fn stored(server: &Originpull, bucket: &str, key: &str) -> bool {
    file_of(server, bucket, key).exists()
}

/// File bytes of every object and variant of every bucket, as the store's walk counts them.
fn bytes_on_disk(data_dir: &Path) -> u64 {
    fn walk(dir: &Path, total: &mut u64) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, total);
            } else if let Ok(stat) = entry.metadata() {
                *total += stat.len().max(1);
            }
        }
    }
    let mut total = 0;
    for bucket in [CACHE, KEEP] {
        walk(&data_dir.join(bucket).join("objects"), &mut total);
    }
    total
}

/// Misses `key` (a 302) and waits until its copy is on disk; its file's length.
async fn copy_in(server: &Originpull, bucket: &str, key: &str) -> u64 {
    let response = get(server, bucket, &format!("/{key}")).await;
    assert_eq!(response.status().as_u16(), 302, "{key} was not a miss");
    let path = file_of(server, bucket, key);
    assert!(
        wait_until(WAIT, || async { path.exists() }).await,
        "{key} was not copied into {bucket}"
    );
    std::fs::metadata(&path).unwrap().len()
}

async fn hit(server: &Originpull, bucket: &str, key: &str) {
    let (status, _) = get_body(server, bucket, &format!("/{key}")).await;
    assert_eq!(status, 200, "{key} was not a hit");
}

/// Waits until `originpull_store_bytes` says what the disk holds; that figure.
async fn accounting_matches_disk(server: &Originpull, why: &str) -> u64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let counted = server.metric("originpull_store_bytes", &[]).await;
        let on_disk = bytes_on_disk(server.data_dir());
        if counted == on_disk as f64 {
            return on_disk;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{why}: originpull_store_bytes {counted} but the disk holds {on_disk}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn past_max_bytes_the_least_recently_used_cache_objects_go_and_keep_objects_stay() {
    const SIZE: usize = 10_000;
    const MAX: u64 = 200_000;
    let origin = TestOrigin::start();
    for i in 0..20 {
        origin.route(
            &format!("/{}", name(i)),
            Behavior::ok(body_of(&name(i), SIZE)),
        );
    }
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket_yaml(&cache_bucket(&origin, ""))
            .with_bucket_yaml(&keep_bucket(&origin))
            .with_extra_yaml(&format!("store:\n  max_bytes: {MAX}\n")),
    );
    let mut weights = std::collections::HashMap::new();
    for i in 0..5 {
        copy_in(&server, KEEP, &name(i)).await;
    }
    for i in 0..14 {
        weights.insert(i, copy_in(&server, CACHE, &name(i)).await);
    }
    assert!(
        bytes_on_disk(server.data_dir()) < MAX,
        "set up below the limit"
    );
    // 0..4 are served (again and again: the memory tier answers some of them).
    for _ in 0..3 {
        for i in 0..4 {
            hit(&server, CACHE, &name(i)).await;
        }
    }
    for i in 14..20 {
        weights.insert(i, copy_in(&server, CACHE, &name(i)).await);
    }
    let under = wait_until(WAIT, || async {
        bytes_on_disk(server.data_dir()) <= MAX * 95 / 100 + SIZE as u64
    })
    .await;
    assert!(
        under,
        "still {} bytes on disk",
        bytes_on_disk(server.data_dir())
    );
    let on_disk = accounting_matches_disk(&server, "after eviction").await;
    assert!(on_disk <= MAX, "{on_disk} bytes on disk, over {MAX}");

    let evicted: Vec<usize> = (0..20)
        .filter(|i| !stored(&server, CACHE, &name(*i)))
        .collect();
    // The unserved, oldest first: a prefix of 4, 5, 6, ...
    assert!(evicted.len() >= 5, "evicted {evicted:?}");
    assert_eq!(evicted, (4..4 + evicted.len()).collect::<Vec<_>>());
    for i in 0..5 {
        assert!(
            stored(&server, KEEP, &name(i)),
            "the keep bucket lost {}",
            name(i)
        );
    }
    let count = server
        .metric("originpull_evictions_total", &[("bucket", CACHE)])
        .await;
    let bytes = server
        .metric("originpull_evicted_bytes_total", &[("bucket", CACHE)])
        .await;
    assert_eq!(count, evicted.len() as f64);
    assert_eq!(
        bytes,
        evicted.iter().map(|i| weights[i]).sum::<u64>() as f64
    );
    assert_eq!(
        server
            .metric("originpull_evictions_total", &[("bucket", KEEP)])
            .await,
        0.0
    );
    assert!(server.metric("originpull_store_free_bytes", &[]).await > 0.0);

    // An evicted object is a miss again, and is copied again.
    let again = format!("/{}", name(evicted[0]));
    let asked_before = origin.hits(&again);
    copy_in(&server, CACHE, &again[1..]).await;
    assert_eq!(origin.hits(&again), asked_before + 1);
    assert!(
        !server.stderr_text().contains("ERROR"),
        "{}",
        server.stderr_text()
    );
}

/// Sends `-TERM` and waits for the process to exit by itself.
fn stop_gracefully(server: &mut Originpull) {
    server.signal("TERM");
    let status = server.wait_exit(WAIT).expect("still running after SIGTERM");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_order_and_the_accounting_survive_a_graceful_stop_and_a_kill_9() {
    const SIZE: usize = 4_000;
    let origin = TestOrigin::start();
    for i in 0..15 {
        origin.route(
            &format!("/{}", name(i)),
            Behavior::ok(body_of(&name(i), SIZE)),
        );
    }
    let config = OriginpullConfig::new().with_bucket_yaml(&cache_bucket(&origin, ""));
    let mut server = Originpull::start(config.clone());
    let mut weights = Vec::new();
    for i in 0..10 {
        weights.push(copy_in(&server, CACHE, &name(i)).await);
    }
    for i in 0..3 {
        hit(&server, CACHE, &name(i)).await;
    }
    stop_gracefully(&mut server);
    server.restart();
    // Loaded whole: no walk, and the figure is right at once.
    let before_walk = accounting_matches_disk(&server, "after a graceful stop").await;
    assert_eq!(before_walk, weights.iter().sum::<u64>());
    // Only the first start (no saved state yet) walked the buckets.
    assert_eq!(server.stderr_text().matches("brought in line").count(), 1);

    for i in 10..15 {
        weights.push(copy_in(&server, CACHE, &name(i)).await);
    }
    server.kill9();
    server.restart();
    assert!(
        server
            .wait_for_stderr("eviction order brought in line with the disk", WAIT)
            .await,
        "{}",
        server.stderr_text()
    );
    let total = accounting_matches_disk(&server, "after kill -9").await;
    assert_eq!(total, weights.iter().sum::<u64>());

    // The saved order (3..9 unserved, oldest first) comes before everything the walk found
    // and the served 0..2. Six victims: choose the limit so that exactly six must go.
    let order: Vec<usize> = (3..10).collect();
    let first = |n: usize| order[..n].iter().map(|i| weights[*i]).sum::<u64>();
    let target = total - (first(5) + first(6)) / 2;
    let max = target * 100 / 95 + 1;
    let yaml = server.render(&config.with_extra_yaml(&format!("store:\n  max_bytes: {max}\n")));
    server.rewrite_config(&yaml);
    server.signal("HUP");
    let evicted = |server: &Originpull| -> Vec<usize> {
        (0..15)
            .filter(|i| !stored(server, CACHE, &name(*i)))
            .collect()
    };
    assert!(
        wait_until(WAIT, || async { evicted(&server).len() >= 6 }).await,
        "evicted {:?}",
        evicted(&server)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(evicted(&server), (3..9).collect::<Vec<_>>());
    accounting_matches_disk(&server, "after eviction").await;
}

#[tokio::test]
async fn variants_new_versions_and_purges_keep_the_accounting_exact() {
    let origin = TestOrigin::start();
    let css = "body { color: #123456; }\n".repeat(400);
    origin.route(
        "/site.css",
        Behavior::ok_with_headers(css.clone(), &[("Content-Type", "text/css")]),
    );
    origin.route("/other.bin", Behavior::ok(body_of("other", 3000)));
    let token_dir = tempfile::tempdir().unwrap();
    let token_path = token_dir.path().join("token");
    std::fs::write(&token_path, "capacity-test-token\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let admin = format!("127.0.0.1:{}", free_port());
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket_yaml(&cache_bucket(&origin, "  revalidate_after_secs: 1\n"))
            .with_extra_yaml(&format!(
                "admin_listen: {admin}\nadmin_token_file: {}\nstore:\n  max_bytes: 100000000\n",
                token_path.display()
            )),
    );
    copy_in(&server, CACHE, "site.css").await;
    copy_in(&server, CACHE, "other.bin").await;
    accounting_matches_disk(&server, "two copies").await;

    // Compressed variants, kept beside the object.
    let client = http_client();
    for encoding in ["gzip", "br"] {
        let made = wait_until(WAIT, || async {
            let response = client
                .get(format!("{}/site.css", server.base_url()))
                .header("Host", server.host(CACHE))
                .header("Accept-Encoding", encoding)
                .send()
                .await
                .unwrap();
            response
                .headers()
                .get("content-encoding")
                .is_some_and(|value| value == encoding)
        })
        .await;
        assert!(made, "no {encoding} variant served");
    }
    let with_variants = accounting_matches_disk(&server, "variants").await;
    let object_file = std::fs::metadata(file_of(&server, CACHE, "site.css"))
        .unwrap()
        .len();
    assert!(
        with_variants > object_file + 3000 + 2,
        "the variants are counted"
    );

    // A new version at the origin, found by revalidation: its old variants go.
    let changed = "p { margin: 0; }\n".repeat(100);
    origin.route(
        "/site.css",
        Behavior::ok_with_headers(changed.clone(), &[("Content-Type", "text/css")]),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let replaced = wait_until(WAIT, || async {
        let (_, body) = get_body(&server, CACHE, "/site.css").await;
        body == changed.as_bytes()
    })
    .await;
    assert!(replaced, "the new version was not stored");
    accounting_matches_disk(&server, "a new version").await;

    // A purge through the admin API.
    let purged = client
        .delete(format!(
            "http://{admin}/v1/buckets/{CACHE}/objects/other.bin"
        ))
        .header("Authorization", "Bearer capacity-test-token")
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status().as_u16(), 204);
    assert!(!stored(&server, CACHE, "other.bin"));
    let after_purge = accounting_matches_disk(&server, "a purge").await;
    assert_eq!(
        after_purge,
        bytes_on_disk(server.data_dir()),
        "only site.css and its variants are left"
    );
    assert_eq!(
        server
            .metric("originpull_evictions_total", &[("bucket", CACHE)])
            .await,
        0.0,
        "nothing was evicted"
    );
}

#[tokio::test]
async fn below_min_free_bytes_cache_objects_go_and_a_full_keep_bucket_stops_copies() {
    const TEST: &str = "below_min_free_bytes_cache_objects_go_and_a_full_keep_bucket_stops_copies";
    const SIZE: usize = 256 * 1024;
    const MIN_FREE: u64 = 2 * 1024 * 1024;
    let origin = TestOrigin::start();
    for i in 0..40 {
        origin.route(
            &format!("/{}", name(i)),
            Behavior::ok(body_of(&name(i), SIZE)),
        );
    }
    let mut server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket_yaml(&cache_bucket(&origin, ""))
            .with_bucket_yaml(&keep_bucket(&origin))
            .with_extra_yaml(&format!(
                "store:\n  min_free_bytes: {MIN_FREE}\nmemory_cache:\n  max_bytes: 0\nfill:\n  negative_ttl_secs: 0\n"
            )),
    );
    server.kill9();
    let Some(_tmpfs) = Tmpfs::mount(server.data_dir(), 6 * 1024, TEST) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root, where a tmpfs can be mounted"
        );
        return;
    };
    server.restart();
    let free = |server: &Originpull| {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(server.data_dir())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|line| line.trim().parse::<u64>().ok())
            .unwrap()
    };
    // 16 objects of 256 KiB in a 6 MiB file system that must keep 2 MiB free.
    for i in 0..16 {
        copy_in(&server, CACHE, &name(i)).await;
        hit(&server, CACHE, &name(0)).await;
    }
    let evicted = wait_until(WAIT, || async {
        server
            .metric("originpull_evictions_total", &[("bucket", CACHE)])
            .await
            > 0.0
    })
    .await;
    assert!(evicted, "nothing evicted; {} bytes free", free(&server));
    assert!(
        wait_until(WAIT, || async { free(&server) >= MIN_FREE }).await,
        "{} bytes free",
        free(&server)
    );
    assert!(
        stored(&server, CACHE, &name(0)),
        "the object served all along was evicted"
    );
    assert!(
        stored(&server, CACHE, &name(15)),
        "the newest object was evicted"
    );
    assert!(
        !stored(&server, CACHE, &name(1)),
        "the oldest unserved object is still there"
    );

    // A keep bucket fills the rest: cache objects go first, then copies are not started.
    let mut refused = false;
    for i in 16..40 {
        let _ = get(&server, KEEP, &format!("/{}", name(i))).await;
        refused = wait_until(Duration::from_secs(5), || async {
            stored(&server, KEEP, &name(i))
                || server
                    .metric(
                        "originpull_fills_total",
                        &[("bucket", KEEP), ("outcome", "no_room")],
                    )
                    .await
                    > 0.0
        })
        .await
            && !stored(&server, KEEP, &name(i));
        if refused {
            break;
        }
    }
    assert!(refused, "the keep bucket never ran out of room");
    assert!(
        (0..16).all(|i| !stored(&server, CACHE, &name(i))),
        "cache objects left"
    );
    assert_eq!(server.metric("originpull_store_over_limit", &[]).await, 1.0);
    assert!(
        server
            .wait_for_stderr("holds nothing more that may be evicted", WAIT)
            .await
    );
    // Nothing of the keep bucket was evicted.
    let kept = (16..40)
        .filter(|i| stored(&server, KEEP, &name(*i)))
        .count();
    assert!(kept > 0);
    assert_eq!(
        server
            .metric("originpull_evictions_total", &[("bucket", KEEP)])
            .await,
        0.0
    );
}

#[test]
fn the_check_refuses_a_cache_bucket_that_does_not_pull_from_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("originpull.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:{}\ndata_dir: ./data\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - name: {CACHE}\n    retention: cache\n",
            free_port()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_originpull"))
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "bucket \"{CACHE}\": retention: `cache` needs origin pull"
        )),
        "{text}"
    );
}
