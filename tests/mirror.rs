//! Issue #10 end to end: mirror mode. A miss is streamed from the origin while it is stored;
//! faults mid-body end the client's response abnormally and store nothing; concurrent misses of
//! one key make one origin GET; Range, HEAD and conditionals on a miss; origin errors become
//! 404/502/504 with XML bodies; a reload switches modes under load.

use std::time::Duration;

use crate::common::*;

const BUCKET: &str = "example-1250000000";
const WAIT: Duration = Duration::from_secs(20);

fn mirror_bucket(origin: &str, extra: &str) -> OriginpullConfig {
    OriginpullConfig::new().with_bucket_yaml(&format!(
        "name: {BUCKET}\norigin_pull:\n  enabled: true\n  mode: mirror\n  origin: '{origin}'\n{extra}"
    ))
}

async fn stored_count(server: &Originpull) -> f64 {
    server
        .metric(
            "originpull_fills_total",
            &[("bucket", BUCKET), ("outcome", "stored")],
        )
        .await
}

#[tokio::test]
async fn a_miss_is_streamed_from_the_origin_then_served_as_a_hit() {
    let origin = TestOrigin::start();
    let body = generated_bytes(300_000);
    origin.route(
        "/app.js",
        Behavior::ok_with_headers(
            body.clone(),
            &[
                ("Content-Type", "text/javascript"),
                ("Cache-Control", "max-age=600"),
            ],
        ),
    );
    let server = Originpull::start(mirror_bucket(&origin.authority(), ""));

    let miss = get(&server, BUCKET, "/app.js").await;
    assert_eq!(miss.status(), 200);
    assert_eq!(miss.headers()["content-type"], "text/javascript");
    assert_eq!(miss.headers()["cache-control"], "max-age=600");
    assert_eq!(miss.headers()["content-length"], "300000");
    assert!(miss.headers().get("location").is_none());
    assert_eq!(md5_hex(&miss.bytes().await.unwrap()), md5_hex(&body));
    assert_eq!(origin.hits("/app.js"), 1);

    assert!(wait_until(WAIT, || async { stored_count(&server).await == 1.0 }).await);
    let hit = get(&server, BUCKET, "/app.js").await;
    assert_eq!(hit.status(), 200);
    assert_eq!(
        hit.headers()["etag"],
        format!("\"{}\"", md5_hex(&body)).as_str()
    );
    assert_eq!(md5_hex(&hit.bytes().await.unwrap()), md5_hex(&body));
    assert_eq!(origin.hits("/app.js"), 1, "a hit asked the origin");
    assert_eq!(
        server
            .metric(
                "originpull_requests_total",
                &[("bucket", BUCKET), ("result", "mirror")]
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn origin_faults_mid_body_cut_the_response_and_store_nothing() {
    let origin = TestOrigin::start();
    let body = generated_bytes(200_000);
    let server = Originpull::start(
        mirror_bucket(&origin.authority(), "")
            .with_extra_yaml("fill:\n  read_timeout_ms: 500\n  negative_ttl_secs: 0\n"),
    );
    let faults = [
        (
            "/reset",
            Behavior::ResetMidBody {
                body: body.clone(),
                send_bytes: 50_000,
            },
        ),
        (
            "/short",
            Behavior::ShortBody {
                body: body.clone(),
                send_bytes: 50_000,
            },
        ),
        (
            "/stall",
            Behavior::Stall {
                headers_then_stall: true,
                partial: body[..50_000].to_vec(),
            },
        ),
        (
            "/chunked-cut",
            Behavior::ChunkedUnterminated {
                body: body.clone(),
                chunk_size: 8192,
            },
        ),
    ];
    for (path, behavior) in faults {
        origin.route(path, behavior);
        let response = get(&server, BUCKET, path).await;
        assert_eq!(response.status(), 200, "{path}");
        let read = response.bytes().await;
        assert!(
            read.is_err(),
            "{path}: a cut-off body must not end cleanly (got {} bytes)",
            read.map(|b| b.len()).unwrap_or(0)
        );
        // Nothing stored: the next request goes to the origin again.
        origin.route(path, Behavior::ok(body.clone()));
        let hits = origin.hits(path);
        let again = get(&server, BUCKET, path).await;
        assert_eq!(again.status(), 200);
        assert_eq!(md5_hex(&again.bytes().await.unwrap()), md5_hex(&body));
        assert_eq!(
            origin.hits(path),
            hits + 1,
            "{path} was stored from a cut-off body"
        );
    }
}

#[tokio::test]
async fn one_hundred_concurrent_cold_misses_make_one_origin_get() {
    let origin = TestOrigin::start();
    let len = 8 * 1024 * 1024;
    origin.route(
        "/big.bin",
        Behavior::Slow {
            body: generated_bytes(len),
            chunk: 256 * 1024,
            delay_ms: 40,
            headers: vec![],
        },
    );
    let server = Originpull::start(mirror_bucket(&origin.authority(), ""));
    let expected = md5_of_generated(len as u64);
    let mut clients = Vec::new();
    for _ in 0..100 {
        let request = server.request(reqwest::Method::GET, BUCKET, "/big.bin");
        clients.push(tokio::spawn(async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let body = response.bytes().await.expect("complete body");
            (status, md5_hex(&body))
        }));
    }
    for client in clients {
        let (status, md5) = client.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(md5, expected);
    }
    assert_eq!(origin.hits("/big.bin"), 1, "more than one origin GET");
}

#[tokio::test]
async fn copies_from_both_worker_threads_keep_reusing_their_origin_connections() {
    const CLIENTS: usize = 8;
    const KEYS: usize = 600;
    let origin = TestOrigin::start();
    let body = generated_bytes(20_000);
    for i in 0..KEYS {
        origin.route(&format!("/o/{i}"), Behavior::ok(body.clone()));
    }
    let server = Originpull::start(mirror_bucket(&origin.authority(), ""));
    let expected = md5_hex(&body);
    // Each client keeps its own connection (so both workers serve some), and asks for its keys
    // one after another: a copy starts as soon as the one before it has ended.
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let client = http_client();
        let base = server.base_url();
        let host = server.host(BUCKET);
        let expected = expected.clone();
        clients.push(tokio::spawn(async move {
            for i in (c..KEYS).step_by(CLIENTS) {
                let response = client
                    .get(format!("{base}/o/{i}"))
                    .header("host", &host)
                    .send()
                    .await
                    .expect("request");
                assert_eq!(response.status(), 200, "/o/{i}");
                let got = response.bytes().await.expect("complete body");
                assert_eq!(md5_hex(&got), expected, "/o/{i}");
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    // At most one copy per client runs at a time, so each worker needs at most CLIENTS
    // connections; with one pool for both workers, connections handed between the threads were
    // dropped and most copies opened a new one.
    let opened = origin.accepted_connections();
    assert!(
        opened <= 2 * CLIENTS,
        "{KEYS} copies opened {opened} origin connections"
    );
}

#[tokio::test]
async fn range_and_conditional_requests_on_a_miss_get_a_hits_answer() {
    let origin = TestOrigin::start();
    let body = generated_bytes(100_000);
    origin.route("/r.bin", Behavior::ok(body.clone()));
    origin.route("/c.bin", Behavior::ok(body.clone()));
    let server = Originpull::start(mirror_bucket(&origin.authority(), ""));

    let ranged = get_range(&server, BUCKET, "/r.bin", "bytes=1000-1999").await;
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.headers()["content-range"], "bytes 1000-1999/100000");
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), &body[1000..2000]);
    let requests = origin.requests("/r.bin");
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("range"),
        None,
        "the whole object is fetched"
    );
    assert!(wait_until(WAIT, || async { stored_count(&server).await == 1.0 }).await);

    let etag = format!("\"{}\"", md5_hex(&body));
    let conditional = server
        .request(reqwest::Method::GET, BUCKET, "/c.bin")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(conditional.status(), 304);
    assert_eq!(origin.hits("/c.bin"), 1);
}

#[tokio::test]
async fn head_on_a_miss_asks_the_origin_and_stores_nothing() {
    let origin = TestOrigin::start();
    origin.route(
        "/h.txt",
        Behavior::ok_with_headers(b"hello".to_vec(), &[("Content-Type", "text/plain")]),
    );
    let server = Originpull::start(mirror_bucket(&origin.authority(), ""));
    let head = server
        .request(reqwest::Method::HEAD, BUCKET, "/h.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "text/plain");
    assert_eq!(head.headers()["content-length"], "5");
    let requests = origin.requests("/h.txt");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "HEAD");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored_count(&server).await, 0.0);
    let missing = server
        .request(reqwest::Method::HEAD, BUCKET, "/absent")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn origin_errors_become_404_502_504_and_404s_are_remembered() {
    let origin = TestOrigin::start();
    origin.route("/gone", Behavior::status(410));
    origin.route("/boom", Behavior::status(500));
    origin.route(
        "/silent",
        Behavior::Stall {
            headers_then_stall: false,
            partial: vec![],
        },
    );
    let server = Originpull::start(
        mirror_bucket(&origin.authority(), "")
            .with_extra_yaml("fill:\n  read_timeout_ms: 500\n  negative_ttl_secs: 30\n"),
    );

    for _ in 0..3 {
        let missing = get(&server, BUCKET, "/nope").await;
        assert_eq!(missing.status(), 404);
        assert!(missing
            .text()
            .await
            .unwrap()
            .contains("<Code>NoSuchKey</Code>"));
    }
    assert_eq!(origin.hits("/nope"), 1, "a 404 was not negative-cached");
    assert_eq!(get(&server, BUCKET, "/gone").await.status(), 404);

    let failed = get(&server, BUCKET, "/boom").await;
    assert_eq!(failed.status(), 502);
    let text = failed.text().await.unwrap();
    assert!(text.contains("<Code>BadGateway</Code>"), "{text}");
    assert!(
        !text.contains("test origin"),
        "the origin's page leaked: {text}"
    );

    let slow = get(&server, BUCKET, "/silent").await;
    assert_eq!(slow.status(), 504);
    assert!(slow
        .text()
        .await
        .unwrap()
        .contains("<Code>GatewayTimeout</Code>"));

    let closed = Originpull::start(mirror_bucket(&format!("127.0.0.1:{}", free_port()), ""));
    assert_eq!(get(&closed, BUCKET, "/x").await.status(), 502);
}

#[tokio::test]
async fn an_origin_refusing_the_object_is_403_access_denied() {
    let origin = TestOrigin::start();
    origin.route("/private", Behavior::status(403));
    origin.route("/login", Behavior::status(401));
    let server = Originpull::start(mirror_bucket(&origin.authority(), ""));
    for path in ["/private", "/login"] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let refused = server
                .request(method.clone(), BUCKET, path)
                .send()
                .await
                .unwrap();
            assert_eq!(refused.status(), 403, "{method} {path}");
            let text = refused.text().await.unwrap();
            if method == reqwest::Method::GET {
                assert!(text.contains("<Code>AccessDenied</Code>"), "{text}");
            }
        }
    }
}

