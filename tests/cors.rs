//! Issue #14, CORS: a bucket's `cors` rules add `Access-Control-*` headers to every response of
//! a routed request (hit, 304, 302, error) and answer `OPTIONS` preflights, with S3's
//! CORSRule semantics. The real binary, a real origin, byte-exact requests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use crate::common::*;
use originpull_config::Config;
use originpull_server::answer::cors::CorsReply;
use pingora::http::{RequestHeader, ResponseHeader};

/// Counts the allocations of the thread that asked for counting, to prove the CORS step of a
/// request without `Origin` allocates nothing.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<Option<usize>> = const { Cell::new(None) };
}

// A counting allocator is unsafe by nature: it forwards to the system allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get().map(|n| n + 1)));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(Some(0)));
    f();
    ALLOCATIONS.with(|n| n.replace(None)).unwrap_or(0)
}

const BUCKET: &str = "example-1250000000";
const SITE: &str = "https://www.example.com";

/// The bucket of the example, with `origin` as its origin and `rules` as its `cors`.
fn bucket_yaml(origin: &str, rules: &str) -> String {
    format!("name: {BUCKET}\norigin_pull:\n  enabled: true\n  origin: {origin}\n{rules}")
}

/// The same bucket answering every miss with a redirect, CORS requests too (by default those
/// are mirrored: tests/site.rs), for the headers of a 302.
fn redirecting_bucket_yaml(origin: &str, rules: &str) -> String {
    format!(
        "name: {BUCKET}\norigin_pull:\n  enabled: true\n  origin: {origin}\n  cors_misses: redirect\n{rules}"
    )
}

const EXAMPLE_RULES: &str = "cors:
  - allowed_origins: [\"https://www.example.com\", \"https://*.example.com\"]
    allowed_methods: [GET, HEAD]
    allowed_headers: [\"*\"]
    expose_headers: [ETag, Content-Length]
    max_age_secs: 3600
";

const STAR_RULES: &str = "cors:
  - allowed_origins: [\"*\"]
    allowed_methods: [GET]
";

/// A request with `Origin: origin` (and `extra` header lines), read byte-exact.
async fn request(
    server: &Originpull,
    method: &str,
    target: &str,
    origin: Option<&str>,
    extra: &str,
) -> RawResponse {
    let origin_line = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let text = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\n{origin_line}{extra}Connection: close\r\n\r\n",
        server.host(BUCKET)
    );
    raw_request(server.addr(), text.as_bytes()).await
}

fn preflight_headers(method: &str, headers: &str) -> String {
    let mut extra = format!("Access-Control-Request-Method: {method}\r\n");
    if !headers.is_empty() {
        extra.push_str(&format!("Access-Control-Request-Headers: {headers}\r\n"));
    }
    extra
}

/// Puts `/app.js` in the bucket the way users do: a miss, then the copy.
async fn copy_into_bucket(server: &Originpull, origin: &TestOrigin) -> String {
    origin.route("/app.js", Behavior::ok(b"console.log(1)".to_vec()));
    assert_eq!(
        request(server, "GET", "/app.js", None, "").await.status,
        302
    );
    let stored = wait_until(Duration::from_secs(10), || async {
        request(server, "GET", "/app.js", None, "").await.status == 200
    })
    .await;
    assert!(stored, "the copy never landed");
    let hit = request(server, "GET", "/app.js", None, "").await;
    hit.header("etag").unwrap_or_default().to_string()
}

fn assert_allowed_for(resp: &RawResponse, origin: &str) {
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some(origin),
        "{resp:?}"
    );
    assert_eq!(
        resp.header("access-control-expose-headers"),
        Some("ETag, Content-Length")
    );
    assert!(resp.header_all("vary").contains(&"Origin"), "{resp:?}");
}

fn assert_no_allow(resp: &RawResponse) {
    assert!(
        !resp
            .headers
            .iter()
            .any(|(name, _)| name.starts_with("access-control-")),
        "{resp:?}"
    );
}

#[tokio::test]
async fn a_matching_origin_gets_the_headers_on_302_hit_304_and_errors() {
    let origin = TestOrigin::start();
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket_yaml(&redirecting_bucket_yaml(&origin.authority(), EXAMPLE_RULES)),
    );

    let redirect = request(&server, "GET", "/missing.js", Some(SITE), "").await;
    assert_eq!(redirect.status, 302);
    assert_allowed_for(&redirect, SITE);
    assert_eq!(
        redirect.header("access-control-allow-credentials"),
        Some("true")
    );

    let etag = copy_into_bucket(&server, &origin).await;
    let sub = "https://cdn.example.com";
    let hit = request(&server, "GET", "/app.js", Some(sub), "").await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body, b"console.log(1)");
    assert_allowed_for(&hit, sub);

    let head = request(&server, "HEAD", "/app.js", Some(SITE), "").await;
    assert_eq!(head.status, 200);
    assert_allowed_for(&head, SITE);

    let inm = format!("If-None-Match: {etag}\r\n");
    let not_modified = request(&server, "GET", "/app.js", Some(SITE), &inm).await;
    assert_eq!(not_modified.status, 304);
    assert_allowed_for(&not_modified, SITE);

    let error = request(&server, "GET", "/bad%zzescape", Some(SITE), "").await;
    assert_eq!(error.status, 400);
    assert!(error.body_text().contains("<Code>InvalidURI</Code>"));
    assert_allowed_for(&error, SITE);
}

