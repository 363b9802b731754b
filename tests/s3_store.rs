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

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

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
        let python = setup_venv_python("ORIGINPULL_MOTO_VENV", "moto-venv", "moto")?;
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
        self.store_yaml_with(&self.endpoint, "")
    }

    /// The `store:` block for `endpoint` (this server, or a proxy in front of it), with more
    /// `store.s3` keys (`extra_s3`, lines indented by four spaces).
    fn store_yaml_with(&self, endpoint: &str, extra_s3: &str) -> String {
        format!(
            "store:\n  backend: s3\n  s3:\n    endpoint: {endpoint}\n    region: us-east-1\n    path_style: true\n    credentials_file: {}\n    bucket: \"{{bucket}}\"\n{extra_s3}",
            self.credentials_path().display()
        )
    }

    fn credentials_path(&self) -> PathBuf {
        self.dir.path().join("s3.credentials")
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server: stopped, it still accepts connections
    /// (the kernel does) and answers nothing, like a store behind a stuck load balancer.
    fn signal(&self, signal: &str) {
        send_signal(self.child.as_ref().expect("moto runs").0.id(), signal);
    }

    /// The access key ids signed requests named, in order (see `tests/s3_server.py`).
    fn access_keys(&self) -> Vec<String> {
        self.client(&["access-keys"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
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
    spawn_script(python, "s3_server.py", &["serve", &port.to_string()])
}

/// Starts `tests/<script>` with `args`; returns it and the port it prints as `PORT <n>` once
/// it listens.
fn spawn_script(python: &PathBuf, script: &str, args: &[&str]) -> (KillOnDrop, u16) {
    let mut child = Command::new(python)
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(script),
        )
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start tests/{script}: {e}"));
    let stdout = child.stdout.take().expect("the script's stdout");
    let child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the script's port");
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("tests/{script} did not print its port: {line:?}"));
    (child, port)
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/s3_server.py")
}

/// `tests/s3_proxy.py` in front of `s3`: a store that fails, ignores conditional writes,
/// refuses overwrites as COS does, or speaks TLS (see the script).
struct S3Proxy {
    _child: KillOnDrop,
    endpoint: String,
}

impl S3Proxy {
    fn start(s3: &S3Server, mode: &str) -> S3Proxy {
        S3Proxy::spawn(s3, &["--mode", mode], "http")
    }

    /// Over TLS with `cert`'s server certificate (signed by its private CA).
    fn start_tls(s3: &S3Server, cert: &TestCert) -> S3Proxy {
        let cert_path = s3.dir.path().join("proxy-cert.pem");
        let key_path = s3.dir.path().join("proxy-key.pem");
        std::fs::write(&cert_path, &cert.cert_pem).expect("write cert");
        std::fs::write(&key_path, &cert.key_pem).expect("write key");
        S3Proxy::spawn(
            s3,
            &[
                "--tls",
                &cert_path.to_string_lossy(),
                &key_path.to_string_lossy(),
            ],
            "https",
        )
    }

    fn spawn(s3: &S3Server, args: &[&str], scheme: &str) -> S3Proxy {
        let upstream = s3.port.to_string();
        let args: Vec<&str> = std::iter::once(upstream.as_str())
            .chain(args.iter().copied())
            .collect();
        let (child, port) = spawn_script(&s3.python, "s3_proxy.py", &args);
        S3Proxy {
            _child: child,
            endpoint: format!("{scheme}://127.0.0.1:{port}"),
        }
    }

    async fn set_mode(&self, mode: &str) {
        let response = http_client()
            .put(format!("{}/_proxy/mode", self.endpoint))
            .body(mode.to_string())
            .send()
            .await
            .expect("set the proxy's mode");
        assert_eq!(response.status(), 204, "mode {mode}");
    }
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

/// A node on `endpoint` (moto, or a proxy in front of it) with more `store.s3` keys.
fn node_on(s3: &S3Server, origin: &TestOrigin, endpoint: &str, extra_s3: &str) -> Originpull {
    Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_extra_yaml(&s3.store_yaml_with(endpoint, extra_s3)),
    )
}

/// The store deadline of these tests (`store.s3.request_timeout_ms`).
const DEADLINE: &str = "    request_timeout_ms: 1000\n";

/// Issue #20: a store that accepts connections and answers nothing (SIGSTOP, as behind a stuck
/// load balancer): a cold key gets its 302 and a bucket without origin-pull its 503 within
/// about the deadline; after repeated failures the store is marked down and requests skip it
/// at once; it is used again by itself once it answers.
#[tokio::test]
async fn a_hung_store_answers_within_the_deadline_then_is_skipped_until_it_answers() {
    let Some(s3) = S3Server::start() else { return };
    const CLOSED: &str = "closed-1250000000";
    s3.client(&["mb", CLOSED]);
    s3.put("stored.txt", b"kept", "text/plain");
    let file = s3.dir.path().join("upload");
    s3.client(&[
        "put",
        CLOSED,
        "closed.txt",
        &file.to_string_lossy(),
        "text/plain",
    ]);
    let origin = TestOrigin::start();
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_disabled_bucket(CLOSED)
            .with_extra_yaml(&s3.store_yaml_with(&s3.endpoint, DEADLINE)),
    );
    let timed_get = |bucket: &'static str, path: &'static str| {
        let server = &server;
        async move {
            let started = std::time::Instant::now();
            let status = get(server, bucket, path).await.status().as_u16();
            (status, started.elapsed())
        }
    };
    s3.signal("STOP");

    let (status, took) = timed_get(BUCKET, "/cold.bin").await;
    assert_eq!(status, 302, "origin-pull stands in for the store");
    assert!(took < Duration::from_millis(2500), "302 after {took:?}");
    let (status, took) = timed_get(CLOSED, "/cold.bin").await;
    assert_eq!(status, 503);
    assert!(took < Duration::from_millis(2500), "503 after {took:?}");
    let marked_down = wait_until(WAIT, || async {
        server.metric("originpull_store_up", &[]).await == 0.0
    })
    .await;
    assert!(marked_down, "{}", server.stderr_text());
    let (status, took) = timed_get(BUCKET, "/other.bin").await;
    assert_eq!(status, 302);
    assert!(
        took < Duration::from_millis(500),
        "skipped at once: {took:?}"
    );
    assert!(
        server
            .metric("originpull_store_skipped_total", &[("operation", "head")])
            .await
            >= 1.0
    );
    // A stored key asked for meanwhile is redirected too; its copy cannot claim the key in the
    // store, asks nothing of the origin, and is not remembered as failed.
    let (status, _) = timed_get(BUCKET, "/stored.txt").await;
    assert_eq!(status, 302);

    // Back: asked through the bucket without origin-pull, then the stored key is a hit at once
    // (not redirected for `fill.negative_ttl_secs` after the outage).
    s3.signal("CONT");
    let back = wait_until(WAIT, || async {
        get_body(&server, CLOSED, "/closed.txt").await == (200, b"kept".to_vec())
    })
    .await;
    assert!(back, "used again by itself\n{}", server.stderr_text());
    assert_eq!(server.metric("originpull_store_up", &[]).await, 1.0);
    assert_eq!(
        get_body(&server, BUCKET, "/stored.txt").await,
        (200, b"kept".to_vec())
    );
    // Requests in flight when the store stopped may straddle its return: a change can come
    // twice, but each is one line.
    let log = server.stderr_text();
    let (down, up) = (
        log.matches("S3 store: marked down after").count(),
        log.matches("answering again").count(),
    );
    assert!(down >= 1 && down == up, "one line per change\n{log}");
}

