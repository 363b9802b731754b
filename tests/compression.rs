//! Issue #14, compression: text-like hits are served as br, zstd or gzip to clients that accept
//! them, each variant made once per object version and kept; ranges, clients that accept
//! nothing and objects the origin stored encoded get the stored bytes. The real binary, real
//! clients, real decoders.

use std::io::Read;
use std::time::Duration;

use crate::common::*;
use originpull_store::key::ObjectKey;
use originpull_store::{BucketStore, DiskStore, NewObject};

const BUCKET: &str = "example-1250000000";

/// About 100 KB of JavaScript-like text.
fn script() -> Vec<u8> {
    (0..2000)
        .map(|i| format!("function f{i}(a, b) {{ return a * {i} + b; }}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A server whose bucket is seeded directly through the store (no memory tier, so a version
/// written behind the server's back is seen at once).
fn start() -> Originpull {
    Originpull::start(
        OriginpullConfig::new()
            .with_disabled_bucket(BUCKET)
            .with_extra_yaml("memory_cache:\n  max_bytes: 0\n"),
    )
}

/// [`start`] with the default memory tier, which keeps variants in memory too.
fn start_with_memory_tier() -> Originpull {
    Originpull::start(OriginpullConfig::new().with_disabled_bucket(BUCKET))
}

async fn seed(server: &Originpull, key: &str, body: &[u8], headers: &[(&str, &str)]) {
    let store = DiskStore::open(server.data_dir()).expect("open store");
    let key = ObjectKey::from_request_path(&format!("/{key}")).expect("valid key");
    let mut writer = store.create(BUCKET, &key).await.expect("create");
    writer
        .write(bytes::Bytes::copy_from_slice(body))
        .await
        .expect("write");
    let content_type = headers
        .iter()
        .find(|(n, _)| *n == "content-type")
        .map(|(_, v)| v.to_string());
    let kept = headers
        .iter()
        .filter(|(n, _)| *n != "content-type")
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    writer
        .commit(NewObject {
            content_type,
            headers: kept,
            ..NewObject::default()
        })
        .await
        .expect("commit");
}

const JS: &[(&str, &str)] = &[("content-type", "application/javascript")];

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn vary(&self) -> Vec<&str> {
        self.headers
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }
}

async fn fetch(
    server: &Originpull,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = server.request(method, BUCKET, path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let resp = request.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get_with(server: &Originpull, path: &str, headers: &[(&str, &str)]) -> Answer {
    fetch(server, reqwest::Method::GET, path, headers).await
}

/// Requests `path` with `Accept-Encoding: encoding` until the variant is served (the first
/// requests get the stored bytes while it is made).
async fn wait_for_variant(server: &Originpull, path: &str, encoding: &str) -> Answer {
    let served = wait_until(Duration::from_secs(20), || async {
        let answer = get_with(server, path, &[("accept-encoding", encoding)]).await;
        answer.header("content-encoding") == Some(encoding)
    })
    .await;
    assert!(served, "the {encoding} variant of {path} was never served");
    get_with(server, path, &[("accept-encoding", encoding)]).await
}

fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "br" => {
            brotli::BrotliDecompress(&mut &body[..], &mut out).expect("valid br");
        }
        "zstd" => out = zstd::decode_all(body).expect("valid zstd"),
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("valid gzip");
        }
        other => panic!("unknown encoding {other}"),
    }
    out
}

#[tokio::test]
async fn each_encoding_decodes_to_the_stored_bytes_with_its_own_etag() {
    let server = start_with_memory_tier();
    let body = script();
    seed(&server, "app.js", &body, JS).await;
    let md5 = md5_hex(&body);
    for encoding in ["br", "zstd", "gzip"] {
        let answer = wait_for_variant(&server, "/app.js", encoding).await;
        assert_eq!(answer.status, 200);
        assert!(
            answer.body.len() < body.len() / 5,
            "{encoding} did not compress"
        );
        assert_eq!(
            answer.header("content-length"),
            Some(answer.body.len().to_string().as_str())
        );
        assert_eq!(decode(encoding, &answer.body), body, "{encoding}");
        assert_eq!(
            answer.header("etag"),
            Some(format!("\"{md5}-{encoding}\"").as_str())
        );
        assert_eq!(
            answer.header("content-type"),
            Some("application/javascript")
        );
        assert_eq!(answer.vary(), vec!["Accept-Encoding"]);
        // Ranges are served from the stored bytes only: an encoded answer does not offer them.
        assert_eq!(answer.header("accept-ranges"), None);
    }
    // A browser's usual header gets br.
    let answer = get_with(
        &server,
        "/app.js",
        &[("accept-encoding", "gzip, deflate, br, zstd")],
    )
    .await;
    assert_eq!(answer.header("content-encoding"), Some("br"));
    // q-values: gzip preferred, br refused.
    let answer = get_with(
        &server,
        "/app.js",
        &[("accept-encoding", "br;q=0, zstd;q=0.5, gzip")],
    )
    .await;
    assert_eq!(answer.header("content-encoding"), Some("gzip"));
}

#[tokio::test]
async fn no_accept_encoding_and_ranges_get_the_stored_bytes() {
    let server = start();
    let body = script();
    seed(&server, "app.js", &body, JS).await;
    let md5 = md5_hex(&body);
    wait_for_variant(&server, "/app.js", "br").await;

    let plain = get_with(&server, "/app.js", &[]).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.body, body);
    assert_eq!(plain.header("etag"), Some(format!("\"{md5}\"").as_str()));
    // The stored bytes are one representation of several: caches must key on the header.
    assert_eq!(plain.vary(), vec!["Accept-Encoding"]);
    assert_eq!(plain.header("accept-ranges"), Some("bytes"));

    let refused = get_with(&server, "/app.js", &[("accept-encoding", "identity")]).await;
    assert_eq!(refused.header("content-encoding"), None);
    assert_eq!(refused.body, body);

    let range = get_with(
        &server,
        "/app.js",
        &[("accept-encoding", "br"), ("range", "bytes=100-199")],
    )
    .await;
    assert_eq!(range.status, 206);
    assert_eq!(range.header("content-encoding"), None);
    assert_eq!(range.body, &body[100..200]);
    assert_eq!(range.header("etag"), Some(format!("\"{md5}\"").as_str()));
    assert_eq!(range.vary(), vec!["Accept-Encoding"]);
}

