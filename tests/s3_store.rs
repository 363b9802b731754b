//! Issue #12 end to end: buckets kept in an S3-compatible store (moto's server on loopback,
//! started by `tests/s3_server.py`), read and written by the real binary; objects put and
//! deleted by another S3 client (boto3); copies landing with their headers; multipart uploads
//! completed or aborted, also when the copying process was killed (aborted at its next start);
//! mirror clients of a node that waits for another node's copy; leases judged by the store's
//! clock (moto's clock set apart from this machine's); the local tier's eviction, and its copies
//! served after a restart without asking the store; the start-up reachability check.
//!
//! moto is installed by `.ci/setup` into a venv (`ORIGINPULL_MOTO_VENV`, by default
//! `~/.local/share/originpull/moto-venv`). Only when that venv's python is missing are these
//! tests skipped, with a message saying so; a moto that is there but fails is a failure.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BUCKET: &str = "example-1250000000";
const WAIT: Duration = Duration::from_secs(20);
/// The S3 store's part size (`src/store/s3.rs`): larger objects are multipart uploads.
const PART_BYTES: usize = 8 * 1024 * 1024;

/// moto's S3 server on a free loopback port, and boto3 as "any other S3 client".
struct S3Server {
    child: Option<KillOnDrop>,
    port: u16,
    endpoint: String,
    python: PathBuf,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// `None` (after saying why) when moto is not installed.
    fn start() -> Option<S3Server> {
        let venv = std::env::var_os("ORIGINPULL_MOTO_VENV")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".local/share/originpull/moto-venv"))
            })?;
        let python = venv.join("bin/python");
        if !python.exists() {
            eprintln!(
                "SKIPPED: moto is not installed ({} missing); run .ci/setup to install it",
                python.display()
            );
            return None;
        }
        let (child, port) = spawn_moto(&python, 0);
        let dir = tempfile::Builder::new()
            .prefix("originpull-s3-")
            .tempdir()
            .expect("temp dir");
        std::fs::write(
            dir.path().join("s3.credentials"),
            "[default]\naws_access_key_id = testing\naws_secret_access_key = testing-secret\n",
        )
        .expect("write credentials");
        let server = S3Server {
            child: Some(child),
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            python,
            dir,
        };
        server.client(&["mb", BUCKET]);
        Some(server)
    }

    /// Stops the server (its objects are lost with it).
    fn stop(&mut self) {
        self.child = None;
    }

    /// Starts an empty server on the same port again.
    fn restart(&mut self) {
        let (child, _) = spawn_moto(&self.python, self.port);
        self.child = Some(child);
    }

    /// Runs one boto3 operation (see `tests/s3_server.py`); returns its stdout.
    fn client(&self, args: &[&str]) -> String {
        let output = Command::new(&self.python)
            .arg(script())
            .arg(&self.endpoint)
            .args(args)
            .output()
            .expect("run tests/s3_server.py");
        assert!(
            output.status.success(),
            "s3_server.py {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn put(&self, key: &str, body: &[u8], content_type: &str) {
        let file = self.dir.path().join("upload");
        std::fs::write(&file, body).expect("write upload");
        self.client(&["put", BUCKET, key, &file.to_string_lossy(), content_type]);
    }

    fn head(&self, key: &str) -> serde_json::Value {
        serde_json::from_str(&self.client(&["head", BUCKET, key])).expect("head JSON")
    }

    fn upload_keys(&self) -> Vec<String> {
        self.client(&["upload-keys", BUCKET])
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn keys(&self) -> Vec<String> {
        self.client(&["keys", BUCKET])
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn uploads_in_progress(&self) -> usize {
        self.client(&["uploads", BUCKET])
            .trim()
            .parse()
            .expect("upload count")
    }

    /// The `store:` block for this server.
    fn store_yaml(&self) -> String {
        format!(
            "store:\n  backend: s3\n  s3:\n    endpoint: {}\n    region: us-east-1\n    path_style: true\n    credentials_file: {}\n    bucket: \"{{bucket}}\"\n",
            self.endpoint,
            self.dir.path().join("s3.credentials").display()
        )
    }

    /// An originpull on this store; the memory tier rechecks after 1 s so deletes show quickly.
    fn originpull(&self, origin: &TestOrigin) -> Originpull {
        Originpull::start(
            OriginpullConfig::new()
                .with_bucket(BUCKET, &origin.authority())
                .with_extra_yaml(&self.store_yaml())
                .with_extra_yaml("memory_cache:\n  revalidate_secs: 1\n"),
        )
    }
}

/// Starts `tests/s3_server.py serve` on `port` (0: a free one); returns it and its port.
fn spawn_moto(python: &PathBuf, port: u16) -> (KillOnDrop, u16) {
    let mut child = Command::new(python)
        .arg(script())
        .arg("serve")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tests/s3_server.py");
    let stdout = child.stdout.take().expect("moto stdout");
    let child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read moto's port");
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("tests/s3_server.py did not print its port: {line:?}"));
    (child, port)
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/s3_server.py")
}

async fn head_status(server: &Originpull, path: &str) -> u16 {
    server
        .request(reqwest::Method::HEAD, BUCKET, path)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_object_put_by_another_s3_client_is_a_hit_and_a_delete_is_seen() {
    let Some(s3) = S3Server::start() else { return };
    let origin = TestOrigin::start();
    let server = s3.originpull(&origin);
    let body = generated_bytes(300_000);
    s3.put("dir/put-by-boto3.bin", &body, "application/x-test");

    let response = get(&server, BUCKET, "/dir/put-by-boto3.bin").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/x-test",
        "Content-Type set by the other client"
    );
    assert_eq!(
        response.headers()["etag"].to_str().unwrap(),
        format!("\"{}\"", md5_hex(&body)),
        "a single PUT's ETag is the MD5"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), &body[..]);

    let response = get_range(
        &server,
        BUCKET,
        "/dir/put-by-boto3.bin",
        "bytes=100000-100009",
    )
    .await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        &body[100_000..100_010]
    );
    assert_eq!(origin.total_hits(), 0, "hits never reach the origin");
    assert!(
        server
            .metric(
                "originpull_store_request_seconds_count",
                &[("operation", "head")]
            )
            .await
            >= 1.0
    );

    s3.client(&["delete", BUCKET, "dir/put-by-boto3.bin"]);
    let gone = wait_until(WAIT, || async {
        head_status(&server, "/dir/put-by-boto3.bin").await != 200
    })
    .await;
    assert!(gone, "an object deleted in the store stops being served");
}

