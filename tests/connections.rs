//! Issue #14, "exact answers" and "connections", end to end on the real binary: unsatisfiable
//! suffix ranges, query strings passed through to the redirect, pipelined requests, the
//! keep-alive and header timeouts, the header size limit, the connection cap, a graceful stop
//! that ends when nothing is running, and metrics that exist from the start.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

const BUCKET: &str = "example-1250000000";

/// Starts a server, then restarts it with `grace_period_secs` set (the harness writes 1 s),
/// so that a stop taking the whole grace period cannot pass for an early exit.
fn start_with_grace_period(config: OriginpullConfig, secs: u64) -> Originpull {
    let mut server = Originpull::start(config);
    let yaml = server.render(server.config()).replace(
        "grace_period_secs: 1\n",
        &format!("grace_period_secs: {secs}\n"),
    );
    assert!(yaml.contains(&format!("grace_period_secs: {secs}\n")));
    server.rewrite_config(&yaml);
    server.restart();
    server
}

/// Has the origin answer `path` with `behavior` and waits until the bucket holds a copy of it.
async fn store_through_a_copy(
    server: &Originpull,
    origin: &TestOrigin,
    path: &str,
    behavior: Behavior,
) {
    origin.route(path, behavior);
    assert_eq!(get(server, BUCKET, path).await.status(), 302);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            get(server, BUCKET, path).await.status() == 200
        })
        .await,
        "{path} was not copied into the bucket"
    );
}

fn get_request(host: &str, target: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
}

#[tokio::test]
async fn a_zero_length_suffix_range_is_416_on_get_and_head() {
    let origin = TestOrigin::start();
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    let body = generated_bytes(5000);
    store_through_a_copy(&server, &origin, "/five.bin", Behavior::ok(body.clone())).await;

    for method in ["GET", "HEAD"] {
        let request = format!(
            "{method} /five.bin HTTP/1.1\r\nHost: {}\r\nRange: bytes=-0\r\nConnection: close\r\n\r\n",
            server.host(BUCKET)
        );
        let resp = raw_request(server.addr(), request.as_bytes()).await;
        assert_eq!(resp.status, 416, "{method}");
        assert_eq!(
            resp.header("content-range"),
            Some("bytes */5000"),
            "{method}"
        );
        assert_eq!(resp.header("content-length"), Some("0"), "{method}");
        assert!(resp.body.is_empty(), "{method}");
    }
    // A satisfiable suffix is still a 206.
    let resp = get_range(&server, BUCKET, "/five.bin", "bytes=-10").await;
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[4990..]);
}

