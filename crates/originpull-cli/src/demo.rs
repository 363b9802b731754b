//! `originpull demo`: the seed example on one machine, without network. It runs originpull with
//! a bucket whose origin is a small HTTP server embedded in the same process (a Pingora service
//! on another loopback port), and prints the curl lines that show a 302 and then a hit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;

pub const DEMO_BUCKET: &str = "example-1250000000";
pub const DEMO_SUFFIX: &str = "file.myqcloud.com";

/// The demo origin's objects: path, content type, body.
fn demo_objects() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    // A real 1x1 GIF, so a browser pointed at the demo shows an image.
    let pixel = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec();
    let mut big = Vec::with_capacity(1 << 20);
    while big.len() < 1 << 20 {
        big.extend_from_slice(b"originpull demo payload line\n");
    }
    vec![
        ("/1.jpg", "image/gif", pixel),
        (
            "/docs/hello.txt",
            "text/plain; charset=utf-8",
            b"hello from the origin\n".to_vec(),
        ),
        ("/big.bin", "application/octet-stream", big),
    ]
}

/// The embedded origin: answers GET and HEAD for the demo objects, 404 otherwise.
pub struct DemoOrigin {
    objects: Vec<(&'static str, &'static str, Vec<u8>)>,
}

impl DemoOrigin {
    pub fn new() -> DemoOrigin {
        DemoOrigin {
            objects: demo_objects(),
        }
    }
}

impl Default for DemoOrigin {
    fn default() -> Self {
        DemoOrigin::new()
    }
}

#[async_trait]
impl ServeHttp for DemoOrigin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let found = self.objects.iter().find(|(p, _, _)| *p == path);
        let builder = Response::builder().header("Server", "originpull-demo-origin");
        let built = match found {
            Some((_, content_type, body)) => builder
                .status(200)
                .header("Content-Type", *content_type)
                .header("Content-Length", body.len())
                .header("Cache-Control", "max-age=3600")
                .body(body.clone()),
            None => builder
                .status(404)
                .header("Content-Length", 10)
                .body(b"not found\n".to_vec()),
        };
        // Every header above is a valid static value, so building cannot fail.
        built.unwrap_or_default()
    }
}

/// The demo's configuration text.
pub fn demo_config(
    listen: SocketAddr,
    metrics: SocketAddr,
    origin: SocketAddr,
    data_dir: &Path,
) -> String {
    format!(
        "# Written by `originpull demo`; edit it and originpull reloads it.\n\
         listen: {listen}\n\
         metrics_listen: {metrics}\n\
         data_dir: {}\n\
         domain_suffix: {DEMO_SUFFIX}\n\
         access_log: stderr\n\
         server:\n  threads: 2\n  grace_period_secs: 1\n  graceful_shutdown_timeout_secs: 1\n\
         buckets:\n  - name: {DEMO_BUCKET}\n    origin_pull:\n      enabled: true\n      origin: {origin}\n",
        data_dir.display()
    )
}

/// Writes the demo's config into `dir` and returns its path.
pub fn prepare(
    dir: &Path,
    listen: SocketAddr,
    metrics: SocketAddr,
    origin: SocketAddr,
) -> std::io::Result<PathBuf> {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let config_path = dir.join("originpull.yaml");
    std::fs::write(
        &config_path,
        demo_config(listen, metrics, origin, &data_dir),
    )?;
    Ok(config_path)
}

/// The origin as a Pingora service listening on `addr`.
pub fn origin_service(
    addr: SocketAddr,
) -> Service<pingora::apps::http_app::HttpServer<DemoOrigin>> {
    let mut service = Service::new(
        "demo origin".to_string(),
        pingora::apps::http_app::HttpServer::new_app(DemoOrigin::new()),
    );
    service.add_tcp(&addr.to_string());
    service
}

/// What to try, printed before the server starts.
pub fn instructions(
    listen: SocketAddr,
    metrics: SocketAddr,
    origin: SocketAddr,
    config_path: &Path,
) -> String {
    let host = format!("{DEMO_BUCKET}.{DEMO_SUFFIX}");
    format!(
        "originpull demo\n\
         bucket {DEMO_BUCKET} at http://{listen} (Host: {host}), origin-pull to the embedded origin at http://{origin}\n\
         config: {config}  (edit it: originpull reloads it)\n\n\
         1. First request: a miss, 302 to the origin, and the copy starts in the background:\n\
         \x20  curl -si -H 'Host: {host}' http://{listen}/1.jpg | head -n 6\n\
         2. A moment later the same URL is a hit from the bucket (200, ETag = MD5):\n\
         \x20  sleep 1; curl -si -H 'Host: {host}' http://{listen}/1.jpg -o /dev/null -D -\n\
         3. Ranges and conditional requests on the stored object:\n\
         \x20  curl -s -H 'Host: {host}' -H 'Range: bytes=0-5' http://{listen}/1.jpg | od -c | head -n 2\n\
         4. A key the origin does not have: still a 302; the failed copy is counted:\n\
         \x20  curl -si -H 'Host: {host}' http://{listen}/nope.txt | head -n 1\n\
         5. An unknown bucket gets an S3-style XML error:\n\
         \x20  curl -s -H 'Host: other-1.{DEMO_SUFFIX}' http://{listen}/1.jpg\n\
         6. Metrics:\n\
         \x20  curl -s http://{metrics}/metrics | grep '^originpull_'\n\n\
         Ctrl-C stops the demo.\n",
        config = config_path.display()
    )
}
