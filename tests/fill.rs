//! Issue #3 end to end: the background copy from a real loopback origin into the bucket.
//! Complete-or-nothing under every origin fault, single flight, bounded work, negative TTL,
//! size limits, and what the origin sees.

use std::time::Duration;

use crate::common::*;

const BUCKET: &str = "example-1250000000";
const WAIT: Duration = Duration::from_secs(15);

fn config_with(origin: &TestOrigin, fill_yaml: &str) -> OriginpullConfig {
    OriginpullConfig::new()
        .with_bucket(BUCKET, &origin.authority())
        .with_extra_yaml(fill_yaml)
}

#[tokio::test]
async fn seed_example_end_to_end_stores_the_origins_bytes_and_headers() {
    let origin = TestOrigin::start();
    let body = generated_bytes(200_000);
    origin.route(
        "/1.jpg",
        Behavior::ok_with_headers(
            body.clone(),
            &[
                ("Content-Type", "image/jpeg"),
                ("Cache-Control", "public, max-age=86400"),
                ("Content-Disposition", "attachment; filename=\"1.jpg\""),
                ("Content-Encoding", "identity"),
                ("Expires", "Wed, 21 Oct 2037 07:28:00 GMT"),
                ("X-Origin-Private", "not kept"),
            ],
        ),
    );
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));

    let first = get(&server, BUCKET, "/1.jpg").await;
    assert_eq!(first.status(), 302);
    assert_eq!(
        first.headers()["location"],
        format!("http://{}/1.jpg", origin.authority()).as_str()
    );
    assert!(
        server.wait_stored(BUCKET, "/1.jpg").await,
        "copy did not land"
    );

    let second = get(&server, BUCKET, "/1.jpg").await;
    assert_eq!(second.status(), 200);
    let h = second.headers().clone();
    assert_eq!(h["content-type"], "image/jpeg");
    assert_eq!(h["cache-control"], "public, max-age=86400");
    assert_eq!(h["content-disposition"], "attachment; filename=\"1.jpg\"");
    assert_eq!(h["content-encoding"], "identity");
    assert_eq!(h["expires"], "Wed, 21 Oct 2037 07:28:00 GMT");
    assert!(h.get("x-origin-private").is_none());
    assert_eq!(h["etag"], format!("\"{}\"", md5_hex(&body)).as_str());
    assert_eq!(second.bytes().await.unwrap().as_ref(), body.as_slice());

    // What the origin saw: exactly one copy request, identifiable, uncompressed, right Host.
    let requests = origin.requests("/1.jpg");
    assert_eq!(requests.len(), 1);
    let copy = &requests[0];
    assert_eq!(copy.method, "GET");
    assert_eq!(copy.header("host"), Some(origin.authority().as_str()));
    assert_eq!(copy.header("accept-encoding"), Some("identity"));
    assert!(copy
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("originpull/")));
    assert_eq!(
        server
            .metric("originpull_fill_bytes_total", &[("bucket", BUCKET)])
            .await,
        200_000.0
    );
}

#[tokio::test]
async fn chunked_bodies_and_encoded_keys_are_stored() {
    let origin = TestOrigin::start();
    let body = generated_bytes(100_000);
    origin.route(
        "/dir/a%20b.txt",
        Behavior::Chunked {
            body: body.clone(),
            chunk_size: 7_000,
            headers: vec![],
        },
    );
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    assert_eq!(
        get(&server, BUCKET, "/dir/a%20b.txt?cachebuster=1")
            .await
            .status(),
        302
    );
    assert!(server.wait_stored(BUCKET, "/dir/a%20b.txt").await);
    assert_eq!(
        get_body(&server, BUCKET, "/dir/a%20b.txt").await,
        (200, body)
    );
    // The copy asked for the key, without the client's query string.
    assert_eq!(
        origin.requests("/dir/a%20b.txt")[0].target,
        "/dir/a%20b.txt"
    );
}

#[tokio::test]
async fn head_misses_copy_nothing_and_range_misses_copy_the_whole_object() {
    let origin = TestOrigin::start();
    let body = generated_bytes(50_000);
    origin.route("/h.bin", Behavior::ok(body.clone()));
    origin.route("/r.bin", Behavior::ok(body.clone()));
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));

    assert_eq!(server.head_status(BUCKET, "/h.bin").await, 302);
    let ranged = get_range(&server, BUCKET, "/r.bin", "bytes=0-99").await;
    assert_eq!(ranged.status(), 302);
    assert!(server.wait_stored(BUCKET, "/r.bin").await);
    assert_eq!(get_body(&server, BUCKET, "/r.bin").await, (200, body));
    assert_eq!(origin.hits("/h.bin"), 0, "a HEAD miss must not copy");
    assert_eq!(server.head_status(BUCKET, "/h.bin").await, 302);
}

