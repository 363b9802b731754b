//! Issue #2 end to end: the real binary on loopback, a real origin, real clients. Routing, the
//! 302 contract, hits with HEAD/Range/conditionals, request errors, hostile keys, config
//! validation, and crash safety of the store.

use std::time::Duration;

use crate::common::*;
use originpull_store::key::ObjectKey;
use originpull_store::{BucketStore, DiskStore, NewObject};

const BUCKET: &str = "example-1250000000";

/// Puts an object straight into a running server's bucket through the store interface.
async fn seed(server: &Originpull, bucket: &str, key: &str, body: &[u8], content_type: &str) {
    let store = DiskStore::open(server.data_dir()).expect("open store");
    let key = ObjectKey::from_request_path(&format!("/{key}")).expect("valid key");
    let mut writer = store.create(bucket, &key).await.expect("create");
    writer
        .write(bytes::Bytes::copy_from_slice(body))
        .await
        .expect("write");
    writer
        .commit(NewObject {
            content_type: Some(content_type.into()),
            headers: vec![
                ("cache-control".into(), "max-age=600".into()),
                (
                    "content-disposition".into(),
                    "inline; filename=\"x.bin\"".into(),
                ),
            ],
            ..NewObject::default()
        })
        .await
        .expect("commit");
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn seed_example_redirects_to_the_origin_with_the_exact_location() {
    // HEAD: the domain origin is never contacted (a HEAD miss copies nothing), so no DNS
    // lookup leaves this machine.
    let server = Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, "abc.example.com"));
    let resp = server
        .request(reqwest::Method::HEAD, BUCKET, "/1.jpg")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(
        header(&resp, "location"),
        Some("http://abc.example.com/1.jpg")
    );
    assert_eq!(header(&resp, "cache-control"), Some("no-store"));

    let resp = server
        .request(reqwest::Method::HEAD, BUCKET, "/dir/a%20b.jpg?x=1&y=%2F")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "location"),
        Some("http://abc.example.com/dir/a%20b.jpg?x=1&y=%2F")
    );
}

#[tokio::test]
async fn get_miss_redirects_keeping_the_configured_port() {
    let origin = TestOrigin::start();
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    let resp = get(&server, BUCKET, "/1.jpg").await;
    assert_eq!(resp.status(), 302);
    assert_eq!(
        header(&resp, "location"),
        Some(format!("http://{}/1.jpg", origin.authority()).as_str())
    );
    assert_eq!(header(&resp, "content-length"), Some("0"));
}

#[tokio::test]
async fn host_selects_the_bucket_case_insensitively_and_ignoring_the_port() {
    let server = Originpull::start(OriginpullConfig::new().with_disabled_bucket(BUCKET));
    seed(&server, BUCKET, "a.txt", b"hello", "text/plain").await;
    for host in [
        "example-1250000000.file.myqcloud.com",
        "Example-1250000000.FILE.myqcloud.com:8080",
    ] {
        let resp = raw_get(server.addr(), host, "/a.txt").await;
        assert_eq!(resp.status, 200, "{host}");
        assert_eq!(resp.body, b"hello");
    }
    for host in [
        "other-1.file.myqcloud.com",
        "file.myqcloud.com",
        "example-1250000000.file.myqcloud.com.evil.com",
        "127.0.0.1",
    ] {
        let resp = raw_get(server.addr(), host, "/a.txt").await;
        assert_eq!(resp.status, 404, "{host}");
        assert_eq!(resp.header("content-type"), Some("application/xml"));
        let body = resp.body_text();
        assert!(
            body.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
            "{body}"
        );
        assert!(body.contains("<Code>NoSuchBucket</Code>"), "{body}");
        assert!(body.contains("<RequestId>"), "{body}");
    }
}

#[tokio::test]
async fn disabled_origin_pull_answers_no_such_key() {
    let server = Originpull::start(OriginpullConfig::new().with_disabled_bucket(BUCKET));
    let resp = get(&server, BUCKET, "/missing.jpg").await;
    assert_eq!(resp.status(), 404);
    let body = resp.text().await.unwrap();
    assert!(body.contains("<Code>NoSuchKey</Code>"), "{body}");
    assert!(body.contains("<Resource>/missing.jpg</Resource>"), "{body}");
}