/// Issue #20: the lease's release fails while the store fails (503 from a proxy in front of
/// it); it is tried again and lands once the store answers, not after the lease's 60 s.
#[tokio::test]
async fn a_lease_whose_release_failed_in_a_blip_is_released_when_the_store_answers() {
    let Some(s3) = S3Server::start() else { return };
    let proxy = S3Proxy::start(&s3, "pass");
    let origin = TestOrigin::start();
    origin.route("/held.bin", Behavior::gate(generated_bytes(1000)));
    let server = node_on(&s3, &origin, &proxy.endpoint, DEADLINE);
    assert_eq!(get(&server, BUCKET, "/held.bin").await.status(), 302);
    assert!(
        wait_until(WAIT, || async { origin.gate_waiting("/held.bin") == 1 }).await,
        "{}",
        server.stderr_text()
    );
    let lease = ".originpull-leases/held.bin".to_string();
    assert!(s3.keys().contains(&lease), "{:?}", s3.keys());

    proxy.set_mode("fail").await;
    origin.open_gate("/held.bin");
    assert!(
        server.wait_fill_outcome(BUCKET, "store_error", 1.0).await,
        "{}",
        server.stderr_text()
    );
    assert!(
        server.wait_for_stderr("releasing the lease", WAIT).await,
        "{}",
        server.stderr_text()
    );
    assert!(s3.keys().contains(&lease), "not released during the outage");
    proxy.set_mode("pass").await;
    let released = wait_until(WAIT, || async { !s3.keys().contains(&lease) }).await;
    assert!(
        released,
        "released once the store answers: {:?}\n{}",
        s3.keys(),
        server.stderr_text()
    );
}