#[tokio::test]
async fn a_copy_lands_in_the_s3_bucket_with_its_headers() {
    let Some(s3) = S3Server::start() else { return };
    let origin = TestOrigin::start();
    origin.route(
        "/site.css",
        Behavior::ok_with_headers(
            "body { color: red }",
            &[
                ("Content-Type", "text/css"),
                ("Cache-Control", "max-age=600"),
            ],
        ),
    );
    let server = s3.originpull(&origin);
    assert_eq!(get(&server, BUCKET, "/site.css").await.status(), 302);
    assert!(
        wait_until(WAIT, || async {
            head_status(&server, "/site.css").await == 200
        })
        .await,
        "the copy is served from the store\n{}",
        server.stderr_text()
    );
    let head = s3.head("site.css");
    assert_eq!(head["ContentType"], "text/css", "{head}");
    assert_eq!(head["CacheControl"], "max-age=600", "{head}");
    assert_eq!(
        head["ETag"],
        format!("\"{}\"", md5_hex(b"body { color: red }")),
        "{head}"
    );
    let response = get(&server, BUCKET, "/site.css").await;
    assert_eq!(response.headers()["cache-control"], "max-age=600");
    assert_eq!(origin.hits("/site.css"), 1);
}

#[tokio::test]
async fn a_large_copy_is_a_multipart_upload_served_whole() {
    let Some(s3) = S3Server::start() else { return };
    let origin = TestOrigin::start();
    let len = 2 * PART_BYTES as u64 + 12_345;
    origin.route("/large.bin", Behavior::generated(len));
    let server = s3.originpull(&origin);
    assert_eq!(get(&server, BUCKET, "/large.bin").await.status(), 302);
    assert!(
        wait_until(WAIT, || async {
            head_status(&server, "/large.bin").await == 200
        })
        .await,
        "the copy is served from the store\n{}",
        server.stderr_text()
    );
    let head = s3.head("large.bin");
    let etag = head["ETag"].as_str().unwrap_or_default().to_string();
    assert!(etag.ends_with("-3\""), "three parts: {head}");
    let (status, body) = get_body(&server, BUCKET, "/large.bin").await;
    assert_eq!(status, 200);
    assert_eq!(body.len() as u64, len);
    assert_eq!(md5_hex(&body), md5_of_generated(len));
    let response = get(&server, BUCKET, "/large.bin").await;
    assert_eq!(
        response.headers()["etag"].to_str().unwrap(),
        etag,
        "the ETag is the store's"
    );
    assert_eq!(s3.uploads_in_progress(), 0);
}

