//! Issue #11 end to end: the admin API (token, object metadata, purge, prefix purge, jobs,
//! progress), the bucket gauges, revalidation of stored objects, and the per-origin guardrails,
//! against the real binary and a real loopback origin.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

const BUCKET: &str = "example-1250000000";
const TOKEN: &str = "s3cr3t-admin-token";
const WAIT: Duration = Duration::from_secs(20);

/// A token file with mode 600 in `dir`.
fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("admin.token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The admin API of a running server.
struct Admin {
    base: String,
    client: reqwest::Client,
    _token_dir: tempfile::TempDir,
}

impl Admin {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .body(body.to_string());
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, Some(TOKEN), "").await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, Some(TOKEN), "")
            .await
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(TOKEN), body)
            .await
    }

    /// Polls a job until it is no longer running; returns its last view.
    async fn wait_job(&self, id: u64) -> Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (_, job) = self.get(&format!("/v1/jobs/{id}")).await;
            if job["state"] != "running" {
                return job;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job {id} still running: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn progress(&self) -> Value {
        self.get(&format!("/v1/buckets/{BUCKET}/progress")).await.1
    }
}

/// A server with `bucket_yaml` (or a plain bucket pulling from `origin`), extra top-level YAML,
/// and the admin API on a free port.
fn start(origin: &TestOrigin, bucket_yaml: Option<&str>, extra: &str) -> (Originpull, Admin) {
    let token_dir = tempfile::tempdir().unwrap();
    let token_path = token_file(token_dir.path(), TOKEN);
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let mut config = OriginpullConfig::new().with_extra_yaml(&format!(
        "admin_listen: {admin_addr}\nadmin_token_file: {}\n{extra}",
        token_path.display()
    ));
    config = match bucket_yaml {
        Some(yaml) => config.with_bucket_yaml(yaml),
        None => config.with_bucket(BUCKET, &origin.authority()),
    };
    let server = Originpull::start(config);
    let admin = Admin {
        base: format!("http://{admin_addr}"),
        client: http_client(),
        _token_dir: token_dir,
    };
    (server, admin)
}

async fn wait_admin_up(admin: &Admin) {
    let up = wait_until(WAIT, || async {
        admin
            .client
            .get(format!("{}/v1/buckets", admin.base))
            .send()
            .await
            .is_ok()
    })
    .await;
    assert!(up, "admin API never answered");
}