/// Issue #20: the abort of a failed copy's multipart upload fails while the store fails; it is
/// tried again in the background and the upload and its journal entry go once it answers.
#[tokio::test]
async fn an_abort_that_failed_in_a_blip_is_retried_in_the_background() {
    let Some(s3) = S3Server::start() else { return };
    let proxy = S3Proxy::start(&s3, "pass");
    let origin = TestOrigin::start();
    // More than a part, then silence: the copy starts its upload, then times out.
    origin.route(
        "/stalled.bin",
        Behavior::Stall {
            headers_then_stall: true,
            partial: generated_bytes(PART_BYTES + 64 * 1024),
        },
    );
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_extra_yaml(&s3.store_yaml_with(&proxy.endpoint, DEADLINE))
            .with_extra_yaml("fill:\n  read_timeout_ms: 3000\n"),
    );
    assert_eq!(get(&server, BUCKET, "/stalled.bin").await.status(), 302);
    let started = wait_until(WAIT, || async {
        s3.uploads_in_progress() == 1 && journal_entries(&server).len() == 1
    })
    .await;
    assert!(started, "{}", server.stderr_text());

    proxy.set_mode("fail").await;
    let abort_failed = wait_until(WAIT, || async {
        server
            .metric(
                "originpull_store_errors_total",
                &[("operation", "multipart_abort")],
            )
            .await
            >= 1.0
    })
    .await;
    assert!(abort_failed, "{}", server.stderr_text());
    assert_eq!(s3.uploads_in_progress(), 1, "left by the failed abort");
    assert_eq!(journal_entries(&server).len(), 1, "its entry is kept");

    proxy.set_mode("pass").await;
    let aborted = wait_until(WAIT, || async { s3.uploads_in_progress() == 0 }).await;
    assert!(
        aborted,
        "aborted in the background\n{}",
        server.stderr_text()
    );
    assert_eq!(
        server
            .metric(
                "originpull_store_uploads_aborted_total",
                &[("reason", "retried")]
            )
            .await,
        1.0
    );
    assert!(
        wait_until(WAIT, || async { journal_entries(&server).is_empty() }).await,
        "the entry goes with it"
    );
    // Nothing stored, and the copy's lease, whose release failed in the blip too, goes once
    // its own retry lands.
    let nothing_left = wait_until(WAIT, || async {
        s3.keys().iter().all(|k| !k.ends_with("stalled.bin"))
    })
    .await;
    assert!(nothing_left, "{:?}", s3.keys());
}