#[tokio::test]
async fn a_copy_cut_short_leaves_no_object_and_no_upload() {
    let Some(s3) = S3Server::start() else { return };
    let origin = TestOrigin::start();
    let body = generated_bytes(3 * PART_BYTES);
    origin.route(
        "/cut.bin",
        Behavior::ResetMidBody {
            body,
            send_bytes: 2 * PART_BYTES + 1000,
        },
    );
    let server = s3.originpull(&origin);
    assert_eq!(get(&server, BUCKET, "/cut.bin").await.status(), 302);
    assert!(
        wait_until(WAIT, || async {
            server
                .metric(
                    "originpull_fills_total",
                    &[("bucket", BUCKET), ("outcome", "origin_error")],
                )
                .await
                >= 1.0
        })
        .await,
        "the copy fails\n{}",
        server.stderr_text()
    );
    let aborted = wait_until(WAIT, || async { s3.uploads_in_progress() == 0 }).await;
    assert!(aborted, "the multipart upload is aborted");
    assert!(s3.keys().is_empty(), "no object: {:?}", s3.keys());
    assert_eq!(head_status(&server, "/cut.bin").await, 302);
}

/// The upload journal's entries (`.s3-uploads/` in the data dir without a local tier).
fn journal_entries(server: &Originpull) -> Vec<PathBuf> {
    std::fs::read_dir(server.data_dir().join(".s3-uploads"))
        .map(|files| files.filter_map(|f| f.ok().map(|f| f.path())).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_upload_left_by_a_killed_process_is_aborted_at_the_next_start() {
    let Some(s3) = S3Server::start() else { return };
    let origin = TestOrigin::start();
    // 24 MiB at 256 KiB per 200 ms: the upload starts after ~7 s, the body ends after ~19 s.
    origin.route(
        "/slow.bin",
        Behavior::Slow {
            body: generated_bytes(3 * PART_BYTES),
            chunk: 256 * 1024,
            delay_ms: 200,
            headers: Vec::new(),
        },
    );
    let mut server = s3.originpull(&origin);
    assert_eq!(get(&server, BUCKET, "/slow.bin").await.status(), 302);
    let in_flight = wait_until(Duration::from_secs(40), || async {
        s3.uploads_in_progress() == 1 && journal_entries(&server).len() == 1
    })
    .await;
    assert!(
        in_flight,
        "the copy's upload is in progress and journaled
{}",
        server.stderr_text()
    );

    server.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s3.uploads_in_progress(), 1, "SIGKILL leaves the upload");
    assert_eq!(journal_entries(&server).len(), 1);

    server.restart();
    let aborted = wait_until(WAIT, || async { s3.uploads_in_progress() == 0 }).await;
    assert!(
        aborted,
        "the restarted node aborts the upload it left
{}",
        server.stderr_text()
    );
    assert_eq!(
        server
            .metric(
                "originpull_store_uploads_aborted_total",
                &[("reason", "earlier_run")]
            )
            .await,
        1.0,
        "aborted by its journal entry"
    );
    assert_eq!(
        server
            .metric(
                "originpull_store_uploads_aborted_total",
                &[("reason", "older_than_a_day")]
            )
            .await,
        0.0
    );
    assert!(
        server.stderr_text().contains(&format!(
            "aborted 1 multipart upload(s) in S3 bucket \"{BUCKET}\": 1 left by an earlier run"
        )),
        "{}",
        server.stderr_text()
    );
    assert!(journal_entries(&server).is_empty(), "the entry is removed");
    // No copy ran after the restart (no request asked for one): no object, only the dead
    // process's lease, which expires by itself.
    let keys = s3.keys();
    assert!(
        keys.iter().all(|k| k.starts_with(".originpull-leases/")),
        "no object: {keys:?}"
    );
    assert_eq!(origin.hits("/slow.bin"), 1);
}

/// moto dates every upload's `Initiated` in 2010, so any upload there is "older than a day".
#[tokio::test]
async fn uploads_older_than_a_day_under_the_prefix_are_aborted_at_start_and_no_others() {
    let Some(s3) = S3Server::start() else { return };
    s3.client(&["start-upload", BUCKET, "edge/abandoned.bin"]);
    s3.client(&["start-upload", BUCKET, "edge/abandoned.bin"]);
    s3.client(&["start-upload", BUCKET, "other/not-ours.bin"]);
    let origin = TestOrigin::start();
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_extra_yaml(&format!("{}    prefix: edge/\n", s3.store_yaml())),
    );
    let swept = wait_until(WAIT, || async {
        s3.upload_keys() == vec!["other/not-ours.bin".to_string()]
    })
    .await;
    assert!(
        swept,
        "left: {:?}\n{}",
        s3.upload_keys(),
        server.stderr_text()
    );
    assert_eq!(
        server
            .metric(
                "originpull_store_uploads_aborted_total",
                &[("reason", "older_than_a_day")]
            )
            .await,
        2.0
    );
    assert!(
        server.stderr_text().contains(&format!(
            "aborted 2 multipart upload(s) in S3 bucket \"{BUCKET}\": 0 left by an earlier run \
             of this node, 2 older than a day"
        )),
        "{}",
        server.stderr_text()
    );
}