#[tokio::test]
async fn the_redirect_carries_the_query_byte_for_byte() {
    let server = Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, "127.0.0.1:9"));
    let host = server.host(BUCKET);
    let location = |resp: &RawResponse| resp.header("location").unwrap_or_default().to_string();
    let head = |target: &str| {
        format!("HEAD {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };

    // Braces, an existing escape in either case, and a signature's `+/=` are not touched.
    let query = "q={a}&b=%7B&c=%2f&sig=ab+c/d==";
    let resp = raw_request(server.addr(), head(&format!("/1.jpg?{query}")).as_bytes()).await;
    assert_eq!(resp.status, 302);
    assert_eq!(location(&resp), format!("http://127.0.0.1:9/1.jpg?{query}"));

    // A control byte and non-ASCII cannot be in a header: they are percent-encoded. (A raw
    // space ends the target: 400, in tests/conformance.rs.)
    for (raw_query, sent) in [("a=\x01", "a=%01"), ("q=\u{4e2d}", "q=%E4%B8%AD")] {
        let resp = raw_request(
            server.addr(),
            head(&format!("/1.jpg?{raw_query}")).as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 302, "{raw_query:?}");
        assert_eq!(
            location(&resp),
            format!("http://127.0.0.1:9/1.jpg?{sent}"),
            "{raw_query:?}"
        );
    }
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let origin = TestOrigin::start();
    origin.route("/missing.txt", Behavior::status(404));
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    store_through_a_copy(
        &server,
        &origin,
        "/hit.txt",
        Behavior::ok("hello, pipeline"),
    )
    .await;
    let host = server.host(BUCKET);

    let mut conn = RawConnection::connect(server.addr()).await.unwrap();
    let three = [
        get_request(&host, "/hit.txt", ""),
        get_request(&host, "/missing.txt", ""),
        get_request(&host, "/hit.txt", "Range: bytes=0-4\r\n"),
    ]
    .concat();
    conn.send(three.as_bytes()).await.unwrap();

    let first = conn.read_response(false).await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.body, b"hello, pipeline");
    let second = conn.read_response(false).await.unwrap();
    assert_eq!(second.status, 302);
    assert!(second.header("location").unwrap().ends_with("/missing.txt"));
    let third = conn.read_response(false).await.unwrap();
    assert_eq!(third.status, 206);
    assert_eq!(third.body, b"hello");
    for resp in [&first, &second, &third] {
        assert_ne!(resp.header("connection"), Some("close"));
    }

    // The connection is still usable afterwards.
    let fourth = conn
        .request(get_request(&host, "/hit.txt", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(fourth.status, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_disabled_bucket(BUCKET)
            .with_server_yaml("keepalive_timeout_secs: 1"),
    );
    let host = server.host(BUCKET);
    let mut conn = RawConnection::connect(server.addr()).await.unwrap();
    for _ in 0..2 {
        let resp = conn
            .request(get_request(&host, "/a.txt", "").as_bytes())
            .await
            .unwrap();
        assert_eq!(resp.status, 404);
        assert_ne!(resp.header("connection"), Some("close"));
    }
    assert!(
        conn.closed_by_peer_within(Duration::from_secs(10)).await,
        "an idle connection stayed open past keepalive_timeout_secs"
    );
}

#[tokio::test]
async fn a_dripped_request_head_is_cut_off_after_the_header_timeout() {
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_disabled_bucket(BUCKET)
            .with_server_yaml("header_timeout_secs: 1"),
    );
    let mut conn = RawConnection::connect(server.addr()).await.unwrap();
    conn.send(b"GET /a.txt HTTP/1.1\r\n").await.unwrap();
    // One byte every 200 ms: each read is quick, the head never completes.
    let mut cut_off = false;
    for byte in b"X-Drip: ".iter().cycle().take(50) {
        if conn.send(&[*byte]).await.is_err()
            || conn.closed_by_peer_within(Duration::from_millis(200)).await
        {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "a head dripped for 10 s was never cut off");
    assert!(
        !server.stderr_text().contains("ERROR"),
        "a slow client is not an operator's error:\n{}",
        server.stderr_text()
    );
}

#[tokio::test]
async fn a_client_leaving_mid_head_is_not_logged_as_an_error() {
    let server = Originpull::start(OriginpullConfig::new().with_disabled_bucket(BUCKET));
    {
        let mut conn = RawConnection::connect(server.addr()).await.unwrap();
        conn.send(b"GET /a.txt HTTP/1.1\r\nHost: x").await.unwrap();
    }
    // Still served afterwards, and nothing at error level.
    let resp = raw_get(server.addr(), &server.host(BUCKET), "/a.txt").await;
    assert_eq!(resp.status, 404);
    assert!(
        !server
            .wait_for_stderr("ERROR", Duration::from_secs(2))
            .await,
        "{}",
        server.stderr_text()
    );
}

#[tokio::test]
async fn a_head_over_the_limit_gets_431_and_normal_clients_are_still_served() {
    let server = Originpull::start(OriginpullConfig::new().with_disabled_bucket(BUCKET));
    let host = server.host(BUCKET);

    let big = get_request(
        &host,
        "/a.txt",
        &format!("X-Big: {}\r\nConnection: close\r\n", "b".repeat(40 * 1024)),
    );
    let resp = raw_request(server.addr(), big.as_bytes()).await;
    assert_eq!(resp.status, 431);
    assert_eq!(resp.header("content-type"), Some("application/xml"));
    let xml = resp.body_text();
    assert!(
        xml.contains("<Code>RequestHeaderSectionTooLarge</Code>"),
        "{xml}"
    );
    assert!(xml.contains("<Resource>/a.txt</Resource>"), "{xml}");
    let request_id = resp
        .header("x-originpull-request-id")
        .expect("a request id")
        .to_string();
    // In the access log like any answered request, under its request id.
    assert!(
        server
            .wait_for_stderr(
                "method=\"GET\" key=\"\" status=431 result=bad_request",
                Duration::from_secs(5)
            )
            .await,
        "{}",
        server.stderr_text()
    );
    assert!(server
        .stderr_text()
        .contains(&format!("request_id={request_id}")));

    // Just under the default 32 KiB limit is still a request like any other.
    let large_but_allowed = get_request(
        &host,
        "/a.txt",
        &format!("X-Big: {}\r\nConnection: close\r\n", "b".repeat(30 * 1024)),
    );
    let resp = raw_request(server.addr(), large_but_allowed.as_bytes()).await;
    assert_eq!(resp.status, 404);
    let resp = raw_get(server.addr(), &host, "/a.txt").await;
    assert_eq!(resp.status, 404);
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_and_those_below_are_served() {
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_disabled_bucket(BUCKET)
            .with_server_yaml("max_connections: 2"),
    );
    let host = server.host(BUCKET);
    let request = get_request(&host, "/a.txt", "");

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = RawConnection::connect(server.addr()).await.unwrap();
        assert_eq!(conn.request(request.as_bytes()).await.unwrap().status, 404);
        held.push(conn);
    }
    let mut third = RawConnection::connect(server.addr()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), third.request(request.as_bytes()))
        .await
        .expect("the connection over the cap was neither answered nor closed");
    assert!(
        answer.is_err(),
        "a connection over the cap was served: {answer:?}"
    );
    assert!(
        server
            .metric("originpull_connections_refused_total", &[])
            .await
            >= 1.0
    );

    // Once one closes, a new connection is served again.
    held.pop();
    let served = wait_until(Duration::from_secs(10), || async {
        match RawConnection::connect(server.addr()).await {
            Ok(mut conn) => {
                matches!(conn.request(request.as_bytes()).await, Ok(r) if r.status == 404)
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(
        served,
        "no connection was served after one below the cap closed"
    );
}

#[tokio::test]
async fn sigterm_on_an_idle_server_exits_at_once() {
    let mut server =
        start_with_grace_period(OriginpullConfig::new().with_disabled_bucket(BUCKET), 30);
    // An idle keep-alive connection is not a running request.
    let mut idle = RawConnection::connect(server.addr()).await.unwrap();
    let resp = idle
        .request(get_request(&server.host(BUCKET), "/a.txt", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(resp.status, 404);

    server.signal("TERM");
    // Far below the 30 s grace period; the margin is for a loaded test machine.
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("an idle server waited out its grace period after SIGTERM");
    assert!(status.success(), "{status}");
}

/// Asks for `/slow.bin` (a gated route of `origin`) and waits until its copy is held at the
/// origin: a copy running for as long as the test keeps the gate shut.
async fn start_a_held_copy(server: &Originpull, origin: &TestOrigin) {
    assert_eq!(get(server, BUCKET, "/slow.bin").await.status(), 302);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            origin.gate_waiting("/slow.bin") == 1
        })
        .await,
        "the copy of /slow.bin never reached the origin"
    );
}

#[tokio::test]
async fn sigterm_waits_for_a_running_copy_then_exits() {
    let origin = TestOrigin::start();
    origin.route(
        "/slow.bin",
        Behavior::gate(b"copied before the stop".to_vec()),
    );
    let mut server = start_with_grace_period(
        OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()),
        30,
    );
    start_a_held_copy(&server, &origin).await;

    server.signal("TERM");
    assert!(
        server.wait_exit(Duration::from_secs(2)).is_none(),
        "the server exited with a copy still running"
    );
    origin.open_gate("/slow.bin");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("the server did not exit once its copy finished");
    assert!(status.success(), "{status}");

    server.restart();
    let (status, body) = get_body(&server, BUCKET, "/slow.bin").await;
    assert_eq!(status, 200);
    assert_eq!(body, b"copied before the stop");
}

#[tokio::test]
async fn during_a_graceful_stop_a_keep_alive_connection_gets_one_last_answer_then_is_closed() {
    let origin = TestOrigin::start();
    origin.route("/slow.bin", Behavior::gate(b"holds the stop open".to_vec()));
    origin.route("/a.txt", Behavior::ok(b"a".to_vec()));
    let mut server = start_with_grace_period(
        OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()),
        30,
    );
    let host = server.host(BUCKET);
    let mut kept = RawConnection::connect(server.addr()).await.unwrap();
    let first = kept
        .request(get_request(&host, "/a.txt", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(first.status, 302);
    assert_ne!(first.header("connection"), Some("close"));
    // A running copy keeps the stopping server up.
    start_a_held_copy(&server, &origin).await;

    server.signal("TERM");
    // The stop is seen by the next wait of the idle connection: give the signal a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = kept
        .request(get_request(&host, "/a.txt", "").as_bytes())
        .await
        .unwrap();
    // 200 once the first request's copy of /a.txt has landed, 302 before.
    assert!(matches!(last.status, 200 | 302), "{last:?}");
    assert_eq!(last.header("connection"), Some("close"), "{last:?}");
    assert!(kept.closed_by_peer_within(Duration::from_secs(5)).await);

    origin.open_gate("/slow.bin");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("the server did not exit once its copy finished");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn reload_counters_start_at_zero_and_copies_have_no_unrouted_series() {
    let server = Originpull::start(OriginpullConfig::new().with_disabled_bucket(BUCKET));
    // A request for an unknown host creates the `bucket=""` request series.
    let resp = raw_get(server.addr(), "nobody.example.com", "/a.txt").await;
    assert_eq!(resp.status, 404);
    // Requests are counted after their answer is sent: wait for the count, then read the rest.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            server
                .metric(
                    "originpull_requests_total",
                    &[("bucket", ""), ("result", "no_such_bucket")],
                )
                .await
                == 1.0
        })
        .await
    );

    let text = server.metrics_text().await;
    for outcome in ["ok", "error"] {
        assert_eq!(
            metric_sum(
                &text,
                "originpull_config_reloads_total",
                &[("outcome", outcome)]
            ),
            Some(0.0),
            "{outcome}:\n{text}"
        );
    }
    assert_eq!(
        metric_sum(
            &text,
            "originpull_requests_total",
            &[("bucket", ""), ("result", "no_such_bucket")]
        ),
        Some(1.0)
    );
    for family in [
        "originpull_fills_total",
        "originpull_fill_bytes_total",
        "originpull_fill_duration_seconds",
    ] {
        assert!(
            !text
                .lines()
                .any(|line| line.starts_with(family) && line.contains("bucket=\"\"")),
            "{family} has a bucket=\"\" series:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_client_leaving_mid_response_is_not_logged_as_an_error() {
    let origin = TestOrigin::start();
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    // Larger than loopback's socket buffers, so the server's writes must fail.
    let size = 64 * 1024 * 1024;
    store_through_a_copy(&server, &origin, "/big.bin", Behavior::generated(size)).await;

    for _ in 0..3 {
        let mut conn = RawConnection::connect(server.addr()).await.unwrap();
        conn.send(get_request(&server.host(BUCKET), "/big.bin", "").as_bytes())
            .await
            .unwrap();
        // Gone after the first bytes, long before 64 MiB could have been written.
        assert!(!conn.closed_by_peer_within(Duration::from_secs(5)).await);
    }
    assert!(
        server
            .wait_for_stderr("result=error", Duration::from_secs(10))
            .await,
        "the cut-off responses were not logged:\n{}",
        server.stderr_text()
    );
    assert!(
        !server.stderr_text().contains("ERROR"),
        "{}",
        server.stderr_text()
    );
}

/// A server with `send_timeout_secs: 1` that holds a 64 MiB object (larger than loopback's
/// socket buffers on both sides, so the server's writes to a slow client wait), and no open
/// connection.
async fn a_large_hit_with_a_one_second_send_timeout() -> (TestOrigin, Originpull) {
    let origin = TestOrigin::start();
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_server_yaml("send_timeout_secs: 1"),
    );
    let size = 64 * 1024 * 1024;
    store_through_a_copy(&server, &origin, "/big.bin", Behavior::generated(size)).await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            open_connections(&server).await == 0.0
        })
        .await,
        "connections from the copy's polling stayed open"
    );
    (origin, server)
}