/// Issue #20: a part upload the store refuses counts in `originpull_store_errors_total`.
#[tokio::test]
async fn a_part_upload_that_fails_counts_as_a_store_error() {
    let Some(s3) = S3Server::start() else { return };
    let proxy = S3Proxy::start(&s3, "fail-parts");
    let origin = TestOrigin::start();
    origin.route(
        "/parts.bin",
        Behavior::generated(2 * PART_BYTES as u64 + 1000),
    );
    let server = node_on(&s3, &origin, &proxy.endpoint, DEADLINE);
    assert_eq!(get(&server, BUCKET, "/parts.bin").await.status(), 302);
    assert!(
        server.wait_fill_outcome(BUCKET, "store_error", 1.0).await,
        "{}",
        server.stderr_text()
    );
    assert!(
        server
            .metric(
                "originpull_store_errors_total",
                &[("operation", "multipart_part")]
            )
            .await
            >= 1.0,
        "{}",
        server.metrics_text().await
    );
    let aborted = wait_until(WAIT, || async { s3.uploads_in_progress() == 0 }).await;
    assert!(aborted, "no upload left\n{}", server.stderr_text());
}

/// Issue #20: with the journal unwritable (a full disk; here its directory replaced by a
/// file), a large copy starts no multipart upload a crash could leave behind unknown.
#[tokio::test]
async fn an_upload_that_cannot_be_journaled_is_not_started() {
    let Some(s3) = S3Server::start() else { return };
    let origin = TestOrigin::start();
    origin.route("/big.bin", Behavior::generated(PART_BYTES as u64 + 1000));
    let server = s3.originpull(&origin);
    let journal = server.data_dir().join(".s3-uploads");
    std::fs::remove_dir_all(&journal).expect("remove the journal");
    std::fs::write(&journal, b"not a directory").expect("block the journal");

    assert_eq!(get(&server, BUCKET, "/big.bin").await.status(), 302);
    assert!(
        server.wait_fill_outcome(BUCKET, "store_error", 1.0).await,
        "{}",
        server.stderr_text()
    );
    assert!(
        server
            .stderr_text()
            .contains("cannot journal the multipart upload"),
        "{}",
        server.stderr_text()
    );
    assert_eq!(
        server
            .metric("originpull_store_errors_total", &[("operation", "journal")])
            .await,
        1.0
    );
    assert_eq!(s3.uploads_in_progress(), 0, "the upload is aborted at once");
    assert!(s3.keys().iter().all(|k| k != "big.bin"), "{:?}", s3.keys());
}

/// Runs a node with `store_yaml` until it exits (it should not start); returns its code and
/// output.
fn start_to_exit(store_yaml: &str) -> (i32, String) {
    let yaml = OriginpullConfig::new()
        .with_disabled_bucket(BUCKET)
        .with_extra_yaml(store_yaml)
        .render(
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            &std::env::temp_dir(),
        );
    run_to_exit(&yaml, &[], Duration::from_secs(30)).expect("originpull exits at start")
}

/// Issue #20: a store that ignores conditional writes (a proxy that strips them) would let
/// every node fetch each cold key: the node refuses to start and says what to set; COS's
/// header on a store that ignores it is refused too; `none` starts, saying so once.
#[tokio::test]
async fn a_store_that_ignores_conditional_writes_stops_the_start_and_says_what_to_set() {
    let Some(s3) = S3Server::start() else { return };
    let proxy = S3Proxy::start(&s3, "strip-conditional");

    let (code, text) = start_to_exit(&s3.store_yaml_with(&proxy.endpoint, ""));
    assert_ne!(code, 0, "{text}");
    for needle in [
        "store.s3.conditional_put: if_none_match:",
        "accepted a second `If-None-Match: *` PUT",
        "conditional_put: cos_forbid_overwrite",
        "conditional_put: none",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    let (code, text) = start_to_exit(
        &s3.store_yaml_with(&s3.endpoint, "    conditional_put: cos_forbid_overwrite\n"),
    );
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("store.s3.conditional_put: cos_forbid_overwrite:"),
        "{text}"
    );
    assert!(
        s3.keys().is_empty(),
        "no probe object is left: {:?}",
        s3.keys()
    );

    let origin = TestOrigin::start();
    let server = node_on(&s3, &origin, &proxy.endpoint, "    conditional_put: none\n");
    assert!(
        server
            .stderr_text()
            .contains("conditional_put: none: fill leases are best effort"),
        "{}",
        server.stderr_text()
    );
}