#[tokio::test]
async fn start_names_the_s3_bucket_that_is_not_reachable() {
    let Some(s3) = S3Server::start() else { return };
    let origin = TestOrigin::start();
    let config = OriginpullConfig::new()
        .with_bucket(BUCKET, &origin.authority())
        .with_disabled_bucket("missing-1250000000")
        .with_extra_yaml(&s3.store_yaml());
    let yaml = config.render(
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        &std::env::temp_dir(),
    );
    let (code, text) = run_to_exit(&yaml, &[], Duration::from_secs(60))
        .expect("originpull exits when a bucket is not reachable");
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("bucket \"missing-1250000000\"") && text.contains("not reachable"),
        "{text}"
    );
    assert!(!text.contains(&format!("\"{BUCKET}\"")), "{text}");
    assert!(
        !text.contains("testing-secret"),
        "no secret in the output: {text}"
    );
}

#[test]
fn check_mode_reports_a_bad_store_block_by_field() {
    let config = OriginpullConfig::new()
        .with_disabled_bucket(BUCKET)
        .with_extra_yaml("store:\n  backend: s3\n  s3:\n    endpoint: ftp://x\n    region: r\n");
    let yaml = config.render(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        &std::env::temp_dir(),
    );
    let (code, text) = validate_config(&yaml);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("store.s3.endpoint"), "{text}");
}

