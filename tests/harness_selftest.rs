//! Checks the test harness in `tests/common` against itself: every `TestOrigin` behaviour is
//! driven with reqwest or the raw client, so a failing originpull test can be trusted to be
//! about originpull. Nothing here starts the originpull binary.

use std::time::{Duration, Instant};

use crate::common::*;

fn origin_url(origin: &TestOrigin, path: &str) -> String {
    format!("http://{}{path}", origin.addr())
}

fn raw_get_request(origin: &TestOrigin, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        origin.authority()
    )
    .into_bytes()
}

#[tokio::test]
async fn ok_serves_body_records_request_and_counts_hits() {
    let origin = TestOrigin::start();
    origin.route(
        "/a/b.txt",
        Behavior::ok_with_headers("hello", &[("ETag", "\"abc\"")]),
    );
    let client = http_client();

    let response = client
        .get(origin_url(&origin, "/a/b.txt?x=1"))
        .header("Accept-Encoding", "identity")
        .header("User-Agent", "originpull/test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"abc\"");
    assert_eq!(response.headers()["content-length"], "5");
    assert_eq!(response.bytes().await.unwrap(), "hello");

    assert_eq!(origin.hits("/a/b.txt"), 1);
    let recorded = &origin.requests("/a/b.txt")[0];
    assert_eq!(recorded.method, "GET");
    assert_eq!(recorded.target, "/a/b.txt?x=1");
    assert_eq!(recorded.header("accept-encoding"), Some("identity"));
    assert_eq!(recorded.header("User-Agent"), Some("originpull/test"));
    assert_eq!(recorded.header("host"), Some(origin.authority().as_str()));
    assert!(recorded.headers.iter().all(|(k, _)| *k == k.to_lowercase()));

    // Unrouted paths are 404 and still counted.
    let missing = client
        .get(origin_url(&origin, "/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(origin.hits("/nope"), 1);
    assert_eq!(origin.total_hits(), 2);
}

#[tokio::test]
async fn keep_alive_serves_several_requests_and_honours_connection_close() {
    let origin = TestOrigin::start();
    origin.route("/k", Behavior::ok("kept"));
    let mut conn = RawConnection::connect(origin.addr()).await.unwrap();
    for _ in 0..3 {
        let response = conn
            .request(b"GET /k HTTP/1.1\r\nHost: o\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"kept");
        assert_eq!(response.header("connection"), None);
    }
    let head = conn
        .request(b"HEAD /k HTTP/1.1\r\nHost: o\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(head.header("content-length"), Some("4"));
    assert!(head.body.is_empty());

    let last = conn
        .request(b"GET /k HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(last.header("connection"), Some("close"));
    assert!(conn.closed_by_peer_within(Duration::from_secs(2)).await);
    assert_eq!(origin.accepted_connections(), 1);
    assert_eq!(origin.hits("/k"), 5);
}

#[tokio::test]
async fn chunked_is_terminated_and_unterminated_is_detected() {
    let origin = TestOrigin::start();
    let body = generated_bytes(10_000);
    origin.route(
        "/chunked",
        Behavior::Chunked {
            body: body.clone(),
            chunk_size: 777,
            headers: vec![],
        },
    );
    origin.route(
        "/cut",
        Behavior::ChunkedUnterminated {
            body: body.clone(),
            chunk_size: 1000,
        },
    );

    let full = raw_request(origin.addr(), &raw_get_request(&origin, "/chunked")).await;
    assert_eq!(full.header("transfer-encoding"), Some("chunked"));
    assert!(full.body_complete);
    assert_eq!(full.body, body);
    let via_reqwest = http_client()
        .get(origin_url(&origin, "/chunked"))
        .send()
        .await
        .unwrap();
    assert_eq!(via_reqwest.bytes().await.unwrap(), body);

    let cut = raw_request(origin.addr(), &raw_get_request(&origin, "/cut")).await;
    assert!(!cut.body_complete);
    assert_eq!(cut.body, body);
    let via_reqwest = http_client()
        .get(origin_url(&origin, "/cut"))
        .send()
        .await
        .unwrap();
    assert!(via_reqwest.bytes().await.is_err());
}

#[tokio::test]
async fn short_and_reset_bodies_are_errors_for_clients() {
    let origin = TestOrigin::start();
    let body = generated_bytes(100_000);
    origin.route(
        "/short",
        Behavior::ShortBody {
            body: body.clone(),
            send_bytes: 1000,
        },
    );
    origin.route(
        "/reset",
        Behavior::ResetMidBody {
            body: body.clone(),
            send_bytes: 1000,
        },
    );
    let client = http_client();
    for path in ["/short", "/reset"] {
        let response = client.get(origin_url(&origin, path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-length"], "100000");
        assert!(response.bytes().await.is_err(), "{path} should fail");
    }

    let short = raw_request(origin.addr(), &raw_get_request(&origin, "/short")).await;
    assert!(!short.body_complete);
    assert_eq!(short.body, &body[..1000]);

    // A reset surfaces as ECONNRESET on the raw client.
    let reset = try_raw_request(
        origin.addr(),
        &raw_get_request(&origin, "/reset"),
        Duration::from_secs(5),
    )
    .await;
    match reset {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(r) => assert!(!r.body_complete, "reset response was complete"),
    }
}

#[tokio::test]
async fn long_body_declares_less_than_it_sends() {
    let origin = TestOrigin::start();
    origin.route(
        "/long",
        Behavior::LongBody {
            declared: 5,
            body: b"12345EXTRA".to_vec(),
            close: true,
            delay_excess_ms: 100,
        },
    );
    let mut conn = RawConnection::connect(origin.addr()).await.unwrap();
    let response = conn
        .request(b"GET /long HTTP/1.1\r\nHost: o\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response.body, b"12345");
    assert_eq!(response.header("connection"), Some("close"));
    // The excess arrives later, so the connection does not look closed at first.
    assert!(!conn.closed_by_peer_within(Duration::from_millis(500)).await);
}

#[tokio::test]
async fn status_answers_with_the_code_and_body() {
    let origin = TestOrigin::start();
    origin.route(
        "/gone",
        Behavior::Status {
            code: 503,
            body: b"busy".to_vec(),
        },
    );
    origin.route("/nm", Behavior::status(304));
    let response = http_client()
        .get(origin_url(&origin, "/gone"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.bytes().await.unwrap(), "busy");
    let not_modified = raw_request(origin.addr(), &raw_get_request(&origin, "/nm")).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
}

#[tokio::test]
async fn stall_holds_connection_without_blocking_others() {
    let origin = TestOrigin::start();
    origin.route(
        "/stall-head",
        Behavior::Stall {
            headers_then_stall: true,
            partial: b"part".to_vec(),
        },
    );
    origin.route(
        "/stall",
        Behavior::Stall {
            headers_then_stall: false,
            partial: vec![],
        },
    );
    origin.route("/fine", Behavior::ok("fine"));

    let stalled = try_raw_request(
        origin.addr(),
        &raw_get_request(&origin, "/stall"),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(stalled.unwrap_err().kind(), std::io::ErrorKind::TimedOut);

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let response = client
        .get(origin_url(&origin, "/stall-head"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut held = RawConnection::connect(origin.addr()).await.unwrap();
    held.send(b"GET /stall HTTP/1.1\r\nHost: o\r\n\r\n")
        .await
        .unwrap();

    // Others are served meanwhile.
    let fine = raw_request(origin.addr(), &raw_get_request(&origin, "/fine")).await;
    assert_eq!(fine.body, b"fine");

    assert!(response.bytes().await.is_err());
    let o = &origin;
    assert!(
        wait_until(Duration::from_secs(5), || async move {
            o.open_connections() >= 1
        })
        .await
    );
    drop(held);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            origin.open_connections() == 0
        })
        .await
    );
}

#[tokio::test]
async fn slow_paces_the_body() {
    let origin = TestOrigin::start();
    origin.route(
        "/slow",
        Behavior::Slow {
            body: vec![7u8; 40],
            chunk: 10,
            delay_ms: 100,
            headers: vec![],
        },
    );
    let started = Instant::now();
    let response = raw_request(origin.addr(), &raw_get_request(&origin, "/slow")).await;
    assert_eq!(response.body, vec![7u8; 40]);
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn gate_holds_requests_until_opened() {
    let origin = TestOrigin::start();
    origin.route("/gated", Behavior::gate("released"));
    let addr = origin.addr();
    let request = raw_get_request(&origin, "/gated");
    let first = tokio::spawn({
        let request = request.clone();
        async move { raw_request(addr, &request).await }
    });
    let second = tokio::spawn(async move { raw_request(addr, &request).await });

    assert!(
        wait_until(Duration::from_secs(5), || async {
            origin.gate_waiting("/gated") == 2
        })
        .await
    );
    assert_eq!(origin.hits("/gated"), 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!first.is_finished());

    origin.open_gate("/gated");
    assert_eq!(first.await.unwrap().body, b"released");
    assert_eq!(second.await.unwrap().body, b"released");
    assert_eq!(origin.gate_waiting("/gated"), 0);

    // An open gate lets later requests straight through; closing it parks them again.
    let again = raw_request(addr, &raw_get_request(&origin, "/gated")).await;
    assert_eq!(again.status, 200);
    origin.close_gate("/gated");
    let parked = try_raw_request(
        addr,
        &raw_get_request(&origin, "/gated"),
        Duration::from_millis(300),
    )
    .await;
    assert!(parked.is_err());
}

#[tokio::test]
async fn generated_body_streams_and_matches_its_digest() {
    let origin = TestOrigin::start();
    let len = 3 * 1024 * 1024 + 5;
    origin.route("/big", Behavior::generated(len));
    let response = http_client()
        .get(origin_url(&origin, "/big"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-length"],
        len.to_string().as_str()
    );
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len() as u64, len);
    assert_eq!(md5_hex(&body), md5_of_generated(len));

    // Any offset can be generated on its own (for ranges and resumed copies).
    let mut middle = vec![0u8; 1001];
    fill_generated(12_345, &mut middle);
    assert_eq!(&body[12_345..13_346], &middle[..]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    std::fs::write(&file, &body).unwrap();
    assert!(file_matches_generated(&file, len).unwrap());
    assert_eq!(md5_of_file(&file).unwrap(), md5_of_generated(len));
    assert!(!file_matches_generated(&file, len - 1).unwrap());
}

#[tokio::test]
async fn raw_behavior_sends_exact_bytes() {
    let origin = TestOrigin::start();
    origin.route(
        "/raw",
        Behavior::Raw {
            bytes: b"HTTP/1.1 200 OK\r\nX-Odd:  spaced \r\nContent-Length: 2\r\n\r\nhi".to_vec(),
            close: true,
        },
    );
    let response = raw_request(origin.addr(), &raw_get_request(&origin, "/raw")).await;
    assert_eq!(response.header("x-odd"), Some("spaced"));
    assert_eq!(response.body, b"hi");
    assert!(response
        .raw_head
        .starts_with(b"HTTP/1.1 200 OK\r\nX-Odd:  spaced \r\n"));
}

/// The origin owns its runtime, so a plain `#[test]` can use it and it outlives a test runtime.
#[test]
fn origin_works_from_a_plain_test_and_across_runtimes() {
    let origin = TestOrigin::start();
    origin.route("/sync", Behavior::ok("sync"));
    for _ in 0..2 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let response = runtime.block_on(raw_request(
            origin.addr(),
            &raw_get_request(&origin, "/sync"),
        ));
        assert_eq!(response.body, b"sync");
    }
    assert_eq!(origin.hits("/sync"), 2);
}

#[test]
fn config_renders_the_documented_shape() {
    let config = OriginpullConfig::new()
        .with_bucket("example-1250000000", "127.0.0.1:8081")
        .with_disabled_bucket("plain-1250000000")
        .with_extra_yaml("fill:\n  workers: 2");
    let yaml = config.render(
        "127.0.0.1:1000".parse().unwrap(),
        "127.0.0.1:1001".parse().unwrap(),
        std::path::Path::new("/tmp/x/data"),
    );
    assert_eq!(
        yaml,
        "listen: 127.0.0.1:1000\n\
         metrics_listen: 127.0.0.1:1001\n\
         data_dir: /tmp/x/data\n\
         domain_suffix: file.myqcloud.com\n\
         access_log: stderr\n\
         server:\n  threads: 2\n  grace_period_secs: 1\n  graceful_shutdown_timeout_secs: 1\n\
         buckets:\n\
         \x20 - name: example-1250000000\n\
         \x20   origin_pull:\n\
         \x20     enabled: true\n\
         \x20     origin: 127.0.0.1:8081\n\
         \x20 - name: plain-1250000000\n\
         \x20   origin_pull:\n\
         \x20     enabled: false\n\
         fill:\n  workers: 2\n"
    );
}

#[test]
fn metric_sum_matches_label_subsets() {
    let text = "# HELP x y\n\
                originpull_copies_total{bucket=\"a\",result=\"ok\"} 3\n\
                originpull_copies_total{result=\"ok\",bucket=\"b\"} 4\n\
                originpull_copies_total{bucket=\"a\",result=\"error\"} 1\n\
                originpull_inflight 2\n";
    assert_eq!(
        metric_sum(text, "originpull_copies_total", &[("result", "ok")]),
        Some(7.0)
    );
    assert_eq!(
        metric_sum(text, "originpull_copies_total", &[("bucket", "a")]),
        Some(4.0)
    );
    assert_eq!(metric_sum(text, "originpull_inflight", &[]), Some(2.0));
    assert_eq!(metric_sum(text, "originpull_missing", &[]), None);
}