#[tokio::test]
async fn a_mirrored_miss_carries_the_origins_last_modified_and_the_vary_of_a_hit() {
    let origin = TestOrigin::start();
    let date = "Wed, 21 Oct 2015 07:28:00 GMT";
    origin.route(
        "/site.css",
        Behavior::ok_with_headers(
            generated_bytes(4096),
            &[("Content-Type", "text/css"), ("Last-Modified", date)],
        ),
    );
    origin.route(
        "/photo.jpg",
        Behavior::ok_with_headers(generated_bytes(4096), &[("Content-Type", "image/jpeg")]),
    );
    let server = Originpull::start(mirror_bucket(&origin.authority(), ""));
    let css = get(&server, BUCKET, "/site.css").await;
    assert_eq!(css.status(), 200);
    assert_eq!(css.headers()["last-modified"], date);
    assert_eq!(css.headers()["vary"], "Accept-Encoding");
    let photo = get(&server, BUCKET, "/photo.jpg").await;
    assert_eq!(photo.status(), 200);
    assert!(photo.headers().get("vary").is_none());
    assert!(photo.headers().get("last-modified").is_none());
}

#[tokio::test]
async fn objects_over_max_object_bytes_are_streamed_and_not_stored() {
    let origin = TestOrigin::start();
    let body = generated_bytes(64 * 1024);
    origin.route("/large", Behavior::ok(body.clone()));
    let server = Originpull::start(
        mirror_bucket(&origin.authority(), "")
            .with_extra_yaml("fill:\n  max_object_bytes: 10000\n"),
    );
    for round in 1..=2 {
        let response = get(&server, BUCKET, "/large").await;
        assert_eq!(response.status(), 200);
        assert_eq!(md5_hex(&response.bytes().await.unwrap()), md5_hex(&body));
        assert_eq!(origin.hits("/large"), round);
    }
    assert_eq!(stored_count(&server).await, 0.0);
}

