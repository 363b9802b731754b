//! Issue #22: the HTTPS listener with real clients. curl over HTTP/2 and HTTP/1.1 trusting a
//! test CA; certificates chosen by SNI (exact, wildcard, default); rotation on disk picked up
//! without a restart while a download on an old connection completes; a broken certificate on
//! reload keeps the old one; 421 for a reused HTTP/2 connection; a bucket at its own domains,
//! `https_redirect`, HSTS and `error_document`; the handshake timeout; headless Chromium
//! loading a page's assets over h2.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::tls::*;
use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUCKET: &str = "example-1250000000";
const HOST: &str = "example-1250000000.file.myqcloud.com";
const SHOP: &str = "static.shop.example";
const WAIT: Duration = Duration::from_secs(20);

/// originpull with an HTTPS listener: the default certificate for `edge.example`, a wildcard
/// for `*.file.myqcloud.com` and one for the bucket's own domain `static.shop.example`; the
/// bucket mirrors misses from `origin`.
struct Site {
    ca: TestCa,
    ca_file: PathBuf,
    certs_dir: tempfile::TempDir,
    default: IssuedCert,
    wildcard: IssuedCert,
    shop: IssuedCert,
    https_port: u16,
    server: Originpull,
    origin: TestOrigin,
}

fn bucket_yaml(origin: &TestOrigin, extra: &str) -> String {
    format!(
        "name: {BUCKET}\ndomains: [{SHOP}]\norigin_pull:\n  enabled: true\n  mode: mirror\n  origin: '{}'\n{extra}",
        origin.authority()
    )
}

fn start_site(bucket_extra: &str, server_yaml: &str) -> Site {
    let ca = TestCa::new();
    let certs_dir = tempfile::tempdir().expect("certs dir");
    let ca_file = ca.write(certs_dir.path());
    let default = ca.issue(&["edge.example"]);
    let wildcard = ca.issue(&["*.file.myqcloud.com"]);
    let shop = ca.issue(&[SHOP]);
    let files = vec![
        default.write(certs_dir.path(), "default"),
        wildcard.write(certs_dir.path(), "wildcard"),
        shop.write(certs_dir.path(), "shop"),
    ];
    let origin = TestOrigin::start();
    let https_port = free_port();
    let mut config = OriginpullConfig::new()
        .with_bucket_yaml(&bucket_yaml(&origin, bucket_extra))
        .with_extra_yaml(&https_yaml(https_port, &files, ""));
    if !server_yaml.is_empty() {
        config = config.with_server_yaml(server_yaml);
    }
    let server = Originpull::start(config);
    Site {
        ca,
        ca_file,
        certs_dir,
        default,
        wildcard,
        shop,
        https_port,
        server,
        origin,
    }
}

impl Site {
    fn curl(&self, host: &str, path: &str, http2: bool, extra: &[&str]) -> Option<CurlResult> {
        curl(&self.ca_file, host, self.https_port, path, http2, extra)
    }
}