#[tokio::test]
async fn two_nodes_on_one_bucket_fetch_a_cold_key_from_the_origin_once() {
    let Some(s3) = S3Server::start() else { return };
    let origin = TestOrigin::start();
    let body = generated_bytes(100_000);
    origin.route("/cold.bin", Behavior::gate(body.clone()));
    let first = s3.originpull(&origin);
    let second = s3.originpull(&origin);

    // The first node's copy holds the lease while the origin keeps its answer back.
    assert_eq!(get(&first, BUCKET, "/cold.bin").await.status(), 302);
    assert!(
        wait_until(WAIT, || async { origin.gate_waiting("/cold.bin") == 1 }).await,
        "the first copy reaches the origin\n{}",
        first.stderr_text()
    );
    let misses = (0..100).map(|i| {
        let node = if i % 2 == 0 { &first } else { &second };
        async move { get(node, BUCKET, "/cold.bin").await.status().as_u16() }
    });
    let statuses = futures::future::join_all(misses).await;
    assert!(statuses.iter().all(|&s| s == 302), "{statuses:?}");
    // The second node's copy either waits for the lease or (without one) asks the origin.
    let second_decided = wait_until(WAIT, || async {
        second.stderr_text().contains("another node is fetching it")
            || origin.gate_waiting("/cold.bin") > 1
    })
    .await;
    assert!(second_decided, "{}", second.stderr_text());
    origin.open_gate("/cold.bin");

    for node in [&first, &second] {
        assert!(
            wait_until(WAIT, || async {
                head_status(node, "/cold.bin").await == 200
            })
            .await,
            "served by both nodes\n{}",
            node.stderr_text()
        );
        let (status, served) = get_body(node, BUCKET, "/cold.bin").await;
        assert_eq!(status, 200);
        assert_eq!(served, body);
    }
    assert_eq!(
        origin.hits("/cold.bin"),
        1,
        "one origin fetch across the fleet"
    );
    assert_eq!(
        second
            .metric(
                "originpull_fills_total",
                &[("bucket", BUCKET), ("outcome", "stored_elsewhere")],
            )
            .await,
        1.0
    );
    let released = wait_until(WAIT, || async {
        s3.keys()
            .iter()
            .all(|k| !k.starts_with(".originpull-leases/"))
    })
    .await;
    assert!(released, "the lease is released: {:?}", s3.keys());
}

/// A lease another node wrote a moment ago by the store's clock, which runs 120 s behind this
/// node's: by this node's clock it looks 120 s old, past the 60 s expiry, but it is live.
#[tokio::test]
async fn a_lease_live_by_the_store_clock_is_not_taken_over_whatever_this_node_clock_says() {
    let Some(s3) = S3Server::start() else { return };
    let origin = TestOrigin::start();
    origin.route("/live.bin", Behavior::ok(generated_bytes(1000)));
    s3.client(&["clock", "-120"]);
    s3.put(".originpull-leases/live.bin", b"lease", "text/plain");
    let server = s3.originpull(&origin);

    assert_eq!(get(&server, BUCKET, "/live.bin").await.status(), 302);
    assert!(
        server
            .wait_for_stderr("another node is fetching it", WAIT)
            .await,
        "the copy waits for the lease's holder\n{}",
        server.stderr_text()
    );
    assert!(
        !server.stderr_text().contains("took over"),
        "{}",
        server.stderr_text()
    );
    assert_eq!(origin.hits("/live.bin"), 0, "the origin is not asked");
}