#[tokio::test]
async fn a_rule_may_mirror_some_keys_of_a_redirect_bucket() {
    let origin = TestOrigin::start();
    origin.route("/api/a.json", Behavior::ok(b"{}".to_vec()));
    origin.route("/img/a.png", Behavior::ok(b"png".to_vec()));
    let server = Originpull::start(OriginpullConfig::new().with_bucket_yaml(&format!(
        "name: {BUCKET}\norigin_pull:\n  enabled: true\n  origin: '{}'\n  rules:\n    - prefix: api/\n      mode: mirror\n",
        origin.authority()
    )));
    assert_eq!(get(&server, BUCKET, "/api/a.json").await.status(), 200);
    assert_eq!(get(&server, BUCKET, "/img/a.png").await.status(), 302);
}

#[tokio::test]
async fn a_reload_from_redirect_to_mirror_under_load_fails_no_request() {
    let origin = TestOrigin::start();
    const KEYS: usize = 20_000;
    for i in 0..KEYS {
        origin.route(&format!("/k/{i}"), Behavior::ok(format!("object {i}")));
    }
    origin.route("/probe", Behavior::ok(b"probe".to_vec()));
    let mut server = Originpull::start(OriginpullConfig::new().with_bucket_yaml(&format!(
        "name: {BUCKET}\norigin_pull:\n  enabled: true\n  origin: '{}'\n",
        origin.authority()
    )));
    let host = server.host(BUCKET);
    let base = server.base_url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (host, base, stop) = (host.clone(), base.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = http_client();
            let (mut redirected, mut mirrored, mut failed) = (0, 0, 0);
            let mut i = c;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < KEYS {
                let response = client
                    .get(format!("{base}/k/{i}"))
                    .header("host", &host)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 302 => redirected += 1,
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(text) if text == format!("object {i}") => mirrored += 1,
                        _ => failed += 1,
                    },
                    _ => failed += 1,
                }
                i += 4;
            }
            (redirected, mirrored, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.rewrite_config_with(OriginpullConfig::new().with_bucket_yaml(&format!(
        "name: {BUCKET}\norigin_pull:\n  enabled: true\n  mode: mirror\n  origin: '{}'\n",
        origin.authority()
    )));
    let switched = wait_until(WAIT, || async {
        get(&server, BUCKET, "/probe").await.status() == 200
    })
    .await;
    assert!(switched, "the reload did not switch to mirror mode");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut redirected, mut mirrored, mut failed) = (0, 0, 0);
    for client in clients {
        let (r, m, f) = client.await.unwrap();
        redirected += r;
        mirrored += m;
        failed += f;
    }
    assert_eq!(failed, 0);
    assert!(
        redirected > 0 && mirrored > 0,
        "redirected {redirected}, mirrored {mirrored}"
    );
}