#[tokio::test]
async fn if_none_match_with_an_encoded_etag_gives_304_for_that_encoding_only() {
    let server = start();
    let body = script();
    seed(&server, "app.js", &body, JS).await;
    let br = wait_for_variant(&server, "/app.js", "br").await;
    let br_etag = br.header("etag").expect("etag").to_string();

    let not_modified = get_with(
        &server,
        "/app.js",
        &[("accept-encoding", "br"), ("if-none-match", &br_etag)],
    )
    .await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), Some(br_etag.as_str()));
    assert_eq!(not_modified.vary(), vec!["Accept-Encoding"]);

    // The br ETag does not validate the stored bytes.
    let other = get_with(&server, "/app.js", &[("if-none-match", &br_etag)]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, body);
    // If-Match compares with the representation served.
    let matched = get_with(
        &server,
        "/app.js",
        &[("accept-encoding", "br"), ("if-match", &br_etag)],
    )
    .await;
    assert_eq!(matched.status, 200);
    let failed = get_with(&server, "/app.js", &[("if-match", &br_etag)]).await;
    assert_eq!(failed.status, 412);
}

#[tokio::test]
async fn head_gets_the_headers_the_get_gets() {
    let server = start();
    let body = script();
    seed(&server, "app.js", &body, JS).await;
    let get = wait_for_variant(&server, "/app.js", "gzip").await;
    let head = fetch(
        &server,
        reqwest::Method::HEAD,
        "/app.js",
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    for name in [
        "content-encoding",
        "content-length",
        "etag",
        "content-type",
        "last-modified",
    ] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    assert_eq!(head.vary(), get.vary());
}

#[tokio::test]
async fn an_object_its_origin_sent_gzip_is_served_as_stored() {
    let origin = TestOrigin::start();
    let server =
        Originpull::start(OriginpullConfig::new().with_bucket(BUCKET, &origin.authority()));
    let packed = {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&script()).unwrap();
        encoder.finish().unwrap()
    };
    // An origin that ignores the copy's `Accept-Encoding: identity`.
    origin.route(
        "/packed.js",
        Behavior::ok_with_headers(
            packed.clone(),
            &[
                ("Content-Type", "application/javascript"),
                ("Content-Encoding", "gzip"),
            ],
        ),
    );
    assert_eq!(get_with(&server, "/packed.js", &[]).await.status, 302);
    let stored = wait_until(Duration::from_secs(10), || async {
        get_with(&server, "/packed.js", &[]).await.status == 200
    })
    .await;
    assert!(stored, "the copy never landed");
    for _ in 0..3 {
        let answer = get_with(&server, "/packed.js", &[("accept-encoding", "br, zstd")]).await;
        assert_eq!(answer.header("content-encoding"), Some("gzip"));
        assert_eq!(answer.body, packed);
        assert_eq!(
            answer.header("etag"),
            Some(format!("\"{}\"", md5_hex(&packed)).as_str())
        );
        assert!(answer.vary().is_empty());
    }
    assert_eq!(
        server
            .metric("originpull_compressions_total", &[("bucket", BUCKET)])
            .await,
        0.0
    );
}