/// A lease the store dates 120 s back by its own clock, which runs 120 s ahead of this node's:
/// by this node's clock it was written just now, but its holder is gone; it is taken over.
#[tokio::test]
async fn a_lease_expired_by_the_store_clock_is_taken_over_whatever_this_node_clock_says() {
    let Some(s3) = S3Server::start() else { return };
    let origin = TestOrigin::start();
    let body = generated_bytes(1000);
    origin.route("/expired.bin", Behavior::ok(body.clone()));
    s3.put(".originpull-leases/expired.bin", b"lease", "text/plain");
    s3.client(&["clock", "120"]);
    let server = s3.originpull(&origin);

    assert_eq!(get(&server, BUCKET, "/expired.bin").await.status(), 302);
    assert!(
        wait_until(WAIT, || async {
            head_status(&server, "/expired.bin").await == 200
        })
        .await,
        "the copy takes the lease over and lands\n{}",
        server.stderr_text()
    );
    assert!(
        server.stderr_text().contains("took over the expired lease"),
        "{}",
        server.stderr_text()
    );
    assert_eq!(get_body(&server, BUCKET, "/expired.bin").await, (200, body));
    assert_eq!(origin.hits("/expired.bin"), 1);
}

#[tokio::test]
async fn a_mirror_client_of_another_node_is_served_once_the_object_lands() {
    let Some(s3) = S3Server::start() else { return };
    let origin = TestOrigin::start();
    let body = generated_bytes(300_000);
    origin.route("/mirrored.bin", Behavior::gate(body.clone()));
    let mirror_node = || {
        Originpull::start(
            OriginpullConfig::new()
                .with_bucket_yaml(&format!(
                    "name: {BUCKET}\norigin_pull:\n  enabled: true\n  mode: mirror\n  origin: '{}'\n",
                    origin.authority()
                ))
                .with_extra_yaml(&s3.store_yaml()),
        )
    };
    let (first, second) = (mirror_node(), mirror_node());

    // The first node's client waits on the origin (held back); the second node's client asks
    // while the first node holds the lease; then the origin answers.
    let first_client = get_body(&first, BUCKET, "/mirrored.bin");
    let second_client = async {
        assert!(
            wait_until(WAIT, || async { origin.gate_waiting("/mirrored.bin") == 1 }).await,
            "the first node's copy reaches the origin\n{}",
            first.stderr_text()
        );
        get_body(&second, BUCKET, "/mirrored.bin").await
    };
    let release = async {
        assert!(
            second
                .wait_for_stderr("another node is fetching it", WAIT)
                .await,
            "the second node waits for the first one's copy\n{}",
            second.stderr_text()
        );
        origin.open_gate("/mirrored.bin");
    };
    let (first_answer, second_answer, ()) = tokio::join!(first_client, second_client, release);

    assert_eq!(first_answer.0, 200);
    assert!(
        first_answer.1 == body,
        "the first client gets the whole body"
    );
    assert_eq!(second_answer.0, 200, "{}", second.stderr_text());
    assert!(
        second_answer.1 == body,
        "the second client gets the whole body"
    );
    assert_eq!(origin.hits("/mirrored.bin"), 1, "one origin GET");
    assert_eq!(
        second
            .metric(
                "originpull_fills_total",
                &[("bucket", BUCKET), ("outcome", "stored_elsewhere")],
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_stopped_store_gives_302s_and_503s_and_service_returns_by_itself() {
    let Some(mut s3) = S3Server::start() else {
        return;
    };
    const CLOSED: &str = "closed-1250000000";
    s3.client(&["mb", CLOSED]);
    let origin = TestOrigin::start();
    origin.route("/a.txt", Behavior::ok("from the origin"));
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_disabled_bucket(CLOSED)
            .with_extra_yaml(&s3.store_yaml()),
    );
    s3.stop();

    let response = get(&server, BUCKET, "/a.txt").await;
    assert_eq!(
        response.status(),
        302,
        "origin-pull stands in for the store"
    );
    assert!(
        wait_until(WAIT, || async {
            server
                .metric(
                    "originpull_fills_total",
                    &[("bucket", BUCKET), ("outcome", "store_error")],
                )
                .await
                >= 1.0
        })
        .await,
        "the copy counts store_error\n{}",
        server.stderr_text()
    );
    let response = get(&server, CLOSED, "/a.txt").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let text = response.text().await.unwrap();
    assert!(text.contains("<Code>ServiceUnavailable</Code>"), "{text}");
    assert!(!text.contains("testing-secret"), "{text}");
    assert!(
        server
            .metric("originpull_store_errors_total", &[("operation", "head")])
            .await
            >= 1.0
    );

    s3.restart();
    s3.client(&["mb", BUCKET]);
    s3.client(&["mb", CLOSED]);
    let file = s3.dir.path().join("upload");
    std::fs::write(&file, b"back").unwrap();
    s3.client(&[
        "put",
        CLOSED,
        "a.txt",
        &file.to_string_lossy(),
        "text/plain",
    ]);
    let back = wait_until(WAIT, || async {
        get_body(&server, CLOSED, "/a.txt").await == (200, b"back".to_vec())
    })
    .await;
    assert!(
        back,
        "service returns with the store\n{}",
        server.stderr_text()
    );
}

/// An originpull with a local tier of `max_bytes` and the memory tier off.
fn with_local_tier(
    s3: &S3Server,
    origin: &TestOrigin,
    max_bytes: u64,
    revalidate_secs: u64,
) -> Originpull {
    Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_extra_yaml(&format!(
                "{}  local_tier:\n    dir: {}\n    max_bytes: {max_bytes}\n    revalidate_secs: {revalidate_secs}\n",
                s3.store_yaml(),
                s3.dir.path().join("local").display()
            ))
            .with_extra_yaml("memory_cache:\n  max_bytes: 0\n"),
    )
}

async fn wait_local_bytes(server: &Originpull, bytes: f64) -> bool {
    wait_until(WAIT, || async {
        server.metric("originpull_local_tier_bytes", &[]).await == bytes
    })
    .await
}

/// Puts `a.bin`, `b.bin` and `c.bin`, 100,000 distinct bytes each, into the store; returns
/// their bodies in that order.
fn put_three_objects(s3: &S3Server) -> Vec<Vec<u8>> {
    let bodies: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            let mut body = generated_bytes(100_000);
            body[0] = i;
            body
        })
        .collect();
    for (name, body) in ["a.bin", "b.bin", "c.bin"].iter().zip(&bodies) {
        s3.put(name, body, "application/octet-stream");
    }
    bodies
}