/// Every fault stores nothing and counts its outcome; once the origin answers well, the next
/// miss stores the object.
#[tokio::test]
async fn origin_faults_store_nothing_and_a_later_good_answer_is_stored() {
    let origin = TestOrigin::start();
    let body = generated_bytes(64 * 1024);
    let server = Originpull::start(config_with(
        &origin,
        "fill:\n  read_timeout_ms: 700\n  negative_ttl_secs: 0\n",
    ));
    let faults: Vec<(&str, Behavior, &str)> = vec![
        ("/404", Behavior::status(404), "origin_status"),
        ("/500", Behavior::status(500), "origin_status"),
        ("/301", Behavior::status(301), "origin_status"),
        (
            "/reset",
            Behavior::ResetMidBody {
                body: body.clone(),
                send_bytes: 10_000,
            },
            "origin_error",
        ),
        (
            "/short",
            Behavior::ShortBody {
                body: body.clone(),
                send_bytes: 60_000,
            },
            "origin_error",
        ),
        (
            "/long-keepalive",
            Behavior::LongBody {
                declared: 1000,
                body: body.clone(),
                close: false,
                delay_excess_ms: 0,
            },
            "origin_error",
        ),
        (
            "/long-close-late",
            Behavior::LongBody {
                declared: 1000,
                body: body.clone(),
                close: true,
                delay_excess_ms: 100,
            },
            "origin_error",
        ),
        (
            "/chunked-cut",
            Behavior::ChunkedUnterminated {
                body: body.clone(),
                chunk_size: 4096,
            },
            "origin_error",
        ),
        (
            "/unframed",
            Behavior::Raw {
                bytes: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close".to_vec(),
                close: true,
            },
            "origin_error",
        ),
        (
            "/stall-head",
            Behavior::Stall {
                headers_then_stall: false,
                partial: vec![],
            },
            "timeout",
        ),
        (
            "/stall-body",
            Behavior::Stall {
                headers_then_stall: true,
                partial: body[..5000].to_vec(),
            },
            "timeout",
        ),
    ];
    let mut expected: std::collections::HashMap<&str, f64> = Default::default();
    for (path, behavior, outcome) in &faults {
        origin.route(path, behavior.clone());
        assert_eq!(get(&server, BUCKET, path).await.status(), 302, "{path}");
        *expected.entry(outcome).or_default() += 1.0;
        assert!(
            server
                .wait_fill_outcome(BUCKET, outcome, expected[outcome])
                .await,
            "{path}: outcome {outcome} not counted"
        );
        assert_eq!(
            server.head_status(BUCKET, path).await,
            302,
            "{path} must not be stored"
        );
    }
    assert_eq!(
        server
            .metric(
                "originpull_fills_total",
                &[("bucket", BUCKET), ("outcome", "stored")]
            )
            .await,
        0.0
    );
    assert_eq!(
        server.temporary_files(BUCKET),
        Vec::<std::path::PathBuf>::new()
    );

    // The origin recovers: each key is copied whole on its next miss.
    for (path, _, _) in &faults {
        origin.route(path, Behavior::ok(body.clone()));
        assert_eq!(get(&server, BUCKET, path).await.status(), 302);
        assert!(
            server.wait_stored(BUCKET, path).await,
            "{path} not stored after recovery"
        );
        assert_eq!(
            get_body(&server, BUCKET, path).await,
            (200, body.clone()),
            "{path}"
        );
    }
}

#[tokio::test]
async fn refused_connections_are_origin_errors() {
    let closed_port = free_port();
    let server = Originpull::start(
        OriginpullConfig::new().with_bucket(BUCKET, &format!("127.0.0.1:{closed_port}")),
    );
    assert_eq!(get(&server, BUCKET, "/x").await.status(), 302);
    assert!(server.wait_fill_outcome(BUCKET, "origin_error", 1.0).await);
    assert_eq!(server.head_status(BUCKET, "/x").await, 302);
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_origin_request() {
    let origin = TestOrigin::start();
    let body = generated_bytes(10_000);
    origin.route("/hot.jpg", Behavior::gate(body.clone()));
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));

    let client = http_client();
    let url = format!("{}/hot.jpg", server.base_url());
    let host = server.host(BUCKET);
    let misses = (0..100).map(|_| {
        let request = client.get(&url).header("Host", &host).send();
        async move { request.await.map(|r| r.status().as_u16()) }
    });
    let statuses = futures_join_all(misses).await;
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(302))),
        "{statuses:?}"
    );
    assert!(wait_until(WAIT, || async { origin.gate_waiting("/hot.jpg") == 1 }).await);
    origin.open_gate("/hot.jpg");
    assert!(server.wait_stored(BUCKET, "/hot.jpg").await);
    assert_eq!(
        origin.hits("/hot.jpg"),
        1,
        "single flight: exactly one origin GET"
    );
    assert_eq!(get_body(&server, BUCKET, "/hot.jpg").await, (200, body));
}