#[tokio::test]
async fn small_and_packed_objects_are_served_as_stored() {
    let server = start();
    seed(&server, "tiny.js", b"let a = 1;", JS).await;
    let png = script();
    seed(&server, "big.png", &png, &[("content-type", "image/png")]).await;
    for path in ["/tiny.js", "/big.png"] {
        for _ in 0..3 {
            let answer = get_with(&server, path, &[("accept-encoding", "br")]).await;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.header("content-encoding"), None, "{path}");
            assert!(answer.vary().is_empty(), "{path}");
        }
    }
}

#[tokio::test]
async fn a_variant_is_made_once_however_many_ask_for_it() {
    let server = start();
    let body = script();
    seed(&server, "app.js", &body, JS).await;
    // A burst at the cold variant: every request is answered, with the stored bytes or br.
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let request = server
                .request(reqwest::Method::GET, BUCKET, "/app.js")
                .header("accept-encoding", "br");
            tokio::spawn(async move {
                let resp = request.send().await.expect("request");
                let status = resp.status().as_u16();
                let encoding = resp
                    .headers()
                    .get("content-encoding")
                    .map(|v| v.to_str().unwrap_or("?").to_string());
                (status, encoding, resp.bytes().await.expect("body").to_vec())
            })
        })
        .collect();
    for answer in burst {
        let (status, encoding, served) = answer.await.expect("request task");
        assert_eq!(status, 200);
        match encoding.as_deref() {
            Some("br") => assert_eq!(decode("br", &served), body),
            None => assert_eq!(served, body),
            other => panic!("unexpected encoding {other:?}"),
        }
    }
    wait_for_variant(&server, "/app.js", "br").await;
    for _ in 0..5 {
        let answer = get_with(&server, "/app.js", &[("accept-encoding", "br")]).await;
        assert_eq!(answer.header("content-encoding"), Some("br"));
    }
    let made = |encoding: &'static str| {
        let server = &server;
        async move {
            server
                .metric(
                    "originpull_compressions_total",
                    &[("bucket", BUCKET), ("encoding", encoding)],
                )
                .await
        }
    };
    assert_eq!(made("br").await, 1.0);
    assert_eq!(made("gzip").await, 0.0);
}

#[tokio::test]
async fn a_new_version_never_serves_the_old_versions_variant() {
    let server = start();
    let first = script();
    seed(&server, "app.js", &first, JS).await;
    wait_for_variant(&server, "/app.js", "zstd").await;

    let second: Vec<u8> = String::from_utf8(script())
        .unwrap()
        .replace("return", "return -")
        .into_bytes();
    seed(&server, "app.js", &second, JS).await;
    // Straight after the new version lands, and until its own variant exists, no answer may
    // carry the first version's bytes.
    let answer = get_with(&server, "/app.js", &[("accept-encoding", "zstd")]).await;
    let served = match answer.header("content-encoding") {
        Some("zstd") => decode("zstd", &answer.body),
        _ => answer.body.clone(),
    };
    assert_eq!(served, second);
    let variant = wait_for_variant(&server, "/app.js", "zstd").await;
    assert_eq!(decode("zstd", &variant.body), second);
    assert_eq!(
        variant.header("etag"),
        Some(format!("\"{}-zstd\"", md5_hex(&second)).as_str())
    );
}
