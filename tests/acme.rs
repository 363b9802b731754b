//! Issue #22 §3: certificates by ACME against Let's Encrypt's test server, pebble (Debian's
//! `pebble`, with `pebble-challtestsrv` as its DNS so every name resolves to 127.0.0.1). The
//! HTTP-01 validation is real: pebble connects to originpull's plain listener and fetches the
//! token (no `PEBBLE_VA_ALWAYS_VALID`). The certificate is then served over HTTPS and, pebble
//! issuing 30-second certificates, renewed a few seconds later.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::pebble::*;
use crate::common::tls::*;
use crate::common::*;

const BUCKET: &str = "shop-1250000000";
const DOMAIN: &str = "shop.acme.test";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_bucket_domain_gets_a_certificate_by_http01_then_it_is_renewed() {
    let listen_port = free_port();
    let Some(pebble) = Pebble::start(listen_port, 30) else {
        return;
    };
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    let default = ca.issue(&["edge.example"]).write(certs.path(), "default");
    let state_dir = certs.path().join("acme");
    let origin = TestOrigin::start();
    origin.route("/a.txt", Behavior::ok("from the origin"));
    let https_port = free_port();
    let server = Originpull::start_at(
        OriginpullConfig::new()
            .with_bucket_yaml(&format!(
                "name: {BUCKET}\ndomains: [{DOMAIN}]\norigin_pull:\n  enabled: true\n  mode: mirror\n  origin: '{}'",
                origin.authority()
            ))
            .with_extra_yaml(&https_yaml(
                https_port,
                &[default],
                &acme_yaml(&pebble, Some(&state_dir)),
            )),
        listen_port,
    );
    let issued = wait_until(WAIT, || async {
        acme_orders(&server, "issued").await >= 1.0
    })
    .await;
    assert!(
        issued,
        "no certificate issued\npebble:\n{}\noriginpull:\n{}",
        pebble.log(),
        server.stderr_text()
    );
    assert_eq!(acme_orders(&server, "failed").await, 0.0);
    // pebble fetched the token from the plain listener.
    assert!(
        server.stderr_text().contains(".well-known/acme-challenge/"),
        "{}",
        server.stderr_text()
    );

    let root = pebble.issuing_root();
    let first = served_serial(https_port, Some(DOMAIN)).await;
    let Some(answer) = curl(&root, DOMAIN, https_port, "/a.txt", true, &[]) else {
        return;
    };
    assert_eq!(
        (answer.http_version.as_str(), answer.status),
        ("2", 200),
        "{answer:?}"
    );
    assert_eq!(answer.body, b"from the origin");

    let key = state_dir.join(format!("{DOMAIN}.key"));
    let mode = std::fs::metadata(&key)
        .expect("key kept")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the key is private: {mode:o}");
    let log = server.stderr_text();
    assert!(!log.contains("PRIVATE KEY"), "a key reached the log");

    let renewed = wait_until(WAIT, || async {
        acme_orders(&server, "renewed").await >= 1.0
    })
    .await;
    assert!(renewed, "not renewed\n{}", server.stderr_text());
    let second = served_serial(https_port, Some(DOMAIN)).await;
    assert_ne!(first, second, "the renewed certificate is served");
    let again = curl(&root, DOMAIN, https_port, "/a.txt", true, &[]).expect("curl");
    assert_eq!(again.status, 200, "{again:?}");
}