/// Issue #20: Tencent COS refuses an overwrite with `x-cos-forbid-overwrite` (409), not
/// `If-None-Match` (here a proxy plays COS in front of moto): two nodes still fetch a cold key
/// once, and an expired lease is taken over through a takeover marker (COS has no `If-Match`
/// on PUT).
#[tokio::test]
async fn with_cos_forbid_overwrite_a_cold_key_is_fetched_once_and_a_lease_taken_over_once() {
    let Some(s3) = S3Server::start() else { return };
    let proxy = S3Proxy::start(&s3, "cos");
    let origin = TestOrigin::start();
    let body = generated_bytes(10_000);
    origin.route("/cold.bin", Behavior::gate(body.clone()));
    origin.route("/expired.bin", Behavior::ok(body.clone()));
    let cos = "    conditional_put: cos_forbid_overwrite\n";
    let first = node_on(&s3, &origin, &proxy.endpoint, cos);
    let second = node_on(&s3, &origin, &proxy.endpoint, cos);

    assert_eq!(get(&first, BUCKET, "/cold.bin").await.status(), 302);
    assert!(
        wait_until(WAIT, || async { origin.gate_waiting("/cold.bin") == 1 }).await,
        "{}",
        first.stderr_text()
    );
    assert_eq!(get(&second, BUCKET, "/cold.bin").await.status(), 302);
    assert!(
        second
            .wait_for_stderr("another node is fetching it", WAIT)
            .await,
        "{}",
        second.stderr_text()
    );
    origin.open_gate("/cold.bin");
    assert!(
        wait_until(WAIT, || async {
            head_status(&second, "/cold.bin").await == 200
        })
        .await,
        "{}",
        second.stderr_text()
    );
    assert_eq!(origin.hits("/cold.bin"), 1, "one origin fetch");

    // A lease the store dates 120 s back: its holder is gone.
    s3.put(".originpull-leases/expired.bin", b"lease", "text/plain");
    s3.client(&["clock", "120"]);
    assert_eq!(get(&first, BUCKET, "/expired.bin").await.status(), 302);
    assert!(
        wait_until(WAIT, || async {
            head_status(&first, "/expired.bin").await == 200
        })
        .await,
        "{}",
        first.stderr_text()
    );
    assert!(first.stderr_text().contains("took over the expired lease"));
    let marker = format!(".originpull-takeovers/{}/expired.bin", md5_hex(b"lease"));
    assert!(s3.keys().contains(&marker), "{:?}", s3.keys());
    assert_eq!(origin.hits("/expired.bin"), 1);
}

/// Issue #20: keys rotated into the credentials file are used without a restart (moto records
/// which access key each request was signed with).
#[tokio::test]
async fn a_rewritten_credentials_file_is_used_without_a_restart() {
    let Some(s3) = S3Server::start() else { return };
    s3.put("a.txt", b"a", "text/plain");
    s3.put("b.txt", b"b", "text/plain");
    let origin = TestOrigin::start();
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_extra_yaml(&s3.store_yaml())
            .with_extra_yaml("memory_cache:\n  max_bytes: 0\n"),
    );
    assert_eq!(
        get_body(&server, BUCKET, "/a.txt").await,
        (200, b"a".to_vec())
    );
    assert_eq!(s3.access_keys().last().map(String::as_str), Some("testing"));

    let seen_before = s3.access_keys().len();
    std::fs::write(
        s3.credentials_path(),
        "[default]\naws_access_key_id = rotated\naws_secret_access_key = rotated-secret\n",
    )
    .expect("rewrite the credentials");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get_body(&server, BUCKET, "/b.txt").await,
        (200, b"b".to_vec())
    );
    let since = s3.access_keys().split_off(seen_before);
    assert!(
        !since.is_empty() && since.iter().all(|k| k == "rotated"),
        "{since:?}"
    );
    let log = server.stderr_text();
    assert!(log.contains("changed; using its new keys"), "{log}");
    assert!(!log.contains("rotated-secret"), "{log}");
}