#[tokio::test]
async fn an_origin_no_rule_allows_gets_no_cors_headers_but_vary() {
    let origin = TestOrigin::start();
    let server = Originpull::start(
        OriginpullConfig::new().with_bucket_yaml(&bucket_yaml(&origin.authority(), EXAMPLE_RULES)),
    );
    copy_into_bucket(&server, &origin).await;
    for (origin_header, method) in [
        (Some("https://evil.com"), "GET"),
        // `*.example.com` needs a label before `.example.com`.
        (Some("https://example.com"), "GET"),
        (Some("http://www.example.com"), "GET"),
        // The method is not in the rule.
        (Some(SITE), "DELETE"),
        (None, "GET"),
    ] {
        let resp = request(&server, method, "/app.js", origin_header, "").await;
        assert_no_allow(&resp);
        // The answer depends on Origin, so shared caches must key on it.
        assert_eq!(resp.header_all("vary"), vec!["Origin"], "{resp:?}");
    }
}

#[tokio::test]
async fn a_star_rule_answers_star_without_credentials() {
    let origin = TestOrigin::start();
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket_yaml(&redirecting_bucket_yaml(&origin.authority(), STAR_RULES)),
    );
    let resp = request(&server, "GET", "/x.js", Some("https://anyone.test"), "").await;
    assert_eq!(resp.status, 302);
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    assert_eq!(resp.header("access-control-allow-credentials"), None);
    assert_eq!(resp.header("access-control-expose-headers"), None);
}

#[tokio::test]
async fn a_matching_preflight_gets_200_with_the_rule_and_no_body() {
    let origin = TestOrigin::start();
    let server = Originpull::start(
        OriginpullConfig::new().with_bucket_yaml(&bucket_yaml(&origin.authority(), EXAMPLE_RULES)),
    );
    let ask = preflight_headers("GET", "Range, X-Requested-With");
    let resp = request(&server, "OPTIONS", "/fonts/a.woff2", Some(SITE), &ask).await;
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert!(resp.body.is_empty());
    assert_eq!(resp.header("content-length"), Some("0"));
    assert_allowed_for(&resp, SITE);
    assert_eq!(
        resp.header("access-control-allow-methods"),
        Some("GET, HEAD")
    );
    assert_eq!(
        resp.header("access-control-allow-headers"),
        Some("range, x-requested-with")
    );
    assert_eq!(resp.header("access-control-max-age"), Some("3600"));
    // A preflight copies nothing from the origin.
    assert_eq!(origin.total_hits(), 0);
}