#[tokio::test]
async fn curl_gets_http2_and_http1_and_sni_picks_exact_wildcard_or_default() {
    let site = start_site("", "");
    site.origin.route(
        "/a.txt",
        Behavior::ok_with_headers("hello over tls", &[("Content-Type", "text/plain")]),
    );
    let Some(h2) = site.curl(HOST, "/a.txt", true, &[]) else {
        return;
    };
    assert_eq!((h2.http_version.as_str(), h2.status), ("2", 200), "{h2:?}");
    assert_eq!(h2.body, b"hello over tls");
    let h1 = site.curl(HOST, "/a.txt", false, &[]).expect("curl");
    assert_eq!(
        (h1.http_version.as_str(), h1.status),
        ("1.1", 200),
        "{h1:?}"
    );
    assert_eq!(h1.body, b"hello over tls");
    // The bucket's own domain, over its own certificate (curl checks the name).
    let own = site.curl(SHOP, "/a.txt", true, &[]).expect("curl");
    assert_eq!(
        (own.http_version.as_str(), own.status),
        ("2", 200),
        "{own:?}"
    );

    let port = site.https_port;
    assert_eq!(served_serial(port, Some(SHOP)).await, site.shop.serial);
    assert_eq!(
        served_serial(port, Some("STATIC.shop.example")).await,
        site.shop.serial
    );
    assert_eq!(served_serial(port, Some(HOST)).await, site.wildcard.serial);
    // A wildcard covers one label only: two labels get the default.
    assert_eq!(
        served_serial(port, Some("a.b.file.myqcloud.com")).await,
        site.default.serial
    );
    assert_eq!(
        served_serial(port, Some("unknown.example")).await,
        site.default.serial
    );
    assert_eq!(served_serial(port, None).await, site.default.serial);

    assert_eq!(
        raw_get(site.server.addr(), HOST, "/a.txt").await.status,
        200
    );
    // An access log line is written after its answer is sent: wait for each. The first
    // request, a mirrored miss over HTTP/2, is logged as the whole answer it was.
    for fields in [
        "key=\"a.txt\" status=200 result=mirror origin=",
        "tls=1.3 proto=h2",
        "tls=1.3 proto=h1",
        "tls=- proto=h1",
    ] {
        let logged = site
            .server
            .wait_for_stderr(fields, Duration::from_secs(5))
            .await;
        assert!(logged, "no {fields}: {}", site.server.stderr_text());
    }
    let expiry = site
        .server
        .metric(
            "originpull_certificate_expiry_timestamp_seconds",
            &[("name", SHOP)],
        )
        .await;
    assert!(expiry > 1.0e9, "{expiry}");
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_handshakes_while_an_old_download_completes() {
    let site = start_site("", "");
    let big = 8 * 1024 * 1024;
    site.origin.route("/big.bin", Behavior::generated(big));
    // Stored first, so the download below is a hit read at the client's pace.
    let stored = site.curl(HOST, "/big.bin", false, &[]);
    if stored.is_none() {
        return;
    }
    assert!(
        wait_until(WAIT, || async {
            site.server
                .metric(
                    "originpull_fills_total",
                    &[("bucket", BUCKET), ("outcome", "stored")],
                )
                .await
                == 1.0
        })
        .await
    );

    let port = site.https_port;
    let mut old = tls_connect(port, Some(SHOP), &[b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(serial_of(&old), site.shop.serial);
    old.write_all(format!("GET /big.bin HTTP/1.1\r\nHost: {SHOP}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = vec![0u8; 64 * 1024];
    old.read_exact(&mut first).await.unwrap();

    // Replaced by rename, as certbot and cert-manager do.
    let renamed = site.ca.issue(&[SHOP]);
    let (tmp_cert, tmp_key) = renamed.write(site.certs_dir.path(), "shop-new");
    std::fs::rename(&tmp_key, site.certs_dir.path().join("shop.key")).unwrap();
    std::fs::rename(&tmp_cert, site.certs_dir.path().join("shop.pem")).unwrap();
    assert!(
        wait_until(WAIT, || async {
            served_serial(port, Some(SHOP)).await == renamed.serial
        })
        .await,
        "the renamed certificate is served"
    );
    // Rewritten in place.
    let in_place = site.ca.issue(&[SHOP]);
    write_private(&site.certs_dir.path().join("shop.key"), &in_place.key_pem);
    std::fs::write(site.certs_dir.path().join("shop.pem"), &in_place.cert_pem).unwrap();
    assert!(
        wait_until(WAIT, || async {
            served_serial(port, Some(SHOP)).await == in_place.serial
        })
        .await,
        "the certificate rewritten in place is served"
    );

    // The old connection was not cut: the rest of the download arrives.
    let head_len = String::from_utf8_lossy(&first)
        .find("\r\n\r\n")
        .expect("a head")
        + 4;
    let mut received = first.len();
    let mut buf = vec![0u8; 256 * 1024];
    while received < head_len + big as usize {
        match tokio::time::timeout(WAIT, old.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => received += n,
            Ok(Err(e)) => panic!("old connection failed: {e}"),
        }
    }
    assert_eq!(received, head_len + big as usize, "the whole body arrived");
    assert_eq!(
        site.server
            .metric("originpull_config_reloads_total", &[("outcome", "error")])
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_broken_certificate_on_reload_keeps_the_old_one_and_counts_a_failed_reload() {
    let site = start_site("", "");
    let port = site.https_port;
    assert_eq!(served_serial(port, Some(SHOP)).await, site.shop.serial);
    // A certificate whose key is another's: refused.
    let other = site.ca.issue(&[SHOP]);
    std::fs::write(site.certs_dir.path().join("shop.pem"), &other.cert_pem).unwrap();
    assert!(
        wait_until(WAIT, || async {
            site.server
                .metric("originpull_config_reloads_total", &[("outcome", "error")])
                .await
                >= 1.0
        })
        .await,
        "the broken certificate counts as a failed reload"
    );
    assert_eq!(
        site.server
            .metric("originpull_config_last_reload_successful", &[])
            .await,
        0.0
    );
    assert!(site.server.stderr_text().contains("does not match"));
    assert_eq!(served_serial(port, Some(SHOP)).await, site.shop.serial);
    // An expired one too.
    let expired = site.ca.issue_valid_for(&[SHOP], Duration::ZERO);
    expired.write(site.certs_dir.path(), "shop");
    assert!(site.server.wait_for_stderr("expired", WAIT).await);
    assert_eq!(served_serial(port, Some(SHOP)).await, site.shop.serial);
    // -t names the file.
    let (code, text) = run_to_exit(
        &std::fs::read_to_string(site.server.config_path()).unwrap(),
        &["-t"],
        WAIT,
    )
    .expect("-t finished");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("https.certificates[2]") && text.contains("shop.pem"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reused_http2_connection_for_a_name_its_certificate_does_not_cover_gets_421() {
    let site = start_site("", "");
    site.origin.route("/a.txt", Behavior::ok("a"));
    // curl sends the Host header as :authority; the TLS name stays the URL's.
    let Some(misdirected) = site.curl(SHOP, "/a.txt", true, &["-H", &format!("Host: {HOST}")])
    else {
        return;
    };
    assert_eq!(misdirected.status, 421, "{misdirected:?}");
    assert!(String::from_utf8_lossy(&misdirected.body).contains("<Code>MisdirectedRequest</Code>"));
    // A trailing dot and upper case are the same name.
    let same = site
        .curl(SHOP, "/a.txt", true, &["-H", "Host: STATIC.shop.example."])
        .expect("curl");
    assert_eq!(same.status, 200, "{same:?}");
    // HTTP/1.1 over TLS is routed by Host, as on the plain listener.
    let h1 = site
        .curl(SHOP, "/a.txt", false, &["-H", &format!("Host: {HOST}")])
        .expect("curl");
    assert_eq!(h1.status, 200, "{h1:?}");
}

#[tokio::test]
async fn own_domains_https_redirect_and_hsts() {
    let site = start_site("https_redirect: true\nhsts_max_age_secs: 600\n", "");
    site.origin.route("/a.txt", Behavior::ok("a"));
    let plain = raw_get(site.server.addr(), SHOP, "/a.txt?x=1").await;
    assert_eq!(plain.status, 301);
    assert_eq!(
        plain.header("location"),
        Some(format!("https://{SHOP}:{}/a.txt?x=1", site.https_port).as_str())
    );
    assert!(plain.header("strict-transport-security").is_none());
    // Never for ACME's HTTP-01 path.
    let challenge = raw_get(
        site.server.addr(),
        SHOP,
        "/.well-known/acme-challenge/token",
    )
    .await;
    assert_ne!(challenge.status, 301);
    let Some(secure) = site.curl(SHOP, "/a.txt", true, &[]) else {
        return;
    };
    assert_eq!(secure.status, 200);
    assert!(
        secure
            .headers
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=600"),
        "{}",
        secure.headers
    );
}

#[tokio::test]
async fn own_domains_route_on_plain_http_and_conflicts_name_both_buckets() {
    let origin = TestOrigin::start();
    origin.route("/a.txt", Behavior::ok("a"));
    let server = Originpull::start(OriginpullConfig::new().with_bucket_yaml(&format!(
        "name: {BUCKET}\ndomains: [{SHOP}]\norigin_pull:\n  enabled: true\n  origin: '{}'",
        origin.authority()
    )));
    let own = raw_get(server.addr(), "Static.Shop.Example.", "/a.txt").await;
    assert_eq!(own.status, 302);
    assert!(own.header("location").unwrap().ends_with("/a.txt"));
    let (code, text) = validate_config(&format!(
        "listen: 127.0.0.1:1\ndata_dir: d\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - name: a-1\n    domains: [{SHOP}]\n  - name: b-1\n    domains: [{SHOP}, c.file.myqcloud.com]\n"
    ));
    assert_eq!(code, 1);
    assert!(
        text.contains(&format!(
            "bucket \"b-1\": domains: `{SHOP}` is also listed by bucket \"a-1\""
        )),
        "{text}"
    );
    assert!(text.contains("bucket \"b-1\": domains: `c.file.myqcloud.com` is under domain_suffix"));
}

#[tokio::test]
async fn the_error_document_is_served_with_404_where_the_key_is_missing() {
    let site = start_site(
        "  rules:\n    - prefix: missing/\n      enabled: false\nwebsite:\n  error_document: 404.html\n",
        "",
    );
    let before = raw_get(site.server.addr(), HOST, "/missing/x").await;
    assert_eq!(before.status, 404);
    assert!(before.body_text().contains("<Code>NoSuchKey</Code>"));
    site.origin.route(
        "/404.html",
        Behavior::ok_with_headers("<h1>not here</h1>", &[("Content-Type", "text/html")]),
    );
    assert_eq!(
        raw_get(site.server.addr(), HOST, "/404.html").await.status,
        200
    );
    assert!(
        wait_until(WAIT, || async {
            raw_get(site.server.addr(), HOST, "/missing/x")
                .await
                .body_text()
                == "<h1>not here</h1>"
        })
        .await
    );
    let after = raw_get(site.server.addr(), HOST, "/missing/x").await;
    assert_eq!(after.status, 404);
    assert_eq!(after.header("content-type"), Some("text/html"));
    // An origin 404 in mirror mode too.
    site.origin.route("/gone.txt", Behavior::status(404));
    let gone = raw_get(site.server.addr(), HOST, "/gone.txt").await;
    assert_eq!(
        (gone.status, gone.body_text().as_str()),
        (404, "<h1>not here</h1>")
    );
}

#[tokio::test]
async fn a_tls_handshake_must_finish_within_the_header_timeout() {
    let site = start_site("", "header_timeout_secs: 1");
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", site.https_port))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        site.server
            .metric(
                "originpull_tls_handshake_failures_total",
                &[("reason", "timeout")]
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn chromium_loads_a_pages_assets_over_http2() {
    let site = start_site("", "");
    let page = r#"<html><head><title>loading</title><link rel="stylesheet" href="/style.css"></head>
<body><img src="/pixel.svg"><script>
window.addEventListener('load', () => {
  const assets = performance.getEntriesByType('resource').map(e => e.name.split('/').pop() + '=' + e.nextHopProtocol);
  document.title = 'page=' + performance.getEntriesByType('navigation')[0].nextHopProtocol + ' ' + assets.sort().join(' ');
});
</script></body></html>"#;
    site.origin.route(
        "/index.html",
        Behavior::ok_with_headers(page, &[("Content-Type", "text/html")]),
    );
    site.origin.route(
        "/style.css",
        Behavior::ok_with_headers("body { color: black }", &[("Content-Type", "text/css")]),
    );
    site.origin.route(
        "/pixel.svg",
        Behavior::ok_with_headers(
            "<svg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/>",
            &[("Content-Type", "image/svg+xml")],
        ),
    );
    let spki = format!(
        "--ignore-certificate-errors-spki-list={}",
        site.wildcard.spki_sha256
    );
    let url = format!("https://{HOST}:{}/index.html", site.https_port);
    let Some((title, stderr)) = chromium_title_with(&url, &[&spki]).await else {
        return;
    };
    assert_eq!(
        title, "page=h2 pixel.svg=h2 style.css=h2",
        "chromium: {stderr}"
    );
}

/// A mirrored miss streams over HTTPS as over plain HTTP: the origin's first piece reaches the
/// client while the origin is still silent, over HTTP/2 and over HTTP/1.1. (The TLS stream
/// holds encrypted bytes until a flush, and HTTP/2's flushes are deferred to the connection's
/// next poll: neither may hold a streamed piece back.)
#[tokio::test]
async fn a_mirrored_miss_reaches_the_client_piece_by_piece_over_http2_and_http1() {
    let site = start_site("", "");
    let body = generated_bytes(256 * 1024);
    for (http2, path) in [(true, "/paused-h2.bin"), (false, "/paused-h1.bin")] {
        site.origin.route(
            path,
            Behavior::Stall {
                headers_then_stall: true,
                partial: body[..10_000].to_vec(),
            },
        );
        let Some(curl) = require_program("curl", None) else {
            return;
        };
        let mut child = std::process::Command::new(curl)
            .args(["-sS", "-N", "--max-time", "15"])
            .arg(if http2 { "--http2" } else { "--http1.1" })
            .arg("--cacert")
            .arg(&site.ca_file)
            .arg("--resolve")
            .arg(format!("{HOST}:{}:127.0.0.1", site.https_port))
            .arg(format!("https://{HOST}:{}{path}", site.https_port))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run curl");
        let mut stdout = child.stdout.take().expect("curl's output");
        let (first_piece, arrived) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut received = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            while received.len() < 10_000 {
                match std::io::Read::read(&mut stdout, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
            let _ = first_piece.send(received);
        });
        let received = arrived
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("http2={http2}: the origin's first 10 KB were held back"));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(received, body[..10_000], "http2={http2}");
    }
}

/// The Python with the `h2` package (`.ci/setup` makes the venv, `ORIGINPULL_H2_VENV`, by
/// default `~/.local/share/originpull/h2-venv`). Missing: a CI run fails, others skip.
fn h2_python() -> Option<PathBuf> {
    setup_venv_python("ORIGINPULL_H2_VENV", "h2-venv", "Python's h2")
}

fn run_flood(python: &PathBuf, port: u16, attack: &str) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/h2_floods.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args([&port.to_string(), HOST, attack])
        .output()
        .expect("run tests/h2_floods.py");
    assert!(
        out.status.success(),
        "{attack}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from h2_floods.py")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn http2_floods_are_cut_off_and_the_server_keeps_serving() {
    let site = start_site("", "");
    site.origin.route("/a.txt", Behavior::ok("a"));
    let Some(python) = h2_python() else {
        return;
    };
    let port = site.https_port;
    let pid = site.server.pid().expect("running");

    let streams = run_flood(&python, port, "max_streams");
    assert_eq!(streams["max_streams"], 128, "{streams}");
    assert!(streams["refused"].as_u64().unwrap_or(0) >= 50, "{streams}");

    // Rapid reset (CVE-2023-44487): streams opened and cancelled at once.
    let reset = run_flood(&python, port, "rapid_reset");
    assert!(
        reset["goaway"] == 11 || reset["closed"] == true,
        "GOAWAY ENHANCE_YOUR_CALM or a closed connection: {reset}"
    );

    // An HPACK bomb: 400 KB of headers in a small frame, past max_header_bytes.
    let bomb = run_flood(&python, port, "hpack_bomb");
    assert!(bomb["responses"].get("200").is_none(), "{bomb}");
    let refused = bomb["responses"].get("431").is_some()
        || bomb["resets"].as_object().is_some_and(|r| !r.is_empty())
        || !bomb["goaway"].is_null()
        || bomb["closed"] == true;
    assert!(refused, "{bomb}");

    // SETTINGS and PING floods: the server answers each, and stops reading while its answers
    // wait, so the flood meets back-pressure (or a closed connection), never growing memory.
    let before = rss_kib(pid);
    for attack in ["settings_flood", "ping_flood"] {
        let flood = run_flood(&python, port, attack);
        assert!(
            flood["blocked"] == true || flood["closed"] == true || !flood["goaway"].is_null(),
            "{attack}: {flood}"
        );
    }
    let after = rss_kib(pid);
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );

    let still = site.curl(HOST, "/a.txt", true, &[]).expect("curl");
    assert_eq!(still.status, 200, "{still:?}");
}

/// testssl.sh (Debian's) against the listener, protocols and cipher categories only (the
/// whole scan takes minutes): nothing it flags as weak.
#[tokio::test]
async fn testssl_finds_no_weak_protocol_or_cipher() {
    let Some(testssl) = require_program("testssl", None) else {
        return;
    };
    let site = start_site("", "");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("testssl.json");
    let out = tokio::process::Command::new(testssl)
        .args([
            "--protocols",
            "--std",
            "--fs",
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "batch",
        ])
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("127.0.0.1:{}", site.https_port))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("testssl within 120 s")
        .expect("testssl ran");
    let findings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap_or_else(|_| {
            panic!(
                "testssl wrote no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        }))
        .expect("testssl JSON");
    let flagged: Vec<String> = findings
        .as_array()
        .expect("a list of findings")
        .iter()
        .filter(|f| {
            matches!(
                f["severity"].as_str(),
                Some("LOW" | "MEDIUM" | "HIGH" | "CRITICAL")
            )
        })
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(flagged.is_empty(), "testssl flags: {flagged:#?}");
    let offered = |id: &str| {
        findings
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| f["finding"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert!(
        offered("TLS1_3").starts_with("offered"),
        "{}",
        offered("TLS1_3")
    );
    assert!(
        offered("TLS1_2").starts_with("offered"),
        "{}",
        offered("TLS1_2")
    );
    assert!(
        offered("TLS1_1").starts_with("not offered"),
        "{}",
        offered("TLS1_1")
    );
}