/// Issue #20: with no keys configured, the instance's role is asked for its temporary keys
/// (IMDSv2 on loopback, named by `AWS_EC2_METADATA_SERVICE_ENDPOINT`), and new keys are
/// fetched before the old ones expire.
#[tokio::test]
async fn keys_from_instance_metadata_are_used_and_fetched_again_before_they_expire() {
    let Some(s3) = S3Server::start() else { return };
    s3.put("a.txt", b"a", "text/plain");
    s3.put("b.txt", b"b", "text/plain");
    let imds = TestOrigin::start();
    let serve_keys = |key_id: &str| {
        // Five minutes and a second: object_store fetches again when less than five are left.
        let expiration = (chrono::Utc::now() + chrono::Duration::seconds(301))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        imds.route("/latest/api/token", Behavior::ok("imds-session-token"));
        imds.route(
            "/latest/meta-data/iam/security-credentials/",
            Behavior::ok("edge-role"),
        );
        imds.route(
            "/latest/meta-data/iam/security-credentials/edge-role",
            Behavior::ok(format!(
                r#"{{"Code":"Success","AccessKeyId":"{key_id}","SecretAccessKey":"s","Token":"t","Expiration":"{expiration}"}}"#
            )),
        );
    };
    serve_keys("imds-first");
    let mut config = OriginpullConfig::new()
        .with_bucket(BUCKET, &imds.authority())
        .with_extra_yaml(&format!(
            "store:\n  backend: s3\n  s3:\n    endpoint: {}\n    region: us-east-1\n    path_style: true\n",
            s3.endpoint
        ))
        .with_extra_yaml("memory_cache:\n  max_bytes: 0\n")
        .with_env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            &format!("http://{}", imds.authority()),
        )
        .with_env(
            "AWS_SHARED_CREDENTIALS_FILE",
            &s3.dir.path().join("absent").to_string_lossy(),
        );
    // Whatever the environment running the tests holds, these sources are not there.
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_EC2_METADATA_DISABLED",
    ] {
        config = config.with_env(name, "");
    }
    let server = Originpull::start(config);
    assert!(
        server
            .stderr_text()
            .contains("credentials from the instance's role"),
        "{}",
        server.stderr_text()
    );
    assert_eq!(
        get_body(&server, BUCKET, "/a.txt").await,
        (200, b"a".to_vec())
    );
    assert_eq!(
        s3.access_keys().last().map(String::as_str),
        Some("imds-first")
    );

    serve_keys("imds-second");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let seen_before = s3.access_keys().len();
    assert_eq!(
        get_body(&server, BUCKET, "/b.txt").await,
        (200, b"b".to_vec())
    );
    let since = s3.access_keys().split_off(seen_before);
    assert!(
        !since.is_empty() && since.iter().all(|k| k == "imds-second"),
        "{since:?}"
    );
}