async fn head_status(server: &Originpull, path: &str) -> u16 {
    server
        .request(reqwest::Method::HEAD, BUCKET, path)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// GETs `path` (a miss starts its copy) and waits until it is stored.
async fn copy_in(server: &Originpull, path: &str) {
    let status = get(server, BUCKET, path).await.status().as_u16();
    assert!(status == 302 || status == 200, "GET {path}: {status}");
    assert!(
        wait_until(WAIT, || async { head_status(server, path).await == 200 }).await,
        "{path} never stored"
    );
}

/// Issue #19: the scheme of `Authorization` is case-insensitive (RFC 9110 §11.1), as curl
/// and HTTP libraries may send it; the token itself is compared exactly.
#[tokio::test]
async fn the_authorization_scheme_is_case_insensitive() {
    let origin = TestOrigin::start();
    let (_server, admin) = start(&origin, None, "");
    wait_admin_up(&admin).await;
    let status = |authorization: String| {
        let request = admin
            .client
            .get(format!("{}/v1/buckets", admin.base))
            .header("Authorization", authorization);
        async move {
            request
                .send()
                .await
                .expect("admin request")
                .status()
                .as_u16()
        }
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        assert_eq!(status(format!("{scheme} {TOKEN}")).await, 200, "{scheme}");
    }
    assert_eq!(
        status(format!("Bearer   {TOKEN}")).await,
        200,
        "several spaces"
    );
    for refused in [
        format!("Basic {TOKEN}"),
        format!("Bearer{TOKEN}"),
        format!("Bearer {}", TOKEN.to_uppercase()),
        format!("Bearer {TOKEN} extra"),
        "Bearer".to_string(),
        TOKEN.to_string(),
    ] {
        assert_eq!(status(refused.clone()).await, 401, "{refused:?}");
    }
}

#[tokio::test]
async fn without_the_right_token_every_request_is_401_and_nothing_is_done() {
    let origin = TestOrigin::start();
    origin.route("/a.txt", Behavior::ok("aaa"));
    origin.route("/b.txt", Behavior::ok("bbb"));
    let (server, admin) = start(&origin, None, "");
    wait_admin_up(&admin).await;
    copy_in(&server, "/a.txt").await;
    let hits_before = origin.total_hits();

    let delete = format!("/v1/buckets/{BUCKET}/objects/a.txt");
    let prefetch = format!("/v1/buckets/{BUCKET}/prefetch");
    let purge = format!("/v1/buckets/{BUCKET}/purge");
    for token in [None, Some("wrong"), Some(""), Some("s3cr3t-admin-tokenX")] {
        let (status, body) = admin
            .send(reqwest::Method::DELETE, &delete, token, "")
            .await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(body["error"]["code"], "Unauthorized");
        let (status, _) = admin
            .send(reqwest::Method::POST, &prefetch, token, "b.txt\n")
            .await;
        assert_eq!(status, 401);
        let (status, _) = admin
            .send(reqwest::Method::POST, &purge, token, r#"{"prefix": ""}"#)
            .await;
        assert_eq!(status, 401);
        let (status, _) = admin
            .send(reqwest::Method::GET, "/v1/buckets", token, "")
            .await;
        assert_eq!(status, 401);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(head_status(&server, "/a.txt").await, 200, "not purged");
    assert_eq!(origin.total_hits(), hits_before, "nothing prefetched");
    // The right token works, and the data plane does not answer admin paths.
    assert_eq!(admin.get("/v1/buckets").await.0, 200);
    let (status, _) = get_body(&server, BUCKET, "/v1/buckets").await;
    assert_ne!(status, 200);
}

#[tokio::test]
async fn object_metadata_then_purge_makes_the_next_request_a_miss_and_a_new_copy() {
    let origin = TestOrigin::start();
    origin.route(
        "/img/a%20b.jpg",
        Behavior::ok_with_headers(
            "first",
            &[
                ("Content-Type", "image/jpeg"),
                ("Cache-Control", "max-age=60"),
                ("ETag", "\"o1\""),
            ],
        ),
    );
    let (server, admin) = start(&origin, None, "");
    wait_admin_up(&admin).await;
    copy_in(&server, "/img/a%20b.jpg").await;

    let path = format!("/v1/buckets/{BUCKET}/objects/img/a%20b.jpg");
    let (status, meta) = admin.get(&path).await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["key"], "img/a b.jpg");
    assert_eq!(meta["size"], 5);
    assert_eq!(meta["etag"], format!("\"{}\"", md5_hex(b"first")));
    assert_eq!(meta["content_type"], "image/jpeg");
    assert_eq!(meta["headers"]["cache-control"], "max-age=60");
    assert_eq!(meta["origin_etag"], "\"o1\"");
    assert!(meta["stored_at"]
        .as_str()
        .is_some_and(|s| s.ends_with("GMT")));

    // Errors: unknown bucket 404, bad key 400 (the data plane's rules), absent key 404.
    assert_eq!(admin.get("/v1/buckets/nope-1/objects/x").await.0, 404);
    // Sent raw: an HTTP client library would remove the dot segment itself.
    let admin_addr = admin.base.trim_start_matches("http://").parse().unwrap();
    let request = format!(
        "GET /v1/buckets/{BUCKET}/objects/a/../b HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let response = raw_request(admin_addr, request.as_bytes()).await;
    assert_eq!(response.status, 400, "{}", response.body_text());
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"]["code"], "InvalidURI");
    assert_eq!(
        admin
            .get(&format!("/v1/buckets/{BUCKET}/objects/%ZZ"))
            .await
            .0,
        400
    );
    assert_eq!(
        admin
            .get(&format!("/v1/buckets/{BUCKET}/objects/missing"))
            .await
            .0,
        404
    );

    origin.route("/img/a%20b.jpg", Behavior::ok("second version"));
    assert_eq!(admin.delete(&path).await.0, 204);
    assert_eq!(admin.get(&path).await.0, 404);
    assert_eq!(admin.delete(&path).await.0, 404, "already purged");
    // The next request is a miss again: 302 and a new copy.
    assert_eq!(get(&server, BUCKET, "/img/a%20b.jpg").await.status(), 302);
    assert!(
        wait_until(WAIT, || async {
            get_body(&server, BUCKET, "/img/a%20b.jpg").await == (200, b"second version".to_vec())
        })
        .await
    );
    assert_eq!(origin.hits("/img/a%20b.jpg"), 2);
}

#[tokio::test]
async fn a_purge_clears_the_keys_negative_cache_entry() {
    let origin = TestOrigin::start();
    let (server, admin) = start(&origin, None, "fill:\n  negative_ttl_secs: 3600\n");
    wait_admin_up(&admin).await;
    // The origin does not have it yet: the copy fails and the key is negatively cached.
    assert_eq!(get(&server, BUCKET, "/late.txt").await.status(), 302);
    assert!(wait_until(WAIT, || async { origin.hits("/late.txt") == 1 }).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    origin.route("/late.txt", Behavior::ok("now here"));
    assert_eq!(get(&server, BUCKET, "/late.txt").await.status(), 302);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        origin.hits("/late.txt"),
        1,
        "negatively cached: not tried again"
    );
    let path = format!("/v1/buckets/{BUCKET}/objects/late.txt");
    assert_eq!(admin.delete(&path).await.0, 404, "nothing stored");
    assert_eq!(get(&server, BUCKET, "/late.txt").await.status(), 302);
    assert!(
        wait_until(WAIT, || async {
            head_status(&server, "/late.txt").await == 200
        })
        .await
    );
    assert_eq!(origin.hits("/late.txt"), 2);
}

#[tokio::test]
async fn a_prefix_purge_removes_exactly_the_objects_under_the_prefix() {
    let origin = TestOrigin::start();
    for path in [
        "/img/1.png",
        "/img/2.png",
        "/img/sub/3.png",
        "/imgx.png",
        "/css/a.css",
    ] {
        origin.route(path, Behavior::ok(path.as_bytes().to_vec()));
    }
    let (server, admin) = start(&origin, None, "");
    wait_admin_up(&admin).await;
    for path in [
        "/img/1.png",
        "/img/2.png",
        "/img/sub/3.png",
        "/imgx.png",
        "/css/a.css",
    ] {
        copy_in(&server, path).await;
    }
    let (status, job) = admin
        .post(
            &format!("/v1/buckets/{BUCKET}/purge"),
            r#"{"prefix": "img/"}"#,
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["kind"], "purge");
    let job = admin.wait_job(job["id"].as_u64().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["purged"], 3, "{job}");
    assert_eq!(job["failed"], 0);
    for path in ["/img/1.png", "/img/2.png", "/img/sub/3.png"] {
        assert_eq!(head_status(&server, path).await, 302, "{path} purged");
    }
    for path in ["/imgx.png", "/css/a.css"] {
        assert_eq!(head_status(&server, path).await, 200, "{path} kept");
    }
    // Bad requests: no prefix, unknown bucket, unknown job.
    let (status, _) = admin
        .post(&format!("/v1/buckets/{BUCKET}/purge"), "not json")
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        admin
            .post("/v1/buckets/nope-1/purge", r#"{"prefix":"a"}"#)
            .await
            .0,
        404
    );
    assert_eq!(admin.get("/v1/jobs/999999").await.0, 404);
}

#[tokio::test]
async fn a_prefetch_job_copies_each_key_once_and_again_copies_nothing() {
    let origin = TestOrigin::start();
    let keys: Vec<String> = (0..50).map(|i| format!("p/{i}.bin")).collect();
    for (i, key) in keys.iter().enumerate() {
        origin.route(&format!("/{key}"), Behavior::ok(vec![b'x'; 100 + i]));
    }
    let (server, admin) = start(&origin, None, "");
    wait_admin_up(&admin).await;
    // A key as a full origin URL is the same key.
    let mut body = keys[..49].join("\n");
    body.push_str(&format!("\nhttp://{}/{}\n", origin.authority(), keys[49]));
    body.push_str(&format!("{}\n", keys[0]));

    let (status, job) = admin
        .post(&format!("/v1/buckets/{BUCKET}/prefetch"), &body)
        .await;
    assert_eq!(status, 202, "{job}");
    let job = admin.wait_job(job["id"].as_u64().unwrap()).await;
    assert_eq!(job["state"], "done");
    assert_eq!(job["total"], 51);
    assert_eq!(job["done"], 51);
    assert_eq!(job["failed"], 0, "{job}");
    let expected_bytes: u64 = (0..50).map(|i| 100 + i).sum();
    assert_eq!(job["stored"], 50, "{job}");
    assert_eq!(job["bytes"], expected_bytes);
    assert_eq!(job["already_present"], 1, "the repeated key: {job}");
    for key in &keys {
        assert_eq!(origin.hits(&format!("/{key}")), 1, "{key} fetched once");
        assert_eq!(head_status(&server, &format!("/{key}")).await, 200);
    }

    let (_, again) = admin
        .post(&format!("/v1/buckets/{BUCKET}/prefetch"), &body)
        .await;
    let again = admin.wait_job(again["id"].as_u64().unwrap()).await;
    assert_eq!(again["stored"], 0);
    assert_eq!(again["already_present"], 51);
    assert_eq!(origin.total_hits(), 50, "no new fetches");
}

#[tokio::test]
async fn gauges_and_progress_are_exact_after_copies_purges_and_a_restart() {
    let origin = TestOrigin::start();
    let sizes = [10usize, 200, 3000, 40_000];
    for (i, size) in sizes.iter().enumerate() {
        origin.route(&format!("/g/{i}"), Behavior::ok(vec![b'g'; *size]));
    }
    let (mut server, admin) = start(&origin, None, "");
    wait_admin_up(&admin).await;
    for i in 0..sizes.len() {
        copy_in(&server, &format!("/g/{i}")).await;
    }
    assert_eq!(gauges(&server).await, (4.0, 43_210.0));
    // Replacing an object counts its size difference, not a new object.
    origin.route("/g/0", Behavior::ok(vec![b'h'; 15]));
    assert_eq!(
        admin
            .delete(&format!("/v1/buckets/{BUCKET}/objects/g/0"))
            .await
            .0,
        204
    );
    assert_eq!(gauges(&server).await, (3.0, 43_200.0));
    copy_in(&server, "/g/0").await;
    assert_eq!(gauges(&server).await, (4.0, 43_215.0));
    assert_eq!(
        admin
            .delete(&format!("/v1/buckets/{BUCKET}/objects/g/3"))
            .await
            .0,
        204
    );
    assert_eq!(gauges(&server).await, (3.0, 3_215.0));

    let progress = admin.progress().await;
    assert_eq!(progress["objects"], 3, "{progress}");
    assert_eq!(progress["bytes"], 3_215);
    assert_eq!(progress["copies_stored"], 5);
    assert_eq!(progress["copies_failed"], 0);
    assert!(progress["served_from_bucket_ratio"].as_f64().is_some());

    server.restart();
    wait_admin_up(&admin).await;
    let complete = wait_until(WAIT, || async {
        admin.progress().await["count_complete"] == true
    })
    .await;
    assert!(complete, "the background count never completed");
    assert_eq!(gauges(&server).await, (3.0, 3_215.0));
    let (status, listing) = admin.get("/v1/buckets").await;
    assert_eq!(status, 200);
    assert_eq!(listing["buckets"][0]["bucket"], BUCKET);
    assert_eq!(listing["buckets"][0]["objects"], 3);
}

/// The bucket's objects and bytes gauges.
async fn gauges(server: &Originpull) -> (f64, f64) {
    let labels = [("bucket", BUCKET)];
    (
        server.metric("originpull_bucket_objects", &labels).await,
        server.metric("originpull_bucket_bytes", &labels).await,
    )
}

#[tokio::test]
async fn progress_lists_the_keys_that_fail_most() {
    let origin = TestOrigin::start();
    origin.route("/bad.txt", Behavior::status(403));
    origin.route("/ok.txt", Behavior::ok("ok"));
    let (server, admin) = start(&origin, None, "fill:\n  negative_ttl_secs: 0\n");
    wait_admin_up(&admin).await;
    for n in 1..=3 {
        get(&server, BUCKET, "/bad.txt").await;
        assert!(wait_until(WAIT, || async { origin.hits("/bad.txt") == n }).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    get(&server, BUCKET, "/missing.txt").await;
    copy_in(&server, "/ok.txt").await;
    let failing = wait_until(WAIT, || async {
        let p = admin.progress().await;
        p["failing_keys"].as_array().is_some_and(|k| k.len() == 2)
    })
    .await;
    assert!(failing);
    let progress = admin.progress().await;
    let first = &progress["failing_keys"][0];
    assert_eq!(first["key"], "bad.txt");
    assert_eq!(first["count"], 3);
    assert!(
        first["last_reason"].as_str().unwrap().contains("403"),
        "{first}"
    );
    assert_eq!(progress["failing_keys"][1]["key"], "missing.txt");
    assert_eq!(progress["copies_failed"], 4);
    assert_eq!(progress["copies_stored"], 1);
}

/// The bucket with `revalidate_after_secs: 2` for keys under `r/` (check times are whole seconds,
/// so 2 keeps the requests made right after a copy from starting a check).
fn revalidating_bucket(origin: &TestOrigin) -> String {
    format!(
        "name: {BUCKET}\norigin_pull:\n  enabled: true\n  origin: {}\n  rules:\n    - prefix: r/\n      revalidate_after_secs: 2\n",
        origin.authority()
    )
}

#[tokio::test]
async fn revalidation_keeps_on_304_replaces_on_200_one_check_per_key_at_a_time() {
    let origin = TestOrigin::start();
    origin.route(
        "/r/page.html",
        Behavior::ok_with_headers(
            "version 1",
            &[
                ("ETag", "\"v1\""),
                ("Last-Modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
            ],
        ),
    );
    origin.route("/n/page.html", Behavior::ok("not revalidated"));
    let (server, admin) = start(&origin, Some(&revalidating_bucket(&origin)), "");
    wait_admin_up(&admin).await;
    copy_in(&server, "/r/page.html").await;
    copy_in(&server, "/n/page.html").await;
    tokio::time::sleep(Duration::from_millis(3100)).await;

    // Changed at the origin, held at the gate: hits are served from the bucket at once, and
    // only one conditional GET goes out however many hits arrive.
    origin.route(
        "/r/page.html",
        Behavior::Gate {
            body: b"version 2".to_vec(),
            headers: owned_headers(&[("ETag", "\"v2\"")]),
        },
    );
    for _ in 0..10 {
        assert_eq!(
            get_body(&server, BUCKET, "/r/page.html").await,
            (200, b"version 1".to_vec())
        );
    }
    assert!(wait_until(WAIT, || async { origin.gate_waiting("/r/page.html") == 1 }).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.hits("/r/page.html"), 2, "one copy, one revalidation");
    let check = &origin.requests("/r/page.html")[1];
    assert_eq!(check.header("if-none-match"), Some("\"v1\""));
    assert_eq!(
        check.header("if-modified-since"),
        Some("Tue, 01 Jan 2030 00:00:00 GMT")
    );
    origin.open_gate("/r/page.html");
    // 200: the object is replaced, whole.
    assert!(
        wait_until(WAIT, || async {
            get_body(&server, BUCKET, "/r/page.html").await == (200, b"version 2".to_vec())
        })
        .await
    );
    let labels = |outcome| [("bucket", BUCKET), ("outcome", outcome)];
    assert_eq!(
        server
            .metric("originpull_revalidations_total", &labels("replaced"))
            .await,
        1.0
    );

    // 304: the object stays, only its check time moves.
    origin.route(
        "/r/page.html",
        Behavior::Raw {
            bytes: b"HTTP/1.1 304 Not Modified\r\nETag: \"v2\"\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
            close: false,
        },
    );
    let meta_path = format!("/v1/buckets/{BUCKET}/objects/r/page.html");
    let checked_before = admin.get(&meta_path).await.1["checked_at"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        get_body(&server, BUCKET, "/r/page.html").await,
        (200, b"version 2".to_vec())
    );
    assert!(
        wait_until(WAIT, || async {
            server
                .metric("originpull_revalidations_total", &labels("not_modified"))
                .await
                == 1.0
        })
        .await
    );
    assert_eq!(origin.hits("/r/page.html"), 3);
    assert_eq!(
        origin.requests("/r/page.html")[2].header("if-none-match"),
        Some("\"v2\"")
    );
    let meta = admin.get(&meta_path).await.1;
    assert!(
        meta["checked_at"].as_u64().unwrap() > checked_before,
        "{meta}"
    );
    assert_eq!(meta["etag"], format!("\"{}\"", md5_hex(b"version 2")));
    // Right after the 304 the object is fresh: a hit does not check again.
    get_body(&server, BUCKET, "/r/page.html").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.hits("/r/page.html"), 3);

    // 404 at the origin: the stored object is kept, and the outcome counted.
    origin.unroute("/r/page.html");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    get_body(&server, BUCKET, "/r/page.html").await;
    assert!(
        wait_until(WAIT, || async {
            server
                .metric("originpull_revalidations_total", &labels("origin_missing"))
                .await
                == 1.0
        })
        .await
    );
    assert_eq!(
        get_body(&server, BUCKET, "/r/page.html").await,
        (200, b"version 2".to_vec())
    );
    // Keys outside the rule are never revalidated.
    assert_eq!(origin.hits("/n/page.html"), 1);
}

#[tokio::test]
async fn per_origin_concurrency_is_never_exceeded() {
    let origin = TestOrigin::start();
    let keys: Vec<String> = (0..12).map(|i| format!("c/{i}")).collect();
    for key in &keys {
        origin.route(
            &format!("/{key}"),
            Behavior::Slow {
                body: vec![b'c'; 4],
                chunk: 1,
                delay_ms: 50,
                headers: Vec::new(),
            },
        );
    }
    let (server, admin) = start(
        &origin,
        None,
        "fill:\n  concurrency: 16\n  per_origin_concurrency: 3\n",
    );
    wait_admin_up(&admin).await;
    // Misses and a prefetch job at once: both go through the same caps.
    for key in &keys[..6] {
        assert_eq!(get(&server, BUCKET, &format!("/{key}")).await.status(), 302);
    }
    let (_, job) = admin
        .post(&format!("/v1/buckets/{BUCKET}/prefetch"), &keys.join("\n"))
        .await;
    let job = admin.wait_job(job["id"].as_u64().unwrap()).await;
    assert_eq!(job["failed"], 0, "{job}");
    assert_eq!(
        job["stored"].as_u64().unwrap() + job["already_present"].as_u64().unwrap(),
        12
    );
    assert_eq!(origin.total_hits(), 12);
    let most = origin.max_concurrent_requests();
    assert!(most <= 3, "{most} copies at once to one origin");
    assert_eq!(most, 3, "the cap is used, not just respected");
}

#[tokio::test]
async fn the_breaker_opens_after_consecutive_failures_and_closes_after_its_time() {
    let origin = TestOrigin::start();
    for i in 0..4 {
        origin.route(&format!("/e/{i}"), Behavior::status(503));
    }
    origin.route("/fine.txt", Behavior::ok("fine"));
    let (server, admin) = start(
        &origin,
        None,
        "fill:\n  breaker_failures: 3\n  breaker_secs: 3\n  negative_ttl_secs: 0\n",
    );
    wait_admin_up(&admin).await;
    let labels = [
        ("bucket", BUCKET),
        ("origin", &*format!("http://{}", origin.authority())),
    ];
    assert_eq!(
        server
            .metric("originpull_origin_breaker_open", &labels)
            .await,
        0.0
    );
    for i in 0..3 {
        get(&server, BUCKET, &format!("/e/{i}")).await;
        assert!(wait_until(WAIT, || async { origin.hits(&format!("/e/{i}")) == 1 }).await);
    }
    assert!(
        wait_until(WAIT, || async {
            server
                .metric("originpull_origin_breaker_open", &labels)
                .await
                == 1.0
        })
        .await,
        "breaker never opened"
    );
    // While open: misses still get 302, but no copy reaches the origin.
    let hits = origin.total_hits();
    assert_eq!(get(&server, BUCKET, "/fine.txt").await.status(), 302);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        origin.total_hits(),
        hits,
        "copies pause while the breaker is open"
    );
    // After breaker_secs it closes and the paused copy goes through.
    assert!(
        wait_until(WAIT, || async {
            server
                .metric("originpull_origin_breaker_open", &labels)
                .await
                == 0.0
        })
        .await,
        "breaker never closed"
    );
    assert!(
        wait_until(WAIT, || async {
            head_status(&server, "/fine.txt").await == 200
        })
        .await
    );
}

#[test]
fn check_refuses_a_missing_empty_or_world_readable_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = |token: &Path| {
        format!(
            "listen: 127.0.0.1:{}\ndata_dir: ./data\ndomain_suffix: file.myqcloud.com\nadmin_listen: 127.0.0.1:{}\nadmin_token_file: {}\nbuckets: []\n",
            free_port(),
            free_port(),
            token.display()
        )
    };
    let good = token_file(dir.path(), TOKEN);
    let (code, text) = validate_config(&base(&good));
    assert_eq!(code, 0, "{text}");

    let (code, text) = validate_config(&base(&dir.path().join("absent.token")));
    assert_eq!(code, 1);
    assert!(
        text.contains("admin_token_file") && text.contains("cannot read"),
        "{text}"
    );

    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, text) = validate_config(&base(&empty));
    assert_eq!(code, 1);
    assert!(text.contains("is empty"), "{text}");

    let open = dir.path().join("open.token");
    std::fs::write(&open, "tok\n").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, text) = validate_config(&base(&open));
    assert_eq!(code, 1);
    assert!(text.contains("readable by every user"), "{text}");

    let (code, text) = validate_config(&base(&good).replace("admin_token_file", "# "));
    assert_eq!(code, 1);
    assert!(
        text.contains("admin_token_file: is required with admin_listen"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reload_re_reads_the_token_file() {
    let origin = TestOrigin::start();
    let token_dir = tempfile::tempdir().unwrap();
    let path = token_file(token_dir.path(), "first-token");
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let config = OriginpullConfig::new()
        .with_bucket(BUCKET, &origin.authority())
        .with_extra_yaml(&format!(
            "admin_listen: {admin_addr}\nadmin_token_file: {}\n",
            path.display()
        ));
    let server = Originpull::start(config);
    let admin = Admin {
        base: format!("http://{admin_addr}"),
        client: http_client(),
        _token_dir: tempfile::tempdir().unwrap(),
    };
    wait_admin_up(&admin).await;
    let status = |token: &'static str| {
        let admin = &admin;
        async move {
            admin
                .send(reqwest::Method::GET, "/v1/buckets", Some(token), "")
                .await
                .0
        }
    };
    assert_eq!(status("first-token").await, 200);
    token_file(token_dir.path(), "second-token");
    server.signal("HUP");
    assert!(wait_until(WAIT, || async { status("second-token").await == 200 }).await);
    assert_eq!(status("first-token").await, 401);
}

#[tokio::test]
async fn a_copy_passes_over_an_origin_whose_breaker_is_open_when_another_can_serve() {
    let primary = TestOrigin::start();
    let backup = TestOrigin::start();
    for i in 0..2 {
        primary.route(&format!("/e/{i}"), Behavior::status(503));
    }
    primary.route("/fine.txt", Behavior::ok("from primary"));
    backup.route("/fine.txt", Behavior::ok("from backup"));
    let bucket = format!(
        "name: {BUCKET}\norigin_pull:\n  enabled: true\n  origins:\n    - address: {}\n    - address: {}\n      backup: true\n",
        primary.authority(),
        backup.authority()
    );
    // Health would mark the primary down much later than the breaker opens.
    let fill = "fill:\n  breaker_failures: 2\n  breaker_secs: 60\n  origin_down_after_failures: 100\n  negative_ttl_secs: 0\n";
    let (server, admin) = start(&primary, Some(&bucket), fill);
    wait_admin_up(&admin).await;
    for i in 0..2 {
        get(&server, BUCKET, &format!("/e/{i}")).await;
        assert!(wait_until(WAIT, || async { primary.hits(&format!("/e/{i}")) == 1 }).await);
    }
    let labels = [
        ("bucket", BUCKET),
        ("origin", &*format!("http://{}", primary.authority())),
    ];
    assert!(
        wait_until(WAIT, || async {
            server
                .metric("originpull_origin_breaker_open", &labels)
                .await
                == 1.0
        })
        .await
    );
    copy_in(&server, "/fine.txt").await;
    assert_eq!(
        get_body(&server, BUCKET, "/fine.txt").await,
        (200, b"from backup".to_vec())
    );
    assert_eq!(primary.hits("/fine.txt"), 0);
}

#[tokio::test]
async fn a_cancelled_prefetch_starts_nothing_more() {
    let origin = TestOrigin::start();
    origin.route("/k/0", Behavior::gate("zero"));
    for i in 1..5 {
        origin.route(&format!("/k/{i}"), Behavior::ok("later"));
    }
    // One copy at a time: the job holds one key in the scheduler while the gate is shut.
    let (server, admin) = start(&origin, None, "fill:\n  concurrency: 1\n");
    wait_admin_up(&admin).await;
    let keys = (0..5)
        .map(|i| format!("k/{i}"))
        .collect::<Vec<_>>()
        .join("\n");
    let (_, job) = admin
        .post(&format!("/v1/buckets/{BUCKET}/prefetch"), &keys)
        .await;
    let id = job["id"].as_u64().unwrap();
    assert!(wait_until(WAIT, || async { origin.gate_waiting("/k/0") == 1 }).await);
    let (status, cancelled) = admin.delete(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    origin.open_gate("/k/0");
    // The copy already running finishes; the rest never start.
    assert!(wait_until(WAIT, || async { head_status(&server, "/k/0").await == 200 }).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 1..5 {
        assert_eq!(
            origin.hits(&format!("/k/{i}")),
            0,
            "k/{i} started after the cancel"
        );
    }
    let job = admin.wait_job(id).await;
    assert_eq!(job["state"], "cancelled");
    assert_eq!(job["total"], 5);
}

#[tokio::test]
async fn per_origin_rate_caps_the_copies_started_per_second_for_misses_too() {
    let origin = TestOrigin::start();
    for i in 0..9 {
        origin.route(&format!("/m/{i}"), Behavior::ok("m"));
    }
    let (server, admin) = start(&origin, None, "fill:\n  per_origin_rate: 4\n");
    wait_admin_up(&admin).await;
    for i in 0..9 {
        assert_eq!(get(&server, BUCKET, &format!("/m/{i}")).await.status(), 302);
    }
    assert!(wait_until(WAIT, || async { origin.total_hits() == 9 }).await);
    let mut arrivals: Vec<_> = origin
        .all_requests()
        .iter()
        .map(|r| r.received_at)
        .collect();
    arrivals.sort();
    // Nine starts at four per second: eight intervals of 250 ms (a little slack for timers).
    let span = arrivals[8] - arrivals[0];
    assert!(
        span >= Duration::from_millis(1900),
        "9 copies within {span:?}"
    );
}