#[tokio::test]
async fn other_methods_get_405_with_allow_and_the_connection_survives() {
    let origin = TestOrigin::start();
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    seed(&server, BUCKET, "a.txt", b"hello", "text/plain").await;
    let host = server.host(BUCKET);
    let mut conn = RawConnection::connect(server.addr()).await.unwrap();
    for method in ["PUT", "POST", "DELETE", "PATCH", "OPTIONS"] {
        let req = format!("{method} /a.txt HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n");
        let resp = conn.request(req.as_bytes()).await.unwrap();
        assert_eq!(resp.status, 405, "{method}");
        assert_eq!(resp.header("allow"), Some("GET, HEAD"));
        assert!(resp.body_text().contains("<Code>MethodNotAllowed</Code>"));
    }
    // Same connection, still usable: answers kept keep-alive.
    let req = format!("GET /a.txt HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let resp = conn.request(req.as_bytes()).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"hello");
    assert_eq!(origin.total_hits(), 0, "405s never reach the origin");
}

#[tokio::test]
async fn hit_serves_body_and_stored_headers_and_head_matches() {
    let server = Originpull::start(OriginpullConfig::new().with_disabled_bucket(BUCKET));
    let body = generated_bytes(300_000);
    seed(&server, BUCKET, "photos/1.jpg", &body, "image/jpeg").await;

    let resp = get(&server, BUCKET, "/photos/1.jpg").await;
    assert_eq!(resp.status(), 200);
    let etag = format!("\"{}\"", md5_hex(&body));
    assert_eq!(header(&resp, "etag"), Some(etag.as_str()));
    assert_eq!(header(&resp, "content-length"), Some("300000"));
    assert_eq!(header(&resp, "content-type"), Some("image/jpeg"));
    assert_eq!(header(&resp, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&resp, "cache-control"), Some("max-age=600"));
    assert_eq!(
        header(&resp, "content-disposition"),
        Some("inline; filename=\"x.bin\"")
    );
    assert!(header(&resp, "last-modified").is_some());
    let get_headers = resp.headers().clone();
    assert_eq!(resp.bytes().await.unwrap().as_ref(), body.as_slice());

    let head = server
        .request(reqwest::Method::HEAD, BUCKET, "/photos/1.jpg")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    for name in [
        "etag",
        "content-length",
        "content-type",
        "last-modified",
        "cache-control",
    ] {
        assert_eq!(head.headers().get(name), get_headers.get(name), "{name}");
    }
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn ranges_give_206_and_unsatisfiable_ranges_give_416() {
    let server = Originpull::start(OriginpullConfig::new().with_disabled_bucket(BUCKET));
    let body = generated_bytes(1000);
    seed(&server, BUCKET, "r.bin", &body, "application/octet-stream").await;
    let cases: [(&str, std::ops::Range<usize>); 4] = [
        ("bytes=0-9", 0..10),
        ("bytes=-5", 995..1000),
        ("bytes=990-", 990..1000),
        ("bytes=500-5000", 500..1000),
    ];
    for (range, expected) in cases {
        let resp = get_range(&server, BUCKET, "/r.bin", range).await;
        assert_eq!(resp.status(), 206, "{range}");
        let content_range = format!("bytes {}-{}/1000", expected.start, expected.end - 1);
        assert_eq!(
            header(&resp, "content-range"),
            Some(content_range.as_str()),
            "{range}"
        );
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            &body[expected],
            "{range}"
        );
    }
    let resp = get_range(&server, BUCKET, "/r.bin", "bytes=1000-").await;
    assert_eq!(resp.status(), 416);
    assert_eq!(header(&resp, "content-range"), Some("bytes */1000"));
}

#[tokio::test]
async fn conditional_requests_give_304_and_412() {
    let server = Originpull::start(OriginpullConfig::new().with_disabled_bucket(BUCKET));
    seed(&server, BUCKET, "c.txt", b"conditional", "text/plain").await;
    let first = get(&server, BUCKET, "/c.txt").await;
    let etag = header(&first, "etag").unwrap().to_string();
    let last_modified = header(&first, "last-modified").unwrap().to_string();

    let send = |name: &'static str, value: String| {
        server
            .request(reqwest::Method::GET, BUCKET, "/c.txt")
            .header(name, value)
            .send()
    };
    let resp = send("If-None-Match", etag.clone()).await.unwrap();
    assert_eq!(resp.status(), 304);
    assert_eq!(header(&resp, "etag"), Some(etag.as_str()));
    assert!(resp.bytes().await.unwrap().is_empty());
    assert_eq!(
        send("If-None-Match", "\"other\"".into())
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        send("If-Modified-Since", last_modified.clone())
            .await
            .unwrap()
            .status(),
        304
    );
    assert_eq!(
        send("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT".into())
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(send("If-Match", etag.clone()).await.unwrap().status(), 200);
    let failed = send("If-Match", "\"other\"".into()).await.unwrap();
    assert_eq!(failed.status(), 412);
    assert!(failed
        .text()
        .await
        .unwrap()
        .contains("<Code>PreconditionFailed</Code>"));
    assert_eq!(
        send(
            "If-Unmodified-Since",
            "Mon, 01 Jan 2001 00:00:00 GMT".into()
        )
        .await
        .unwrap()
        .status(),
        412
    );
}

#[tokio::test]
async fn prefix_keys_coexist_and_an_empty_object_is_served() {
    let server = Originpull::start(OriginpullConfig::new().with_disabled_bucket(BUCKET));
    seed(&server, BUCKET, "a", b"A", "text/plain").await;
    seed(&server, BUCKET, "a/b", b"AB", "text/plain").await;
    seed(&server, BUCKET, "empty", b"", "text/plain").await;
    assert_eq!(get_body(&server, BUCKET, "/a").await, (200, b"A".to_vec()));
    assert_eq!(
        get_body(&server, BUCKET, "/a/b").await,
        (200, b"AB".to_vec())
    );
    assert_eq!(
        get_body(&server, BUCKET, "/a%2Fb").await,
        (200, b"AB".to_vec())
    );
    let resp = get(&server, BUCKET, "/empty").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-length"), Some("0"));
    let ranged = get_range(&server, BUCKET, "/empty", "bytes=0-").await;
    assert!(ranged.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn hostile_paths_never_reach_files_outside_the_bucket() {
    let origin = TestOrigin::start();
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    // Secrets beside and above the bucket directory, under names a traversal would aim for.
    let secret = b"TOP-SECRET-CONTENT-0123456789";
    std::fs::write(server.data_dir().join("secret.txt"), secret).unwrap();
    std::fs::write(server.temp_dir().join("secret.txt"), secret).unwrap();
    std::fs::write(server.config_path().with_file_name("passwd"), secret).unwrap();
    seed(&server, BUCKET, "ok.txt", b"fine", "text/plain").await;

    let long = "a".repeat(5000);
    let targets = [
        "/../secret.txt",
        "/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%2f..%2fsecret.txt",
        "/a/%2e%2e/%2e%2e/secret.txt",
        "/..%5csecret.txt",
        "/..\\..\\secret.txt",
        "/a%00b",
        "/%00",
        "/a%0d%0aX-Injected:%201",
        "/./secret.txt",
        "/%",
        "/%ff%fe",
        "//../secret.txt",
        "/../../../../../../../../etc/passwd",
        &format!("/{long}"),
        "/",
    ];
    for target in targets {
        let resp = raw_get(server.addr(), &server.host(BUCKET), target).await;
        assert!(
            [400, 302].contains(&resp.status),
            "{target}: unexpected status {}",
            resp.status
        );
        let text = String::from_utf8_lossy(&resp.body).to_string();
        assert!(!text.contains("TOP-SECRET"), "{target} leaked: {text}");
        assert!(resp.header("x-injected").is_none(), "{target}");
        if resp.status == 400 {
            assert!(
                text.contains("<Code>InvalidURI</Code>")
                    || text.contains("<Code>KeyTooLongError</Code>"),
                "{target}: {text}"
            );
        }
        if let Some(location) = resp.header("location") {
            assert!(
                location.starts_with(&format!("http://{}/", origin.authority())),
                "{location}"
            );
            assert!(
                !location.bytes().any(|b| b.is_ascii_control() || b == b' '),
                "{location:?}"
            );
        }
    }
    // Raw bytes a client library would refuse: the server must answer cleanly or close.
    for raw in [
        b"GET /a\x01b HTTP/1.1\r\nHost: example-1250000000.file.myqcloud.com\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /\xc3\xa9t\xc3\xa9.txt HTTP/1.1\r\nHost: example-1250000000.file.myqcloud.com\r\nConnection: close\r\n\r\n".to_vec(),
    ] {
        if let Ok(resp) = try_raw_request(server.addr(), &raw, Duration::from_secs(5)).await {
            assert!(!String::from_utf8_lossy(&resp.body).contains("TOP-SECRET"));
            if let Some(location) = resp.header("location") {
                assert!(location.is_ascii() && !location.contains(' '), "{location:?}");
            }
        }
    }
    // Still serving.
    assert_eq!(
        get_body(&server, BUCKET, "/ok.txt").await,
        (200, b"fine".to_vec())
    );
}

#[tokio::test]
async fn query_strings_cannot_inject_headers_into_the_redirect() {
    let origin = TestOrigin::start();
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    let resp = raw_get(
        server.addr(),
        &server.host(BUCKET),
        "/1.jpg?a=%0d%0aSet-Cookie:%20x=1&b=%22",
    )
    .await;
    assert_eq!(resp.status, 302);
    assert!(resp.header("set-cookie").is_none());
    let location = resp.header("location").unwrap();
    assert!(
        location.starts_with(&format!(
            "http://{}/1.jpg?a=%0d%0aSet-Cookie",
            origin.authority()
        )),
        "{location}"
    );
    assert!(
        !location
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'"'),
        "{location:?}"
    );
}

#[test]
fn config_check_reports_each_error_with_bucket_and_field() {
    let base = "listen: 127.0.0.1:8080\ndata_dir: ./data\ndomain_suffix: file.myqcloud.com\n";
    let bucket = |origin_pull: &str| {
        format!("{base}buckets:\n  - name: example-1250000000\n    origin_pull: {origin_pull}\n")
    };
    let cases = [
        (
            bucket("{enabled: true}"),
            "bucket \"example-1250000000\": origin_pull.origin: is required",
        ),
        (
            bucket("{enabled: true, origin: ''}"),
            "origin_pull.origin: must not be empty",
        ),
        (
            bucket("{enabled: true, origin: 'http://abc.example.com'}"),
            "has a scheme",
        ),
        (
            bucket("{enabled: true, origin: 'https://abc.example.com'}"),
            "has a scheme",
        ),
        (
            bucket("{enabled: true, origin: 'abc.example.com/img'}"),
            "contains a path",
        ),
        (
            bucket("{enabled: true, origin: 'me@abc.example.com'}"),
            "contains user info",
        ),
        (
            bucket("{enabled: true, origin: 'abc example.com'}"),
            "contains spaces",
        ),
        (
            bucket("{enabled: true, origin: 'abc.example.com:0'}"),
            "bad port",
        ),
        (
            bucket("{enabled: true, origin: 'abc.example.com:70000'}"),
            "above 65535",
        ),
        (
            bucket("{enabled: true, origin: 'abc.example.com:eighty'}"),
            "not a number",
        ),
        (
            bucket("{enabled: true, origin: 'abc_.example.com'}"),
            "not a valid host name",
        ),
        (
            bucket("{enabled: true, orign: 'abc.example.com'}"),
            "origin_pull.orign: unknown key",
        ),
        (
            format!("{base}buckets:\n  - name: Example_1\n"),
            "bucket \"Example_1\": name:",
        ),
        (
            format!("{base}buckets:\n  - name: a-1\n  - name: a-1\n"),
            "bucket \"a-1\": name: duplicate bucket name",
        ),
        (format!("{base}listn: 1\n"), "top level: listn: unknown key"),
        (
            format!("{base}fill: {{concurency: 3}}\n"),
            "fill.concurency: unknown key",
        ),
    ];
    for (yaml, needle) in &cases {
        let (code, output) = validate_config(yaml);
        assert_eq!(code, 1, "{needle}: {output}");
        assert!(output.contains(needle), "expected {needle:?} in:\n{output}");
        assert!(
            output.contains("host[:port]") || !needle.contains("origin:"),
            "{output}"
        );
    }
    for origin in [
        "abc.example.com",
        "abc.example.com:8080",
        "10.10.10.10",
        "10.10.10.10:8080",
        "[::1]:8080",
    ] {
        let (code, output) =
            validate_config(&bucket(&format!("{{enabled: true, origin: '{origin}'}}")));
        assert_eq!(code, 0, "{origin}: {output}");
        assert!(output.contains("is valid"), "{output}");
    }
    let (code, _) = validate_config(&bucket("{enabled: false}"));
    assert_eq!(code, 0);
    // Every error in one run, not just the first.
    let (code, output) = validate_config(&format!(
        "{base}buckets:\n  - name: a-1\n    origin_pull: {{enabled: true}}\n  - name: b-1\n    origin_pull: {{enabled: true, origin: 'http://x'}}\n"
    ));
    assert_eq!(code, 1);
    assert!(
        output.contains("bucket \"a-1\"") && output.contains("bucket \"b-1\""),
        "{output}"
    );
}

#[tokio::test]
async fn kill_during_a_copy_then_restart_shows_no_partial_object() {
    let origin = TestOrigin::start();
    let body = generated_bytes(4 * 1024 * 1024);
    origin.route(
        "/big.bin",
        Behavior::Slow {
            body: body.clone(),
            chunk: 256 * 1024,
            delay_ms: 100,
            headers: vec![],
        },
    );
    let mut server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    assert_eq!(get(&server, BUCKET, "/big.bin").await.status(), 302);
    // Wait until the copy has written part of the object into a temporary file.
    let tmp = server.bucket_dir(BUCKET).join("tmp");
    let partial = wait_until(Duration::from_secs(10), || async {
        std::fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
            })
            .unwrap_or(false)
    })
    .await;
    assert!(partial, "copy never started writing");
    server.kill9();
    server.restart();
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "leftover temporaries are removed"
    );
    // The key is absent (a miss again: 302), never a truncated 200.
    let resp = server
        .request(reqwest::Method::HEAD, BUCKET, "/big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    // A fresh GET copies it whole.
    assert_eq!(get(&server, BUCKET, "/big.bin").await.status(), 302);
    let whole = wait_until(Duration::from_secs(20), || async {
        server
            .request(reqwest::Method::HEAD, BUCKET, "/big.bin")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(whole, "the second copy did not land");
    let (status, stored) = get_body(&server, BUCKET, "/big.bin").await;
    assert_eq!(status, 200);
    assert_eq!(md5_hex(&stored), md5_hex(&body));
}

#[tokio::test]
async fn the_memory_tier_serves_hot_objects_and_rereads_the_store_after_revalidate_secs() {
    let origin = TestOrigin::start();
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_extra_yaml("memory_cache:\n  max_bytes: 1048576\n  max_object_bytes: 65536\n  revalidate_secs: 1\n"),
    );
    seed(&server, BUCKET, "hot.txt", b"hot object", "text/plain").await;
    assert_eq!(
        get_body(&server, BUCKET, "/hot.txt").await,
        (200, b"hot object".to_vec())
    );
    // The file goes away behind the server's back (an operator cleaning up).
    let store = DiskStore::open(server.data_dir()).unwrap();
    let key = ObjectKey::from_request_path("/hot.txt").unwrap();
    std::fs::remove_file(store.object_path(BUCKET, &key)).unwrap();
    let ranged = get_range(&server, BUCKET, "/hot.txt", "bytes=4-").await;
    assert_eq!(
        ranged.status(),
        206,
        "served from memory within revalidate_secs"
    );
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), b"object");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(&server, BUCKET, "/hot.txt").await.status(),
        302,
        "store re-read after it"
    );
}

#[tokio::test]
async fn a_store_failure_is_a_500_with_an_xml_body_and_the_server_keeps_serving() {
    let server = Originpull::start(OriginpullConfig::new().with_disabled_bucket(BUCKET));
    // A directory where the object's file should be: opening works, reading fails.
    let store = DiskStore::open(server.data_dir()).unwrap();
    let key = ObjectKey::from_request_path("/broken").unwrap();
    std::fs::create_dir_all(store.object_path(BUCKET, &key)).unwrap();
    let resp = get(&server, BUCKET, "/broken").await;
    assert_eq!(resp.status(), 500);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("<Code>InternalError</Code>"));
    seed(&server, BUCKET, "fine", b"ok", "text/plain").await;
    assert_eq!(
        get_body(&server, BUCKET, "/fine").await,
        (200, b"ok".to_vec())
    );
}