/// Issue #20: a store whose certificate a private CA signed (a TLS proxy in front of moto) is
/// reached with `store.s3.ca_file`, and not without it.
#[tokio::test]
async fn a_store_behind_a_private_ca_is_reached_with_ca_file() {
    let Some(s3) = S3Server::start() else { return };
    s3.put("tls.txt", b"over tls", "text/plain");
    let cert = TestCert::new();
    let proxy = S3Proxy::start_tls(&s3, &cert);
    let ca = cert.write_ca(s3.dir.path(), "store-ca.pem");

    let (code, text) = start_to_exit(&s3.store_yaml_with(&proxy.endpoint, DEADLINE));
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("not reachable"), "{text}");

    let origin = TestOrigin::start();
    let server = node_on(
        &s3,
        &origin,
        &proxy.endpoint,
        &format!("    ca_file: {}\n", ca.display()),
    );
    assert_eq!(
        get_body(&server, BUCKET, "/tls.txt").await,
        (200, b"over tls".to_vec())
    );
}

/// Issue #22: with the S3 store, ACME keeps its account and certificates in the store and one
/// node orders a domain (the store's lease): two nodes make one order, and both serve the
/// certificate. pebble validates at node A's port; whichever node orders, A answers the token
/// (from the store when B ordered).
#[tokio::test]
async fn two_nodes_on_one_store_make_one_acme_order_and_both_serve_it() {
    use crate::common::pebble::{acme_orders, acme_yaml, Pebble};
    use crate::common::tls::{curl, https_yaml, served_serial, TestCa};
    const DOMAIN: &str = "static.fleet.test";
    let Some(s3) = S3Server::start() else {
        return;
    };
    let port_a = free_port();
    let Some(pebble) = Pebble::start(port_a, 3600) else {
        return;
    };
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    let default_cert = ca.issue(&["edge.example"]);
    let default = default_cert.write(certs.path(), "default");
    let origin = TestOrigin::start();
    origin.route("/a.txt", Behavior::ok("fleet"));
    let config = |https_port: u16| {
        OriginpullConfig::new()
            .with_bucket_yaml(&format!(
                "name: {BUCKET}\ndomains: [{DOMAIN}]\norigin_pull:\n  enabled: true\n  mode: mirror\n  origin: '{}'",
                origin.authority()
            ))
            .with_extra_yaml(&s3.store_yaml())
            .with_extra_yaml(&https_yaml(
                https_port,
                std::slice::from_ref(&default),
                &acme_yaml(&pebble, None),
            ))
    };
    let (https_a, https_b) = (free_port(), free_port());
    let a = Originpull::start_at(config(https_a), port_a);
    let b = Originpull::start(config(https_b));

    let wait = Duration::from_secs(60);
    let obtained = |port: u16| {
        let default = default_cert.serial.clone();
        async move { served_serial(port, Some(DOMAIN)).await != default }
    };
    assert!(
        wait_until(wait, || obtained(https_a)).await
            && wait_until(wait, || obtained(https_b)).await,
        "both nodes serve an ACME certificate\npebble:\n{}\nA:\n{}\nB:\n{}",
        pebble.log(),
        a.stderr_text(),
        b.stderr_text()
    );
    assert_eq!(
        served_serial(https_a, Some(DOMAIN)).await,
        served_serial(https_b, Some(DOMAIN)).await,
        "one certificate for the fleet"
    );
    let issued = acme_orders(&a, "issued").await + acme_orders(&b, "issued").await;
    assert_eq!(issued, 1.0, "one order for the fleet");
    assert_eq!(
        acme_orders(&a, "failed").await + acme_orders(&b, "failed").await,
        0.0
    );
    // Kept in the store, under the reserved prefix, never served as an object.
    let keys = s3.keys();
    assert!(
        keys.iter()
            .any(|k| k == &format!(".originpull-private/acme/{DOMAIN}.pem")),
        "{keys:?}"
    );
    let private = raw_get(
        b.addr(),
        &b.host(BUCKET),
        &format!("/.originpull-private/acme/{DOMAIN}.key"),
    )
    .await;
    assert!(!private.body_text().contains("PRIVATE KEY"));
    let root = pebble.issuing_root();
    let Some(answer) = curl(&root, DOMAIN, https_b, "/a.txt", true, &[]) else {
        return;
    };
    assert_eq!(answer.status, 200, "{answer:?}");
}