/// Joins futures without pulling in the `futures` crate.
async fn futures_join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn concurrency_and_queue_bounds_drop_the_overflow_but_still_redirect() {
    let origin = TestOrigin::start();
    for i in 0..4 {
        origin.route(&format!("/q{i}"), Behavior::gate(format!("object {i}")));
    }
    let server = Originpull::start(config_with(
        &origin,
        "fill:\n  concurrency: 1\n  queue: 2\n",
    ));
    for i in 0..4 {
        assert_eq!(get(&server, BUCKET, &format!("/q{i}")).await.status(), 302);
    }
    // q0 runs, q1 and q2 wait, q3 is dropped.
    assert!(wait_until(WAIT, || async { origin.gate_waiting("/q0") == 1 }).await);
    assert_eq!(server.metric("originpull_fills_in_flight", &[]).await, 1.0);
    assert_eq!(server.metric("originpull_fill_queue_depth", &[]).await, 2.0);
    assert_eq!(
        server
            .metric(
                "originpull_fills_total",
                &[("bucket", BUCKET), ("outcome", "dropped")]
            )
            .await,
        1.0
    );
    for i in 0..3 {
        origin.open_gate(&format!("/q{i}"));
    }
    for i in 0..3 {
        assert!(server.wait_stored(BUCKET, &format!("/q{i}")).await, "q{i}");
    }
    assert_eq!(
        origin.hits("/q3"),
        0,
        "the dropped copy never reached the origin"
    );
    assert_eq!(server.head_status(BUCKET, "/q3").await, 302);
    assert_eq!(server.metric("originpull_fill_queue_depth", &[]).await, 0.0);
    assert_eq!(server.metric("originpull_fills_in_flight", &[]).await, 0.0);
    // A later miss of the dropped key copies it.
    origin.open_gate("/q3");
    assert_eq!(get(&server, BUCKET, "/q3").await.status(), 302);
    assert!(server.wait_stored(BUCKET, "/q3").await);
}

#[tokio::test]
async fn failed_keys_are_not_retried_within_the_negative_ttl() {
    let origin = TestOrigin::start();
    origin.route("/gone", Behavior::status(404));
    let server = Originpull::start(config_with(&origin, "fill:\n  negative_ttl_secs: 2\n"));
    assert_eq!(get(&server, BUCKET, "/gone").await.status(), 302);
    assert!(server.wait_fill_outcome(BUCKET, "origin_status", 1.0).await);
    for _ in 0..5 {
        assert_eq!(get(&server, BUCKET, "/gone").await.status(), 302);
    }
    assert_eq!(origin.hits("/gone"), 1, "no retry inside the TTL");
    assert_eq!(
        server
            .metric(
                "originpull_fills_total",
                &[("bucket", BUCKET), ("outcome", "negative_cached")]
            )
            .await,
        5.0
    );
    origin.route("/gone", Behavior::ok("back"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&server, BUCKET, "/gone").await.status(), 302);
    assert!(server.wait_stored(BUCKET, "/gone").await);
    assert_eq!(origin.hits("/gone"), 2);
}

#[tokio::test]
async fn objects_over_max_object_bytes_are_not_stored_and_the_transfer_is_cut() {
    let origin = TestOrigin::start();
    origin.route("/declared-big", Behavior::generated(100 * 1024 * 1024));
    origin.route(
        "/chunked-big",
        Behavior::Chunked {
            body: generated_bytes(3 * 1024 * 1024),
            chunk_size: 64 * 1024,
            headers: vec![],
        },
    );
    origin.route("/small", Behavior::ok(generated_bytes(1024 * 1024)));
    let server = Originpull::start(config_with(&origin, "fill:\n  max_object_bytes: 1048576\n"));
    for path in ["/declared-big", "/chunked-big"] {
        assert_eq!(get(&server, BUCKET, path).await.status(), 302);
    }
    assert!(server.wait_fill_outcome(BUCKET, "too_large", 2.0).await);
    assert_eq!(server.head_status(BUCKET, "/declared-big").await, 302);
    assert_eq!(server.head_status(BUCKET, "/chunked-big").await, 302);
    // Exactly the limit is allowed.
    assert_eq!(get(&server, BUCKET, "/small").await.status(), 302);
    assert!(server.wait_stored(BUCKET, "/small").await);
}