#[tokio::test]
async fn the_head_and_each_piece_reach_the_client_as_the_origin_sends_them() {
    let origin = TestOrigin::start();
    let body = generated_bytes(1024 * 1024);
    // The head and 10 KB at once, then silence until the copy gives up on the origin.
    origin.route(
        "/paused.bin",
        Behavior::Stall {
            headers_then_stall: true,
            partial: body[..10_000].to_vec(),
        },
    );
    let server = Originpull::start(
        mirror_bucket(&origin.authority(), "").with_extra_yaml("fill:\n  read_timeout_ms: 4000\n"),
    );
    let started = std::time::Instant::now();
    let mut response = get(&server, BUCKET, "/paused.bin").await;
    assert_eq!(response.status(), 200);
    let mut received = 0;
    while received < 10_000 {
        let chunk = tokio::time::timeout(Duration::from_secs(3), response.chunk())
            .await
            .expect("the first 10 KB were held back")
            .expect("body")
            .expect("more body");
        received += chunk.len();
    }
    assert_eq!(received, 10_000);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the origin's first piece took {:?} to reach the client",
        started.elapsed()
    );
    // Then the origin's silence ends the response abnormally.
    assert!(response.bytes().await.is_err());
}

#[tokio::test]
async fn an_origin_failing_after_a_small_first_piece_gives_an_aborted_200() {
    let origin = TestOrigin::start();
    let body = generated_bytes(1024 * 1024);
    origin.route(
        "/reset.bin",
        Behavior::ResetMidBody {
            body: body.clone(),
            send_bytes: 10_000,
        },
    );
    origin.route(
        "/short.bin",
        Behavior::ShortBody {
            body: body.clone(),
            send_bytes: 10_000,
        },
    );
    let server = Originpull::start(mirror_bucket(&origin.authority(), ""));
    for path in ["/reset.bin", "/short.bin"] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.host(BUCKET)
        );
        let response = raw_request(server.addr(), request.as_bytes()).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.header("content-length"), Some("1048576"), "{path}");
        assert!(
            !response.body_complete,
            "{path}: the cut-off body looked whole"
        );
        assert!(
            response.body.len() >= 10_000,
            "{path}: {}",
            response.body.len()
        );
    }
}