#[tokio::test]
async fn the_local_tier_evicts_past_max_bytes_and_serves_while_the_store_is_down() {
    let Some(mut s3) = S3Server::start() else {
        return;
    };
    let origin = TestOrigin::start();
    let server = with_local_tier(&s3, &origin, 250_000, 30);
    let bodies = put_three_objects(&s3);
    assert_eq!(
        get_body(&server, BUCKET, "/a.bin").await,
        (200, bodies[0].clone())
    );
    assert!(wait_local_bytes(&server, 100_000.0).await, "a.bin copied");
    assert_eq!(
        get_body(&server, BUCKET, "/a.bin").await,
        (200, bodies[0].clone())
    );
    assert!(server.metric("originpull_local_tier_hits_total", &[]).await >= 1.0);
    assert_eq!(
        get_body(&server, BUCKET, "/b.bin").await,
        (200, bodies[1].clone())
    );
    assert!(wait_local_bytes(&server, 200_000.0).await, "b.bin copied");
    assert_eq!(
        get_body(&server, BUCKET, "/c.bin").await,
        (200, bodies[2].clone())
    );
    assert!(
        wait_local_bytes(&server, 200_000.0).await,
        "c.bin copied, a.bin evicted"
    );
    assert!(
        wait_until(WAIT, || async {
            server
                .metric("originpull_local_tier_evictions_total", &[])
                .await
                >= 1.0
        })
        .await
    );

    s3.stop();
    assert_eq!(
        get_body(&server, BUCKET, "/c.bin").await,
        (200, bodies[2].clone()),
        "a copy in the local tier is served while the store is down"
    );
    assert_eq!(
        get(&server, BUCKET, "/a.bin").await.status(),
        302,
        "an evicted object is redirected to the origin"
    );
}

