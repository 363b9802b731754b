//! Issue #9 end to end: real-world origins. HTTPS with a test CA made here, several origins with
//! weights and backups (failover and back), redirects from the origin (followed to the same host
//! or another configured origin, refused elsewhere, hop limit), rules by key, the loop guard at
//! configuration and at run time, origin headers and query strings, and a reload that switches
//! origins under load.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;

const BUCKET: &str = "example-1250000000";
const WAIT: Duration = Duration::from_secs(15);

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A bucket whose `origin_pull` section is `origin_pull` (YAML, unindented).
fn bucket(origin_pull: &str) -> OriginpullConfig {
    let indented: String = origin_pull.lines().map(|l| format!("  {l}\n")).collect();
    OriginpullConfig::new().with_bucket_yaml(&format!(
        "name: {BUCKET}\norigin_pull:\n  enabled: true\n{indented}"
    ))
}

/// A port nothing listens on (bound once, then released).
fn closed_port() -> u16 {
    free_port()
}

#[tokio::test]
async fn https_origin_redirect_and_copy_verify_against_the_configured_ca() {
    let cert = TestCert::new();
    let origin = TestOrigin::start_tls(&cert);
    let body = generated_bytes(50_000);
    origin.route(
        "/img/1.jpg",
        Behavior::ok_with_headers(body.clone(), &[("Content-Type", "image/jpeg")]),
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = cert.write_ca(dir.path(), "ca.pem");
    let server = Originpull::start(bucket(&format!(
        "origins:\n  - address: localhost:{}\n    protocol: https\ntls:\n  ca_file: {}\n",
        origin.addr().port(),
        ca.display()
    )));

    let first = get(&server, BUCKET, "/img/1.jpg").await;
    assert_eq!(first.status(), 302);
    assert_eq!(
        location(&first),
        format!("https://localhost:{}/img/1.jpg", origin.addr().port())
    );
    assert!(
        server.wait_stored(BUCKET, "/img/1.jpg").await,
        "copy over TLS did not land"
    );
    let (status, stored) = get_body(&server, BUCKET, "/img/1.jpg").await;
    assert_eq!(status, 200);
    assert_eq!(md5_hex(&stored), md5_hex(&body));
    let request = &origin.requests("/img/1.jpg")[0];
    assert_eq!(
        request.header("host"),
        Some(format!("localhost:{}", origin.addr().port()).as_str())
    );
    assert_eq!(
        server
            .metric(
                "originpull_origin_fills_total",
                &[
                    ("bucket", BUCKET),
                    (
                        "origin",
                        &format!("https://localhost:{}", origin.addr().port())
                    ),
                    ("outcome", "stored")
                ]
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_stores_nothing_and_still_redirects() {
    let origin_cert = TestCert::new();
    let other_ca = TestCert::new();
    let origin = TestOrigin::start_tls(&origin_cert);
    origin.route("/a.txt", Behavior::ok(b"secret".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let ca = other_ca.write_ca(dir.path(), "other-ca.pem");
    let server = Originpull::start(bucket(&format!(
        "origins:\n  - address: 127.0.0.1:{}\n    protocol: https\ntls:\n  ca_file: {}\n",
        origin.addr().port(),
        ca.display()
    )));

    let first = get(&server, BUCKET, "/a.txt").await;
    assert_eq!(first.status(), 302);
    assert!(server.wait_fill_outcome(BUCKET, "origin_error", 1.0).await);
    assert_eq!(
        origin.hits("/a.txt"),
        0,
        "no request may pass an unverified handshake"
    );
    assert!(origin.tls_handshake_failures() >= 1);
    assert_eq!(server.head_status(BUCKET, "/a.txt").await, 302);
    assert!(
        server.stderr_text().contains("certificate") || server.stderr_text().contains("Cert"),
        "the log says why: {}",
        server.stderr_text()
    );
}

#[tokio::test]
async fn without_the_ca_file_a_private_ca_is_not_trusted() {
    let cert = TestCert::new();
    let origin = TestOrigin::start_tls(&cert);
    origin.route("/a.txt", Behavior::ok(b"x".to_vec()));
    let server = Originpull::start(bucket(&format!(
        "origins:\n  - address: localhost:{}\n    protocol: https\n",
        origin.addr().port()
    )));
    assert_eq!(get(&server, BUCKET, "/a.txt").await.status(), 302);
    assert!(server.wait_fill_outcome(BUCKET, "origin_error", 1.0).await);
    assert_eq!(origin.hits("/a.txt"), 0);
}

#[tokio::test]
async fn failover_to_the_backup_and_back_to_the_primary() {
    let primary_port = closed_port();
    let backup = TestOrigin::start();
    for i in 0..20 {
        backup.route(&format!("/k{i}"), Behavior::ok(format!("backup {i}")));
    }
    let server = Originpull::start(
        bucket(&format!(
            "origins:\n  - address: 127.0.0.1:{primary_port}\n  - address: {}\n    backup: true\n",
            backup.authority()
        ))
        // Probes off: here copies alone find the primary down.
        .with_extra_yaml(
            "fill:\n  origin_down_after_failures: 2\n  origin_cool_off_secs: 2\n  origin_probe_interval_ms: 0\n",
        ),
    );
    let primary_label = format!("http://127.0.0.1:{primary_port}");

    // While the primary is believed up, redirects go to it; the copy cannot connect and is
    // made from the backup instead.
    let first = get(&server, BUCKET, "/k0").await;
    assert_eq!(location(&first), format!("{primary_label}/k0"));
    assert!(
        server.wait_stored(BUCKET, "/k0").await,
        "the backup did not serve the copy"
    );

    // Two failed connects mark the primary down: new redirects point at the backup.
    assert_eq!(get(&server, BUCKET, "/k1").await.status(), 302);
    assert!(server.wait_stored(BUCKET, "/k1").await);
    let moved = get(&server, BUCKET, "/k2").await;
    assert_eq!(
        location(&moved),
        format!("http://{}/k2", backup.authority())
    );
    assert_eq!(
        server
            .metric(
                "originpull_origin_up",
                &[("bucket", BUCKET), ("origin", &primary_label)]
            )
            .await,
        0.0
    );

    // The primary comes back; after the cool-off a copy tries it again and it takes over.
    let primary = TestOrigin::start_at(primary_port);
    for i in 0..20 {
        primary.route(&format!("/k{i}"), Behavior::ok(format!("primary {i}")));
    }
    let back = wait_until(WAIT, || async {
        let mut back = false;
        for i in 3..20 {
            let response = get(&server, BUCKET, &format!("/k{i}")).await;
            if location(&response).starts_with(&primary_label) {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        back
    })
    .await;
    assert!(back, "redirects never returned to the primary");
    assert!(
        wait_until(WAIT, || async { primary.total_hits() > 0 }).await,
        "no copy came from the primary"
    );
    let up = wait_until(WAIT, || async {
        server
            .metric(
                "originpull_origin_up",
                &[("bucket", BUCKET), ("origin", &primary_label)],
            )
            .await
            == 1.0
    })
    .await;
    assert!(up, "originpull_origin_up did not return to 1");
}

#[tokio::test]
async fn within_five_seconds_of_a_primary_refusing_connections_redirects_go_to_the_backup() {
    let primary = TestOrigin::start();
    let primary_port = primary.addr().port();
    let backup = TestOrigin::start();
    // Defaults: probes every second, down after three failures.
    let server = Originpull::start(bucket(&format!(
        "origins:\n  - address: 127.0.0.1:{primary_port}\n  - address: {}\n    backup: true\n",
        backup.authority()
    )));
    let head_location = |path: &'static str| {
        let request = server.request(reqwest::Method::HEAD, BUCKET, path);
        async move { location(&request.send().await.unwrap()) }
    };
    assert!(head_location("/a")
        .await
        .contains(&format!("127.0.0.1:{primary_port}")));

    // The primary goes away; only HEADs arrive, so no copy reports it: the probes must.
    drop(primary);
    let gone = std::time::Instant::now();
    let moved = wait_until(Duration::from_secs(5), || async {
        head_location("/a").await.contains(&backup.authority())
    })
    .await;
    assert!(
        moved,
        "redirects still point at a primary that refuses connections"
    );
    assert!(gone.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn weights_share_keys_among_primaries() {
    let heavy = TestOrigin::start();
    let light = TestOrigin::start();
    let server = Originpull::start(bucket(&format!(
        "origins:\n  - address: {}\n    weight: 3\n  - address: {}\n    weight: 1\n",
        heavy.authority(),
        light.authority()
    )));
    let mut by_origin: HashMap<String, usize> = HashMap::new();
    for i in 0..400 {
        // HEAD: redirected, never copied.
        let response = server
            .request(reqwest::Method::HEAD, BUCKET, &format!("/obj/{i}.bin"))
            .send()
            .await
            .unwrap();
        let target = location(&response);
        let authority = target
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        *by_origin.entry(authority).or_default() += 1;
        // The same key always goes to the same origin.
        let again = server
            .request(reqwest::Method::HEAD, BUCKET, &format!("/obj/{i}.bin"))
            .send()
            .await
            .unwrap();
        assert_eq!(location(&again), target);
    }
    let heavy_share = by_origin.get(&heavy.authority()).copied().unwrap_or(0);
    let light_share = by_origin.get(&light.authority()).copied().unwrap_or(0);
    assert_eq!(heavy_share + light_share, 400, "{by_origin:?}");
    assert!(
        (240..=360).contains(&heavy_share),
        "weight 3:1 should give the heavy origin about 300 of 400 keys: {by_origin:?}"
    );
}

#[tokio::test]
async fn copies_follow_redirects_that_keep_the_path_to_other_origins_of_the_bucket() {
    let cert = TestCert::new();
    let https = TestOrigin::start_tls(&cert);
    https.route("/a.txt", Behavior::ok(b"from https".to_vec()));
    let http = TestOrigin::start();
    // The classic move: http answers 301 to the https site (another configured origin, by name).
    http.route(
        "/a.txt",
        Behavior::Raw {
            bytes: format!(
                "HTTP/1.1 301 Moved Permanently\r\nLocation: https://localhost:{}/a.txt\r\nContent-Length: 0\r\n\r\n",
                https.addr().port()
            )
            .into_bytes(),
            close: false,
        },
    );
    // A redirect to another path is the origin's answer for the key, not the object.
    http.route(
        "/b.txt",
        Behavior::Raw {
            bytes: b"HTTP/1.1 302 Found\r\nLocation: /moved/b.txt\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
            close: false,
        },
    );
    http.route("/moved/b.txt", Behavior::ok(b"moved b".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let ca = cert.write_ca(dir.path(), "ca.pem");
    let server = Originpull::start(bucket(&format!(
        "origins:\n  - address: {}\n  - address: localhost:{}\n    protocol: https\n    backup: true\ntls:\n  ca_file: {}\n",
        http.authority(),
        https.addr().port(),
        ca.display()
    )));

    assert_eq!(get(&server, BUCKET, "/a.txt").await.status(), 302);
    assert!(
        server.wait_stored(BUCKET, "/a.txt").await,
        "301 to the https origin not followed"
    );
    assert_eq!(get_body(&server, BUCKET, "/a.txt").await.1, b"from https");
    assert_eq!(get(&server, BUCKET, "/b.txt").await.status(), 302);
    assert!(server.wait_fill_outcome(BUCKET, "origin_status", 1.0).await);
    assert_eq!(http.hits("/moved/b.txt"), 0, "the redirect was followed");
    assert_eq!(server.head_status(BUCKET, "/b.txt").await, 302, "stored");
}

#[tokio::test]
async fn a_redirect_to_a_foreign_host_is_not_followed_and_hops_are_limited() {
    let elsewhere = TestOrigin::start();
    elsewhere.route("/x.txt", Behavior::ok(b"foreign".to_vec()));
    let origin = TestOrigin::start();
    origin.route(
        "/x.txt",
        Behavior::Raw {
            // 127.0.0.2 is not a configured origin of the bucket.
            bytes: format!(
                "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:{}/x.txt\r\nContent-Length: 0\r\n\r\n",
                elsewhere.addr().port()
            )
            .into_bytes(),
            close: false,
        },
    );
    for hop in 0..3 {
        origin.route(
            &format!("/hop{hop}"),
            Behavior::Raw {
                bytes: format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: /hop{}\r\nContent-Length: 0\r\n\r\n",
                    hop + 1
                )
                .into_bytes(),
                close: false,
            },
        );
    }
    origin.route("/hop3", Behavior::ok(b"end of chain".to_vec()));
    let server = Originpull::start(bucket(&format!(
        "origin: {}\nfollow_redirects: 2\n",
        origin.authority()
    )));

    assert_eq!(get(&server, BUCKET, "/x.txt").await.status(), 302);
    assert!(
        server
            .wait_fill_outcome(BUCKET, "redirect_refused", 1.0)
            .await
    );
    assert_eq!(
        elsewhere.total_hits(),
        0,
        "the edge was led to a foreign host"
    );
    assert_eq!(server.head_status(BUCKET, "/x.txt").await, 302);

    // Three hops with a limit of two: nothing stored.
    assert_eq!(get(&server, BUCKET, "/hop0").await.status(), 302);
    assert!(server.wait_fill_outcome(BUCKET, "origin_status", 1.0).await);
    assert_eq!(origin.hits("/hop3"), 0);
    assert_eq!(server.head_status(BUCKET, "/hop0").await, 302);
}

#[tokio::test]
async fn follow_redirects_zero_stores_nothing_for_a_3xx() {
    let origin = TestOrigin::start();
    origin.route(
        "/a",
        Behavior::Raw {
            bytes: b"HTTP/1.1 301 Moved\r\nLocation: /b\r\nContent-Length: 0\r\n\r\n".to_vec(),
            close: false,
        },
    );
    origin.route("/b", Behavior::ok(b"b".to_vec()));
    let server = Originpull::start(bucket(&format!(
        "origin: {}\nfollow_redirects: 0\n",
        origin.authority()
    )));
    assert_eq!(get(&server, BUCKET, "/a").await.status(), 302);
    assert!(server.wait_fill_outcome(BUCKET, "origin_status", 1.0).await);
    assert_eq!(origin.hits("/b"), 0);
}

#[tokio::test]
async fn rules_override_by_key_prefix_and_suffix() {
    let main = TestOrigin::start();
    let old_cdn = TestOrigin::start();
    old_cdn.route("/assets/app.js", Behavior::ok(b"app".to_vec()));
    main.route("/docs/a.txt", Behavior::ok(b"doc".to_vec()));
    main.route("/video/small.png", Behavior::ok(b"png".to_vec()));
    let server = Originpull::start(bucket(&format!(
        "origin: {main}\nrules:\n  - prefix: video/\n    suffix: .mp4\n    enabled: false\n  - prefix: static/\n    origins: [{{address: '{old}'}}]\n    replace_prefix: assets/\n    redirect_code: 307\n  - prefix: docs/\n    redirect_code: 301\n    follow_redirects: 0\n",
        main = main.authority(),
        old = old_cdn.authority()
    )));

    // enabled: false → 404, no copy.
    let off = get(&server, BUCKET, "/video/clip.mp4").await;
    assert_eq!(off.status(), 404);
    assert!(off.text().await.unwrap().contains("<Code>NoSuchKey</Code>"));
    // Only keys with both prefix and suffix match: this one is pulled.
    assert_eq!(get(&server, BUCKET, "/video/small.png").await.status(), 302);
    assert!(server.wait_stored(BUCKET, "/video/small.png").await);

    // origins + replace_prefix + redirect_code.
    let rewritten = get(&server, BUCKET, "/static/app.js").await;
    assert_eq!(rewritten.status(), 307);
    assert_eq!(
        location(&rewritten),
        format!("http://{}/assets/app.js", old_cdn.authority())
    );
    assert!(server.wait_stored(BUCKET, "/static/app.js").await);
    assert_eq!(get_body(&server, BUCKET, "/static/app.js").await.1, b"app");
    assert_eq!(main.hits("/static/app.js") + main.hits("/assets/app.js"), 0);

    // redirect_code from another rule; the rest comes from the bucket.
    let docs = get(&server, BUCKET, "/docs/a.txt").await;
    assert_eq!(docs.status(), 301);
    assert_eq!(
        location(&docs),
        format!("http://{}/docs/a.txt", main.authority())
    );
    assert_eq!(main.requests("/video/clip.mp4").len(), 0);
}

#[tokio::test]
async fn origin_headers_and_the_query_string_reach_the_copy_when_asked() {
    let origin = TestOrigin::start();
    origin.route("/q.txt", Behavior::ok(b"q".to_vec()));
    origin.route("/n.txt", Behavior::ok(b"n".to_vec()));
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket_yaml(&format!(
                "name: {BUCKET}\norigin_pull:\n  enabled: true\n  origin: {}\n  pass_query_string: true\n  origin_headers:\n    X-Pull-From: edge\n",
                origin.authority()
            ))
            .with_bucket_yaml(&format!(
                "name: other-1250000000\norigin_pull:\n  enabled: true\n  origin: {}\n",
                origin.authority()
            )),
    );
    assert_eq!(
        get(&server, BUCKET, "/q.txt?sign=a%2Fb&t=1").await.status(),
        302
    );
    assert!(server.wait_stored(BUCKET, "/q.txt").await);
    let request = &origin.requests("/q.txt")[0];
    assert_eq!(request.target, "/q.txt?sign=a%2Fb&t=1");
    assert_eq!(request.header("x-pull-from"), Some("edge"));

    assert_eq!(
        get(&server, "other-1250000000", "/n.txt?x=1")
            .await
            .status(),
        302
    );
    assert!(
        wait_until(WAIT, || async { origin.hits("/n.txt") > 0 }).await,
        "no copy"
    );
    let request = &origin.requests("/n.txt")[0];
    assert_eq!(
        request.target, "/n.txt",
        "query string sent without pass_query_string"
    );
    assert_eq!(request.header("x-pull-from"), None);
}

#[tokio::test]
async fn an_answer_from_an_originpull_is_a_loop_and_stores_nothing() {
    let origin = TestOrigin::start();
    origin.route(
        "/loop.txt",
        Behavior::ok_with_headers(b"looped".to_vec(), &[("x-originpull-request-id", "0123")]),
    );
    let server = Originpull::start(bucket(&format!("origin: {}\n", origin.authority())));
    assert_eq!(get(&server, BUCKET, "/loop.txt").await.status(), 302);
    assert!(server.wait_fill_outcome(BUCKET, "loop", 1.0).await);
    assert_eq!(server.head_status(BUCKET, "/loop.txt").await, 302);
}

#[tokio::test]
async fn two_originpulls_pulling_from_each_other_are_caught_at_run_time() {
    // B's origin is A; A's origin is B: A's copy reaches B, which answers with its 302.
    let a_port = free_port();
    let b = Originpull::start(bucket(&format!("origin: 127.0.0.1:{a_port}\n")));
    let _a = {
        let config = bucket(&format!("origin: {}\n", b.addr()));
        Originpull::start_at(config, a_port)
    };
    let response = reqwest_get_host(a_port, "/ping.txt").await;
    assert_eq!(response, 302);
    let looped = wait_until(WAIT, || async {
        metric_sum(
            &reqwest::get(format!("http://{}/metrics", _a.metrics_addr()))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "originpull_fills_total",
            &[("bucket", BUCKET), ("outcome", "loop")],
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(
        looped,
        "the copy through another originpull was not seen as a loop"
    );
}

async fn reqwest_get_host(port: u16, path: &str) -> u16 {
    http_client()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", format!("{BUCKET}.{DEFAULT_DOMAIN_SUFFIX}"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[test]
fn the_loop_guard_refuses_origins_that_are_originpull_itself() {
    let yaml = |origin: &str| {
        format!(
            "listen: 127.0.0.1:8080\ndata_dir: ./d\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - name: {BUCKET}\n    origin_pull:\n      enabled: true\n      origins:\n        - address: \"{origin}\"\n"
        )
    };
    for origin in [
        "other-1250000000.file.myqcloud.com",
        "file.myqcloud.com",
        "127.0.0.1:8080",
        "localhost:8080",
        // A connection to the unspecified address reaches this host's loopback, and an
        // IPv4-mapped address is the IPv4 address.
        "0.0.0.0:8080",
        "[::ffff:127.0.0.1]:8080",
    ] {
        let (code, text) = validate_config(&yaml(origin));
        assert_eq!(code, 1, "{origin}: {text}");
        assert!(
            text.contains(&format!(
                "bucket \"{BUCKET}\": origin_pull.origins[0].address:"
            )) && text.contains("loop"),
            "{origin}: {text}"
        );
    }
    let (code, text) = validate_config(&yaml("127.0.0.1:8081"));
    assert_eq!(code, 0, "{text}");
}

/// Issue #19: the same rule for every form of the listen address: the unspecified address
/// (IPv6's takes IPv4 too: Linux's dual stack) and an IPv4-mapped one.
#[test]
fn the_loop_guard_knows_unspecified_and_ipv4_mapped_listen_addresses() {
    let yaml = |listen: &str, origin: &str| {
        format!(
            "listen: \"{listen}\"\ndata_dir: ./d\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - name: {BUCKET}\n    origin_pull:\n      enabled: true\n      origins:\n        - address: \"{origin}\"\n"
        )
    };
    // (listen, origin, whether the origin is the edge itself)
    let cases = [
        ("0.0.0.0:8080", "127.0.0.1:8080", true),
        ("0.0.0.0:8080", "127.0.0.2:8080", true),
        ("0.0.0.0:8080", "0.0.0.0:8080", true),
        ("0.0.0.0:8080", "[::ffff:127.0.0.1]:8080", true),
        ("0.0.0.0:8080", "localhost:8080", true),
        ("[::]:8080", "127.0.0.1:8080", true),
        ("[::]:8080", "[::1]:8080", true),
        ("[::]:8080", "[::]:8080", true),
        ("[::]:8080", "0.0.0.0:8080", true),
        ("[::1]:8080", "[::]:8080", true),
        ("[::1]:8080", "localhost:8080", true),
        ("[::ffff:127.0.0.1]:8080", "127.0.0.1:8080", true),
        ("0.0.0.0:8080", "127.0.0.1:8081", false),
        ("0.0.0.0:8080", "[::1]:8080", false),
        ("127.0.0.1:8080", "127.0.0.2:8080", false),
        ("127.0.0.1:8080", "[::1]:8080", false),
        ("127.0.0.1:8080", "[::]:8080", false),
        ("[::1]:8080", "127.0.0.1:8080", false),
        ("[::1]:8080", "0.0.0.0:8080", false),
    ];
    for (listen, origin, is_edge) in cases {
        let (code, text) = validate_config(&yaml(listen, origin));
        let what = format!("listen {listen}, origin {origin}: {text}");
        assert_eq!(code, if is_edge { 1 } else { 0 }, "{what}");
        assert_eq!(text.contains("loop"), is_edge, "{what}");
    }
}

#[test]
fn config_errors_name_the_bucket_the_rule_and_the_field() {
    let (code, text) = validate_config(&format!(
        "listen: 127.0.0.1:8080\ndata_dir: ./d\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - name: {BUCKET}\n    origin_pull:\n      enabled: true\n      origins:\n        - address: a.example.com\n          protocol: ftp\n          weight: 0\n        - address: https://b.example.com\n      redirect_code: 303\n      follow_redirects: 99\n      tls: {{ca_file: /nonexistent/ca.pem}}\n      origin_headers: {{Host: x, 'Bad Name': y, X-Ok: \"a\\nb\"}}\n      rules:\n        - prefix: a/\n          replace_prefix: /b/\n          origins: [{{address: c.example.com, backup: true}}]\n        - suffix: .mp4\n          enabled: true\n          redirect_code: 200\n          bogus: 1\n"
    ));
    assert_eq!(code, 1, "{text}");
    for needle in [
        "bucket \"example-1250000000\": origin_pull.origins[0].protocol: `ftp`",
        "bucket \"example-1250000000\": origin_pull.origins[0].weight:",
        "bucket \"example-1250000000\": origin_pull.origins[1].address: `https://b.example.com` has a scheme",
        "bucket \"example-1250000000\": origin_pull.redirect_code: 303",
        "bucket \"example-1250000000\": origin_pull.follow_redirects: must be at most 10",
        "bucket \"example-1250000000\": origin_pull.origin_headers.Host:",
        "bucket \"example-1250000000\": origin_pull.origin_headers.Bad Name:",
        "bucket \"example-1250000000\": origin_pull.origin_headers.X-Ok:",
        "bucket \"example-1250000000\": origin_pull.rules[0].replace_prefix: must be a key prefix",
        "bucket \"example-1250000000\": origin_pull.rules[0].origins: every origin is a backup",
        "bucket \"example-1250000000\": origin_pull.rules[1].redirect_code: 200",
        "bucket \"example-1250000000\": origin_pull.rules[1].bogus: unknown key",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    // A missing CA file is found by -t too (once the shape is valid), naming the field.
    let (code, text) = validate_config(&format!(
        "listen: 127.0.0.1:8080\ndata_dir: ./d\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - name: {BUCKET}\n    origin_pull:\n      enabled: true\n      origins: [{{address: a.example.com, protocol: https}}]\n      tls: {{ca_file: /nonexistent/ca.pem}}\n"
    ));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("bucket \"example-1250000000\": origin_pull.tls.ca_file: cannot read /nonexistent/ca.pem"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reload_switches_origins_under_load_without_failed_requests() {
    let old = TestOrigin::start();
    let new = TestOrigin::start();
    let mut server = Originpull::start(bucket(&format!("origin: {}\n", old.authority())));
    let host = server.host(BUCKET);
    let base = server.base_url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (host, base, stop) = (host.clone(), base.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = http_client();
            let (mut ok, mut failed, mut to_new) = (0usize, 0usize, 0usize);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                match client
                    .head(format!("{base}/c{c}/{i}"))
                    .header("host", &host)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 302 => {
                        ok += 1;
                        if location(&r).contains(&new_authority_marker()) {
                            to_new += 1;
                        }
                    }
                    _ => failed += 1,
                }
            }
            (ok, failed, to_new)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_new_authority_marker(&new.authority());
    server.rewrite_config_with(bucket(&format!(
        "origins: [{{address: '{}'}}]\n",
        new.authority()
    )));
    let switched = wait_until(WAIT, || async {
        let r = server
            .request(reqwest::Method::HEAD, BUCKET, "/probe")
            .send()
            .await
            .unwrap();
        location(&r).contains(&new.authority())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed, mut to_new) = (0, 0, 0);
    for client in clients {
        let (o, f, n) = client.await.unwrap();
        ok += o;
        failed += f;
        to_new += n;
    }
    assert!(switched, "the reload did not switch the origin");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across the reload",
        ok + failed
    );
    assert!(
        ok > 100 && to_new > 0,
        "ok {ok}, to the new origin {to_new}"
    );
}

static NEW_AUTHORITY: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn set_new_authority_marker(authority: &str) {
    *NEW_AUTHORITY.lock().unwrap() = authority.to_string();
}

fn new_authority_marker() -> String {
    let marker = NEW_AUTHORITY.lock().unwrap().clone();
    if marker.is_empty() {
        "\u{0}never".to_string()
    } else {
        marker
    }
}

#[tokio::test]
async fn index_documents_serve_folders_and_without_them_folders_redirect() {
    let origin = TestOrigin::start();
    origin.route("/", Behavior::ok(b"<h1>home</h1>".to_vec()));
    origin.route("/docs/", Behavior::ok(b"<h1>docs</h1>".to_vec()));
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket_yaml(&format!(
                "name: {BUCKET}\norigin_pull:\n  enabled: true\n  origin: {}\nwebsite:\n  index_document: index.html\n",
                origin.authority()
            ))
            .with_bucket_yaml(&format!(
                "name: plain-1250000000\norigin_pull:\n  enabled: true\n  origin: {}\n",
                origin.authority()
            ))
            .with_bucket_yaml("name: closed-1250000000\norigin_pull:\n  enabled: false\n"),
    );

    // With the index document: `/` is index.html, copied from the origin's `/`.
    let home = get(&server, BUCKET, "/").await;
    assert_eq!(home.status(), 302);
    assert_eq!(location(&home), format!("http://{}/", origin.authority()));
    assert!(server.wait_stored(BUCKET, "/").await);
    assert_eq!(get_body(&server, BUCKET, "/").await.1, b"<h1>home</h1>");
    assert_eq!(
        get_body(&server, BUCKET, "/index.html").await.1,
        b"<h1>home</h1>"
    );
    assert_eq!(get(&server, BUCKET, "/docs/").await.status(), 302);
    assert!(server.wait_stored(BUCKET, "/docs/").await);
    assert_eq!(
        get_body(&server, BUCKET, "/docs/index.html").await.1,
        b"<h1>docs</h1>"
    );

    // Without: a redirect to the same path, never copied.
    let before = origin.total_hits();
    let folder = get(&server, "plain-1250000000", "/docs/").await;
    assert_eq!(folder.status(), 302);
    assert_eq!(
        location(&folder),
        format!("http://{}/docs/", origin.authority())
    );
    let root = get(&server, "plain-1250000000", "/?a=1").await;
    assert_eq!(
        location(&root),
        format!("http://{}/?a=1", origin.authority())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(origin.total_hits(), before, "a folder was copied");

    // Origin-pull off and no index document: 404, not 400.
    let closed = get(&server, "closed-1250000000", "/").await;
    assert_eq!(closed.status(), 404);
}

/// Issue #19 item 6: a pooled TLS connection that one bucket's trust verified is never handed
/// to another bucket with other trust. Bucket A trusts the origin's private CA (`tls.ca_file`);
/// bucket B has the same origin (`localhost:PORT`) with the system roots only, and bucket C
/// the same origin with another private CA. Whatever copied before, B's and C's copies are
/// refused, and A's are stored.
#[tokio::test]
async fn a_pooled_tls_connection_is_never_reused_by_a_bucket_with_other_trust() {
    const TRUSTING: &str = "trusting-1250000000";
    const SYSTEM_ROOTS: &str = "system-1250000000";
    const OTHER_CA: &str = "otherca-1250000000";
    let cert = TestCert::new();
    let other = TestCert::new();
    let origin = TestOrigin::start_tls(&cert);
    for path in [
        "/a1.txt", "/a2.txt", "/b1.txt", "/b2.txt", "/c1.txt", "/c2.txt",
    ] {
        origin.route(path, Behavior::ok(format!("body of {path}")));
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = cert.write_ca(dir.path(), "ca.pem");
    let other_ca = other.write_ca(dir.path(), "other-ca.pem");
    let port = origin.addr().port();
    let https = format!("origins:\n    - address: localhost:{port}\n      protocol: https\n");
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket_yaml(&format!(
                "name: {TRUSTING}\norigin_pull:\n  enabled: true\n  {https}  tls:\n    ca_file: {}\n",
                ca.display()
            ))
            .with_bucket_yaml(&format!(
                "name: {SYSTEM_ROOTS}\norigin_pull:\n  enabled: true\n  {https}"
            ))
            .with_bucket_yaml(&format!(
                "name: {OTHER_CA}\norigin_pull:\n  enabled: true\n  {https}  tls:\n    ca_file: {}\n",
                other_ca.display()
            ))
            .with_extra_yaml("fill:\n  negative_ttl_secs: 0\n  origin_probe_interval_ms: 0\n"),
    );
    let refused = |bucket: &'static str, path: &'static str, nth: f64| {
        let server = &server;
        let origin = &origin;
        async move {
            assert_eq!(get(server, bucket, path).await.status(), 302);
            assert!(
                server.wait_fill_outcome(bucket, "origin_error", nth).await,
                "{bucket}{path}: the copy did not fail"
            );
            assert_eq!(
                origin.hits(path),
                0,
                "{bucket}{path}: a request reached the origin over a connection {bucket} does not trust"
            );
            assert_eq!(
                server.head_status(bucket, path).await,
                302,
                "{bucket}{path}"
            );
        }
    };

    // B first (nothing pooled yet): refused; then A: stored, its verified connection pooled.
    refused(SYSTEM_ROOTS, "/b1.txt", 1.0).await;
    assert_eq!(get(&server, TRUSTING, "/a1.txt").await.status(), 302);
    assert!(server.wait_stored(TRUSTING, "/a1.txt").await);
    // After A: B and C must not be handed A's connection.
    refused(SYSTEM_ROOTS, "/b2.txt", 2.0).await;
    refused(OTHER_CA, "/c1.txt", 1.0).await;
    // And A still copies after their refusals.
    assert_eq!(get(&server, TRUSTING, "/a2.txt").await.status(), 302);
    assert!(server.wait_stored(TRUSTING, "/a2.txt").await);
    refused(OTHER_CA, "/c2.txt", 2.0).await;
}