#[tokio::test]
async fn a_preflight_no_rule_allows_gets_403_cors_response() {
    let origin = TestOrigin::start();
    let rules = "cors:
  - allowed_origins: [\"https://www.example.com\"]
    allowed_methods: [GET]
    allowed_headers: [range]
";
    let server = Originpull::start(
        OriginpullConfig::new().with_bucket_yaml(&bucket_yaml(&origin.authority(), rules)),
    );
    for (origin_header, ask) in [
        ("https://evil.com", preflight_headers("GET", "")),
        (SITE, preflight_headers("PUT", "")),
        (SITE, preflight_headers("GET", "range, authorization")),
    ] {
        let resp = request(&server, "OPTIONS", "/a.js", Some(origin_header), &ask).await;
        assert_eq!(resp.status, 403, "{ask}");
        assert_eq!(resp.header("content-type"), Some("application/xml"));
        let body = resp.body_text();
        assert!(body.contains("<Code>AccessForbidden</Code>"), "{body}");
        assert!(
            body.contains("<Message>CORSResponse: This CORS request is not allowed."),
            "{body}"
        );
        assert_no_allow(&resp);
    }
    // An Origin without the method it asks for: S3's 400.
    let resp = request(&server, "OPTIONS", "/a.js", Some(SITE), "").await;
    assert_eq!(resp.status, 400);
    assert!(resp.body_text().contains("<Code>BadRequest</Code>"));
    // No Origin: not a CORS request at all, so the 405 of any other method.
    let resp = request(
        &server,
        "OPTIONS",
        "/a.js",
        None,
        &preflight_headers("GET", ""),
    )
    .await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn without_cors_there_are_no_headers_and_preflights_get_403() {
    let origin = TestOrigin::start();
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    let resp = request(&server, "GET", "/a.js", Some(SITE), "").await;
    assert_eq!(resp.status, 302);
    assert_no_allow(&resp);
    assert!(resp.header("vary").is_none(), "{resp:?}");

    let resp = request(
        &server,
        "OPTIONS",
        "/a.js",
        Some(SITE),
        &preflight_headers("GET", ""),
    )
    .await;
    assert_eq!(resp.status, 403);
    assert!(resp
        .body_text()
        .contains("<Message>CORSResponse: CORS is not enabled for this bucket.</Message>"));
    // Counted in Pingora's logging phase, just after the answer is written.
    let counted = wait_until(Duration::from_secs(5), || async {
        server
            .metric(
                "originpull_requests_total",
                &[("bucket", BUCKET), ("result", "cors_forbidden")],
            )
            .await
            == 1.0
    })
    .await;
    assert!(
        counted,
        "the refused preflight was not counted as cors_forbidden"
    );
}

#[tokio::test]
async fn a_reload_applies_new_rules() {
    let origin = TestOrigin::start();
    let mut server = Originpull::start(
        OriginpullConfig::new().with_bucket_yaml(&bucket_yaml(&origin.authority(), "")),
    );
    let ask = preflight_headers("GET", "");
    let resp = request(&server, "OPTIONS", "/a.js", Some(SITE), &ask).await;
    assert_eq!(resp.status, 403);

    server.rewrite_config_with(
        OriginpullConfig::new().with_bucket_yaml(&bucket_yaml(&origin.authority(), EXAMPLE_RULES)),
    );
    let applied = wait_until(Duration::from_secs(5), || async {
        request(&server, "OPTIONS", "/a.js", Some(SITE), &ask)
            .await
            .status
            == 200
    })
    .await;
    assert!(applied, "the new cors rules were not applied");
    let resp = request(&server, "GET", "/a.js", Some(SITE), "").await;
    assert_allowed_for(&resp, SITE);

    // And removing them takes the headers away again.
    server.rewrite_config_with(
        OriginpullConfig::new().with_bucket_yaml(&bucket_yaml(&origin.authority(), "")),
    );
    let removed = wait_until(Duration::from_secs(5), || async {
        request(&server, "GET", "/a.js", Some(SITE), "")
            .await
            .header("access-control-allow-origin")
            .is_none()
    })
    .await;
    assert!(removed, "the removed cors rules still apply");
}

#[test]
fn a_request_without_origin_costs_no_allocation() {
    let config = Config::parse(&format!(
        "listen: 127.0.0.1:1\ndata_dir: d\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - {}",
        bucket_yaml("127.0.0.1:2", EXAMPLE_RULES).replace('\n', "\n    ")
    ))
    .expect("valid config");
    let rules = &config.buckets[0].cors;
    assert!(!rules.is_empty());
    let req = RequestHeader::build("GET", b"/app.js", None).unwrap();
    for bucket_rules in [&rules[..], &[]] {
        let mut resp = ResponseHeader::build(200, Some(8)).unwrap();
        let n = allocations_in(|| {
            let cors = CorsReply::for_request(bucket_rules, &req);
            cors.apply(&mut resp).unwrap();
        });
        assert_eq!(n, 0, "with {} rule(s)", bucket_rules.len());
    }
    // The counter itself works: a request with Origin copies it.
    let mut with_origin = req.clone();
    with_origin.insert_header("Origin", SITE).unwrap();
    let mut resp = ResponseHeader::build(200, Some(8)).unwrap();
    let n = allocations_in(|| {
        let cors = CorsReply::for_request(rules, &with_origin);
        cors.apply(&mut resp).unwrap();
    });
    assert!(n > 0);
    assert_eq!(
        resp.headers.get("access-control-allow-origin").unwrap(),
        SITE
    );
}

/// A real browser, headless: a page served by the origin `fetch()`es an object from the bucket
/// with a custom header, so Chromium sends a preflight first and then enforces the CORS headers
/// of the hit. Skipped, with a message, where no Chromium is installed outside CI.
#[tokio::test]
async fn a_browser_on_another_origin_can_fetch_from_the_bucket() {
    let origin = TestOrigin::start();
    let page_origin = format!("http://{}", origin.authority());
    let rules = format!(
        "cors:\n  - allowed_origins: [\"{page_origin}\"]\n    allowed_methods: [GET]\n    allowed_headers: [x-test]\n    expose_headers: [ETag]\n"
    );
    let server = Originpull::start(
        OriginpullConfig::new().with_bucket_yaml(&bucket_yaml(&origin.authority(), &rules)),
    );
    let etag = copy_into_bucket(&server, &origin).await;

    let object_url = format!(
        "http://{}:{}/app.js",
        server.host(BUCKET),
        server.addr().port()
    );
    let refused_url = format!(
        "http://{}:{}/other.js",
        server.host(BUCKET),
        server.addr().port()
    );
    // The page reports through its title; a fetch the browser refuses rejects with a TypeError.
    let page = format!(
        "<!doctype html><title>pending</title><script>
        const report = (r) => r.text().then(t => 'status=' + r.status + ' etag=' + r.headers.get('ETag') + ' body=' + t);
        Promise.all([
          fetch('{object_url}', {{headers: {{'X-Test': '1'}}}}).then(report, e => 'error=' + e.name),
          fetch('{refused_url}', {{headers: {{'X-Other': '1'}}}}).then(report, e => 'error=' + e.name),
        ]).then(results => {{ document.title = results.join(' | '); }});
        </script>"
    );
    origin.route(
        "/page.html",
        Behavior::ok_with_headers(page.into_bytes(), &[("Content-Type", "text/html")]),
    );

    let Some((title, stderr)) = chromium_title(&format!("{page_origin}/page.html")).await else {
        return;
    };
    let expected = format!("status=200 etag={etag} body=console.log(1) | error=TypeError");
    assert_eq!(title, expected, "stderr: {stderr}");
}