#[tokio::test]
async fn an_object_deleted_in_the_store_leaves_the_local_tier_within_revalidate_secs() {
    let Some(s3) = S3Server::start() else { return };
    let origin = TestOrigin::start();
    let server = with_local_tier(&s3, &origin, 10_000_000, 1);
    s3.put(
        "d.bin",
        &generated_bytes(50_000),
        "application/octet-stream",
    );
    assert_eq!(get(&server, BUCKET, "/d.bin").await.status(), 200);
    assert!(wait_local_bytes(&server, 50_000.0).await, "d.bin copied");
    s3.client(&["delete", BUCKET, "d.bin"]);
    let gone = wait_until(WAIT, || async {
        head_status(&server, "/d.bin").await != 200
    })
    .await;
    assert!(gone, "the copy is dropped once revalidated");
    assert!(wait_local_bytes(&server, 0.0).await);
}

/// Store requests of `operation` this process has made.
async fn store_requests(server: &Originpull, operation: &str) -> f64 {
    server
        .metric(
            "originpull_store_request_seconds_count",
            &[("operation", operation)],
        )
        .await
}

#[tokio::test]
async fn the_local_tier_survives_a_restart_and_still_evicts_past_max_bytes() {
    let Some(mut s3) = S3Server::start() else {
        return;
    };
    let origin = TestOrigin::start();
    // Copies are not due for revalidation during the test: a hit asks the store nothing.
    let mut server = with_local_tier(&s3, &origin, 250_000, 3600);
    let bodies = put_three_objects(&s3);
    assert_eq!(get(&server, BUCKET, "/a.bin").await.status(), 200);
    assert!(wait_local_bytes(&server, 100_000.0).await, "a.bin copied");
    assert_eq!(get(&server, BUCKET, "/b.bin").await.status(), 200);
    assert!(wait_local_bytes(&server, 200_000.0).await, "b.bin copied");

    server.restart();
    assert!(
        wait_local_bytes(&server, 200_000.0).await,
        "both copies are indexed again\n{}",
        server.stderr_text()
    );
    assert_eq!(
        get_body(&server, BUCKET, "/a.bin").await,
        (200, bodies[0].clone())
    );
    assert_eq!(
        server.metric("originpull_local_tier_hits_total", &[]).await,
        1.0,
        "served from the local tier"
    );
    assert_eq!(
        store_requests(&server, "get").await,
        0.0,
        "no GET to the store"
    );
    assert_eq!(store_requests(&server, "head").await, 0.0, "no HEAD either");

    // c.bin pushes the tier past max_bytes: b.bin, used least recently, is evicted.
    assert_eq!(
        get_body(&server, BUCKET, "/c.bin").await,
        (200, bodies[2].clone())
    );
    assert!(
        wait_until(WAIT, || async {
            server
                .metric("originpull_local_tier_evictions_total", &[])
                .await
                == 1.0
        })
        .await,
        "one copy evicted\n{}",
        server.stderr_text()
    );
    assert!(wait_local_bytes(&server, 200_000.0).await);
    s3.stop();
    assert_eq!(
        get_body(&server, BUCKET, "/a.bin").await,
        (200, bodies[0].clone()),
        "a.bin is still in the local tier"
    );
    assert_eq!(
        get_body(&server, BUCKET, "/c.bin").await,
        (200, bodies[2].clone()),
        "c.bin is in the local tier"
    );
    assert_eq!(
        get(&server, BUCKET, "/b.bin").await.status(),
        302,
        "b.bin was evicted"
    );
}