#[tokio::test]
async fn the_client_hanging_up_does_not_cancel_the_copy() {
    let origin = TestOrigin::start();
    let body = generated_bytes(2 * 1024 * 1024);
    origin.route(
        "/slow.bin",
        Behavior::Slow {
            body: body.clone(),
            chunk: 256 * 1024,
            delay_ms: 50,
            headers: vec![],
        },
    );
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    {
        let mut conn = RawConnection::connect(server.addr()).await.unwrap();
        let req = format!(
            "GET /slow.bin HTTP/1.1\r\nHost: {}\r\n\r\n",
            server.host(BUCKET)
        );
        assert_eq!(conn.request(req.as_bytes()).await.unwrap().status, 302);
        // Dropped here: the client goes away while the copy runs.
    }
    assert!(server.wait_stored(BUCKET, "/slow.bin").await);
    assert_eq!(get_body(&server, BUCKET, "/slow.bin").await.1, body);
}

#[tokio::test]
async fn graceful_shutdown_finishes_or_discards_running_copies() {
    let origin = TestOrigin::start();
    let quick = generated_bytes(512 * 1024);
    let endless = generated_bytes(8 * 1024 * 1024);
    // Finishes inside the 1 s grace period.
    origin.route(
        "/quick.bin",
        Behavior::Slow {
            body: quick.clone(),
            chunk: 128 * 1024,
            delay_ms: 100,
            headers: vec![],
        },
    );
    // Cannot finish before the process stops.
    origin.route(
        "/endless.bin",
        Behavior::Slow {
            body: endless,
            chunk: 64 * 1024,
            delay_ms: 200,
            headers: vec![],
        },
    );
    let mut server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    assert_eq!(get(&server, BUCKET, "/quick.bin").await.status(), 302);
    assert_eq!(get(&server, BUCKET, "/endless.bin").await.status(), 302);
    assert!(wait_until(WAIT, || async { origin.hits("/endless.bin") == 1 }).await);
    server.signal("TERM");
    assert!(
        server.wait_exit(Duration::from_secs(15)).is_some(),
        "did not stop after SIGTERM"
    );
    server.restart();
    assert_eq!(
        server.head_status(BUCKET, "/quick.bin").await,
        200,
        "finished within the grace period"
    );
    assert_eq!(get_body(&server, BUCKET, "/quick.bin").await.1, quick);
    assert_eq!(
        server.head_status(BUCKET, "/endless.bin").await,
        302,
        "unfinished copy discarded"
    );
    assert_eq!(
        server.temporary_files(BUCKET),
        Vec::<std::path::PathBuf>::new()
    );
}

/// A scanner: a thousand distinct missing keys, once with the copy queue full (the copy of the
/// first key held at its origin) and once with every copy failing (the origin answers 404). The
/// metrics count every one; the process log gets a first line and summaries, not a line each.
#[tokio::test]
async fn a_scanner_of_distinct_keys_writes_summaries_not_a_log_line_per_request() {
    let origin = TestOrigin::start();
    origin.route("/held", Behavior::gate("held"));
    let quiet = |fill: &str| {
        let mut config = config_with(&origin, fill);
        config.access_log = "off".into();
        Originpull::start(config)
    };
    let full = quiet("fill:\n  concurrency: 1\n  queue: 0\n");
    let failing = quiet("");
    assert_eq!(get(&full, BUCKET, "/held").await.status(), 302);
    assert!(wait_until(WAIT, || async { origin.gate_waiting("/held") == 1 }).await);
    for (server, prefix) in [(&full, "dropped-"), (&failing, "missing-")] {
        for i in 0..1000 {
            let path = format!("/{prefix}{i}");
            assert_eq!(get(server, BUCKET, &path).await.status(), 302);
        }
    }
    let dropped = full
        .metric(
            "originpull_fills_total",
            &[("bucket", BUCKET), ("outcome", "dropped")],
        )
        .await;
    assert_eq!(dropped, 1000.0);
    assert!(
        failing
            .wait_fill_outcome(BUCKET, "origin_status", 1000.0)
            .await
    );
    // The summaries of the events after the first are written within a few seconds.
    let wait = Duration::from_secs(15);
    assert!(full.wait_for_stderr("more copies not started", wait).await);
    assert!(failing.wait_for_stderr("more copy failures", wait).await);
    for (server, needle) in [
        (&full, "fill queue full"),
        (&failing, "origin answered 404"),
    ] {
        let log = server.stderr_text();
        let lines = log.lines().filter(|line| line.contains(needle)).count();
        assert!((2..=10).contains(&lines), "{lines} lines:\n{log}");
        assert!(log.lines().count() < 60, "{log}");
    }
    origin.open_gate("/held");
}