async fn open_connections(server: &Originpull) -> f64 {
    server.metric("originpull_connections_open", &[]).await
}

#[tokio::test]
async fn a_client_that_stops_reading_a_large_hit_is_disconnected_after_the_send_timeout() {
    let (_origin, server) = a_large_hit_with_a_one_second_send_timeout().await;
    let open = || open_connections(&server);

    // Asks for 64 MiB and never reads a byte.
    let mut stalled = RawConnection::connect(server.addr()).await.unwrap();
    stalled
        .send(get_request(&server.host(BUCKET), "/big.bin", "").as_bytes())
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || async { open().await == 1.0 }).await,
        "the stalled client's connection was not counted"
    );
    // One write blocked for send_timeout_secs closes it (well before any keep-alive timeout).
    assert!(
        wait_until(Duration::from_secs(10), || async { open().await == 0.0 }).await,
        "a client that stopped reading kept its connection past send_timeout_secs"
    );
    drop(stalled);
    // Ordinary traffic: in the access log as an error, not logged as a server error.
    assert!(
        server
            .wait_for_stderr("result=error", Duration::from_secs(10))
            .await,
        "{}",
        server.stderr_text()
    );
    assert!(
        !server.stderr_text().contains("ERROR"),
        "{}",
        server.stderr_text()
    );
}

#[tokio::test]
async fn a_client_reading_a_large_hit_far_too_slowly_is_disconnected_after_the_send_timeout() {
    let (_origin, server) = a_large_hit_with_a_one_second_send_timeout().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut slow = socket.connect(server.addr()).await.unwrap();
    slow.write_all(get_request(&server.host(BUCKET), "/big.bin", "").as_bytes())
        .await
        .unwrap();
    // 8 KiB every 250 ms: the server's writes keep making some progress, but far less than the
    // 256 KiB per send_timeout_secs a client that keeps them waiting must take.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0; 8 * 1024];
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if matches!(slow.read(&mut buf).await, Ok(0) | Err(_)) {
                break;
            }
        }
    });
    assert!(
        wait_until(Duration::from_secs(2), || async {
            open_connections(&server).await == 1.0
        })
        .await,
        "the slow client's connection was not counted"
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            open_connections(&server).await == 0.0
        })
        .await,
        "a client reading 32 KiB/s kept its connection past send_timeout_secs"
    );
    reader.abort();
}
