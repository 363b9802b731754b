//! Issue #13, hostile input: request smuggling and parser abuse get a 4xx (with the XML body
//! where originpull answers) or a clean close, never a crash, and never a header or `Location`
//! carrying bytes the configuration and the request did not put there; many clients dripping
//! their heads do not keep a normal client from being served.

use std::time::Duration;

use crate::common::*;
use tokio::io::AsyncWriteExt;

const BUCKET: &str = "example-1250000000";

fn host() -> String {
    format!("{BUCKET}.{DEFAULT_DOMAIN_SUFFIX}")
}

/// Sends `request` on a fresh connection: the answer, or `None` when the server closed the
/// connection without one (a clean refusal).
async fn send(server: &Originpull, request: &[u8]) -> Option<RawResponse> {
    try_raw_request(server.addr(), request, Duration::from_secs(10))
        .await
        .ok()
}

/// The server still answers a normal request (it did not crash or wedge).
async fn still_serving(server: &Originpull) {
    let response = raw_get(server.addr(), &host(), "/still-here.txt").await;
    assert_eq!(response.status, 302, "the server stopped answering");
}

/// No header of `response` holds a byte a header must not hold, nor the attacker's marker.
fn assert_clean_headers(response: &RawResponse, what: &str) {
    for (name, value) in &response.headers {
        assert!(
            !value.bytes().any(|b| b.is_ascii_control() && b != b'\t'),
            "{what}: header {name} carries a control byte: {value:?}"
        );
        assert!(
            !name.contains("injected") && !value.contains("injected"),
            "{what}: an injected header reached the answer: {name}: {value}"
        );
    }
}

fn start() -> (TestOrigin, Originpull) {
    let origin = TestOrigin::start();
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    (origin, server)
}

#[tokio::test]
async fn smuggling_and_malformed_framing_are_refused() {
    let (origin, server) = start();
    let h = host();
    let cases: Vec<(&str, String)> = vec![
        (
            "CL+TE",
            format!("GET /a HTTP/1.1\r\nHost: {h}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /injected HTTP/1.1\r\nHost: {h}\r\n\r\n"),
        ),
        (
            "two Content-Lengths",
            format!("GET /a HTTP/1.1\r\nHost: {h}\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello"),
        ),
        (
            "two Host headers",
            format!("GET /a HTTP/1.1\r\nHost: {h}\r\nHost: other-1.{DEFAULT_DOMAIN_SUFFIX}\r\n\r\n"),
        ),
        (
            "obs-fold",
            format!("GET /a HTTP/1.1\r\nHost: {h}\r\nX-Folded: a\r\n injected: yes\r\n\r\n"),
        ),
        (
            "bare LF in a header value",
            format!("GET /a HTTP/1.1\r\nHost: {h}\r\nX-A: a\ninjected: yes\r\n\r\n"),
        ),
    ];
    for (what, request) in cases {
        match send(&server, request.as_bytes()).await {
            None => {}
            Some(response) => {
                assert_clean_headers(&response, what);
                // Either refused (4xx), or one request answered as the first framing says,
                // never the smuggled second one.
                assert!(
                    (400..500).contains(&response.status)
                        || response.status == 302
                            && response
                                .header("location")
                                .is_some_and(|l| l.ends_with("/a")),
                    "{what}: {} {:?}",
                    response.status,
                    response.headers
                );
            }
        }
        still_serving(&server).await;
    }
    assert_eq!(
        origin.hits("/injected"),
        0,
        "a smuggled request reached the origin"
    );
}

#[tokio::test]
async fn oversized_and_odd_request_heads_get_a_4xx_or_a_clean_close() {
    let (_origin, server) = start();
    let h = host();
    let long_uri = format!("/{}", "a".repeat(16 * 1024));
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "b".repeat(64 * 1024));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "16 KiB URI",
            format!("GET {long_uri} HTTP/1.1\r\nHost: {h}\r\n\r\n").into_bytes(),
        ),
        (
            "200 headers",
            format!("GET /a HTTP/1.1\r\nHost: {h}\r\n{many_headers}\r\n").into_bytes(),
        ),
        (
            "64 KiB header",
            format!("GET /a HTTP/1.1\r\nHost: {h}\r\n{big_header}\r\n").into_bytes(),
        ),
        (
            "NUL in the path",
            [
                b"GET /a\0b HTTP/1.1\r\nHost: ".as_ref(),
                h.as_bytes(),
                b"\r\n\r\n",
            ]
            .concat(),
        ),
        (
            "CR in the path",
            [
                b"GET /a\rinjected: x HTTP/1.1\r\nHost: ".as_ref(),
                h.as_bytes(),
                b"\r\n\r\n",
            ]
            .concat(),
        ),
        (
            "encoded CR LF in the path",
            format!("GET /a%0d%0ainjected:%20x HTTP/1.1\r\nHost: {h}\r\n\r\n").into_bytes(),
        ),
    ];
    for (what, request) in cases {
        if let Some(response) = send(&server, &request).await {
            assert_clean_headers(&response, what);
            assert!(
                (400..500).contains(&response.status) || response.status == 302,
                "{what}: {}",
                response.status
            );
            if response.status == 302 {
                let location = response.header("location").unwrap_or_default();
                assert!(
                    !location.bytes().any(|b| b.is_ascii_control() || b == b' '),
                    "{what}: {location:?}"
                );
            }
            let xml = response.header("content-type") == Some("application/xml");
            if response.status == 400 && xml {
                assert!(response.body_text().contains("<Error><Code>"), "{what}");
            }
        }
        still_serving(&server).await;
    }
}

#[tokio::test]
async fn the_location_carries_only_what_the_config_and_request_put_there() {
    let (_origin, server) = start();
    let h = host();
    for target in [
        "/a%0d%0aSet-Cookie:%20x=1",
        "/a?q=%0d%0aSet-Cookie:%20x=1",
        "/a?q=\"'<>{}|\\^`",
        "/%E2%80%A8?%E2%80%A9",
        "/a?%ff%fe",
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n");
        let Some(response) = send(&server, request.as_bytes()).await else {
            continue;
        };
        assert_clean_headers(&response, target);
        assert!(response.header("set-cookie").is_none(), "{target}");
        if let Some(location) = response.header("location") {
            assert!(
                location.starts_with(&format!("http://{}/", _origin.authority())),
                "{target}: {location}"
            );
            assert!(
                !location
                    .bytes()
                    .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii()),
                "{target}: {location:?}"
            );
        }
    }
}

#[tokio::test]
async fn clients_dripping_their_heads_do_not_block_a_normal_client() {
    let (_origin, server) = start();
    let mut drippers = Vec::new();
    for _ in 0..500 {
        let addr = server.addr();
        drippers.push(tokio::spawn(async move {
            let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            for byte in b"GET /slow HTTP/1.1\r\nHost: x\r\n" {
                if stream.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        let response = tokio::time::timeout(
            Duration::from_secs(2),
            raw_get(server.addr(), &host(), "/normal.txt"),
        )
        .await
        .expect("a normal client was not served while 500 clients dripped their heads");
        assert_eq!(response.status, 302);
    }
    for dripper in drippers {
        dripper.abort();
    }
}
