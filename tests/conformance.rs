//! Issue #19 item 4: HTTP/1 conformance of the request line and `Host`, each request sent on a
//! raw socket to originpull and to nginx serving the same object under the same host, and
//! answered alike: no `Host` in HTTP/1.1 is 400 (RFC 9112 §3.2); an absolute-form target is
//! routed by its authority (§3.2.2); a raw space in the target is 400; `HTTP/1.2` is served
//! as HTTP/1.1 and another major version is 505 (RFC 9110 §2.5). Where originpull answers the
//! error itself, the body is the XML error and the request counts as `bad_request`.

use std::time::Duration;

use crate::common::*;

const BUCKET: &str = "example-1250000000";
const BODY: &str = "the object's body\n";

fn host() -> String {
    format!("{BUCKET}.{DEFAULT_DOMAIN_SUFFIX}")
}

/// One request on a fresh connection; `None` when the server closed without an answer.
async fn send(addr: std::net::SocketAddr, request: &str) -> Option<RawResponse> {
    try_raw_request(addr, request.as_bytes(), Duration::from_secs(10))
        .await
        .ok()
}

#[tokio::test]
async fn request_lines_and_hosts_are_answered_as_nginx_answers_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("site");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("key.txt"), BODY).unwrap();
    let Some(nginx) = NginxOrigin::start_for(&root, &[&host(), "127.0.0.1"]) else {
        return;
    };
    // nginx is the bucket's origin too: the object is copied from it before the comparison,
    // so both serve it.
    let server = Originpull::start(OriginpullConfig::new().with_bucket_yaml(&format!(
        "name: {BUCKET}\norigin_pull:\n  enabled: true\n  origin: {}\n",
        nginx.addr()
    )));
    assert_eq!(
        raw_get(server.addr(), &host(), "/key.txt").await.status,
        302
    );
    assert!(server.wait_stored(BUCKET, "/key.txt").await);

    let h = host();
    let edge = server.addr();
    // (what, request, status, originpull answers it with its XML error code)
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        (
            "HTTP/1.1 without Host",
            "GET /key.txt HTTP/1.1\r\n\r\n".into(),
            400,
            Some("BadRequest"),
        ),
        (
            "HTTP/1.0 without Host: no bucket",
            "GET /key.txt HTTP/1.0\r\n\r\n".into(),
            404,
            Some("NoSuchBucket"),
        ),
        (
            "absolute-form, Host of the listener",
            format!("GET http://{h}/key.txt HTTP/1.1\r\nHost: {edge}\r\nConnection: close\r\n\r\n"),
            200,
            None,
        ),
        (
            "absolute-form, upper-case scheme and a port",
            format!("GET HTTP://{h}:8080/key.txt HTTP/1.1\r\nHost: elsewhere\r\nConnection: close\r\n\r\n"),
            200,
            None,
        ),
        (
            "absolute-form, HTTP/1.0 without Host",
            format!("GET http://{h}/key.txt HTTP/1.0\r\n\r\n"),
            200,
            None,
        ),
        (
            "absolute-form, HTTP/1.1 without Host",
            format!("GET http://{h}/key.txt HTTP/1.1\r\nConnection: close\r\n\r\n"),
            400,
            Some("BadRequest"),
        ),
        (
            "absolute-form naming no bucket, Host naming the bucket",
            format!("GET http://other.example/key.txt HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n"),
            404,
            Some("NoSuchBucket"),
        ),
        (
            "raw space in the target",
            format!("GET /key .txt HTTP/1.1\r\nHost: {h}\r\n\r\n"),
            400,
            Some("InvalidURI"),
        ),
        (
            "raw space in the query",
            format!("GET /key.txt?a=1 2 HTTP/1.1\r\nHost: {h}\r\n\r\n"),
            400,
            Some("InvalidURI"),
        ),
        (
            "HTTP/1.2",
            format!("GET /key.txt HTTP/1.2\r\nHost: {h}\r\nConnection: close\r\n\r\n"),
            200,
            None,
        ),
        (
            "HTTP/2.0 over HTTP/1",
            format!("GET /key.txt HTTP/2.0\r\nHost: {h}\r\n\r\n"),
            505,
            Some("HttpVersionNotSupported"),
        ),
        (
            "HTTP/3.0 over HTTP/1",
            format!("GET /key.txt HTTP/3.0\r\nHost: {h}\r\n\r\n"),
            505,
            Some("HttpVersionNotSupported"),
        ),
    ];
    let mut refused_by_originpull = 0.0;
    for (what, request, status, xml_code) in &cases {
        let reference = send(nginx.addr(), request)
            .await
            .unwrap_or_else(|| panic!("{what}: nginx gave no answer"));
        assert_eq!(reference.status, *status, "{what}: nginx's answer changed");
        let answer = send(edge, request)
            .await
            .unwrap_or_else(|| panic!("{what}: originpull gave no answer"));
        assert_eq!(answer.status, *status, "{what}: {answer:?}");
        assert_eq!(answer.version, "HTTP/1.1", "{what}");
        match xml_code {
            None => assert_eq!(answer.body_text(), BODY, "{what}"),
            Some(code) => {
                assert_eq!(
                    answer.header("content-type"),
                    Some("application/xml"),
                    "{what}"
                );
                assert!(
                    answer
                        .body_text()
                        .contains(&format!("<Error><Code>{code}</Code>")),
                    "{what}: {}",
                    answer.body_text()
                );
                assert!(answer.header("x-originpull-request-id").is_some(), "{what}");
                if *code != "NoSuchBucket" {
                    refused_by_originpull += 1.0;
                }
            }
        }
    }
    assert_eq!(
        server
            .metric(
                "originpull_requests_total",
                &[("bucket", ""), ("result", "bad_request")]
            )
            .await,
        refused_by_originpull
    );
}

#[tokio::test]
async fn a_refused_request_line_closes_the_connection_and_serves_nothing_after_it() {
    let origin = TestOrigin::start();
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    let h = host();
    for bad in [
        format!("GET /a b HTTP/1.1\r\nHost: {h}\r\n\r\n"),
        format!("GET /a HTTP/2.0\r\nHost: {h}\r\n\r\n"),
    ] {
        let mut conn = RawConnection::connect(server.addr()).await.unwrap();
        // A second request pipelined behind it is not answered: the framing of a refused
        // request is not trusted.
        let pipelined = format!("{bad}GET /next HTTP/1.1\r\nHost: {h}\r\n\r\n");
        let answer = conn.request(pipelined.as_bytes()).await.unwrap();
        assert!(matches!(answer.status, 400 | 505), "{bad:?}: {answer:?}");
        assert_eq!(answer.header("connection"), Some("close"), "{bad:?}");
        assert!(
            conn.closed_by_peer_within(Duration::from_secs(5)).await,
            "{bad:?}: the connection stayed open"
        );
    }
    assert_eq!(origin.total_hits(), 0);
}
