//! A real static site moved into a bucket, as a user tries it: nginx serving a documentation
//! site (the Read the Docs theme from Debian's `sphinx-rtd-theme-common`: its stylesheet, web
//! fonts and icons) as the origin, and headless Chromium visiting pages of the bucket while
//! their stylesheets, fonts and `fetch()`ed data are still misses (issue #19: fonts and fetch()
//! through the 302, folders without their slash).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

const BUCKET: &str = "site-1250000000";
/// The same site through a bucket that redirects every miss, as before `cors_misses`.
const REDIRECTING: &str = "redirecting-1250000000";
const WAIT: Duration = Duration::from_secs(20);
/// Where Debian's `sphinx-rtd-theme-common` keeps the theme's static files.
const THEME: &str = "/usr/share/sphinx_rtd_theme/static";

/// A page in the theme's layout that reports through its title, once its fonts have loaded or
/// failed, how many of the stylesheet's font faces loaded and what a `fetch()` with a custom
/// header of `data.json` gave.
const PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="_static/css/theme.css"><title>pending</title></head>
<body class="wy-body-for-nav"><div class="rst-content"><h1>Heading</h1>
<p>Text, <b>bold</b>, <i>italic</i>, an icon: <span class="fa fa-home"></span></p></div>
<script>
window.addEventListener('load', async () => {
  const faces = [...document.fonts];
  await Promise.allSettled(faces.map(face => face.load()));
  const loaded = faces.filter(face => face.status === 'loaded').length;
  let data;
  try {
    const response = await fetch('data.json', {headers: {'X-Requested-With': 'page'}});
    data = 'fetch=' + response.status + ' ' + (await response.text()).trim();
  } catch (e) { data = 'fetch=' + e.name; }
  document.title = 'fonts=' + loaded + '/' + faces.length + ' ' + data;
});
</script></body></html>"#;

/// The site's files: the theme under `_static/`, the page, its data, and a folder `docs/`
/// that is a documentation set of its own (its page links `_static/` inside it).
fn make_site(root: &Path) -> Option<()> {
    if !Path::new(THEME).is_dir() {
        missing(&format!("sphinx-rtd-theme-common ({THEME})"));
        return None;
    }
    copy_dir(Path::new(THEME), &root.join("_static"));
    std::fs::write(root.join("index.html"), PAGE).unwrap();
    std::fs::write(root.join("data.json"), "{\"ok\":true}\n").unwrap();
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::write(root.join("docs/index.html"), PAGE).unwrap();
    std::fs::write(root.join("docs/data.json"), "{\"ok\":true}\n").unwrap();
    copy_dir(Path::new(THEME), &root.join("docs/_static"));
    Some(())
}

/// The site in a temporary directory, served by nginx; `None` where a part is missing outside
/// CI.
fn site_origin() -> Option<(tempfile::TempDir, NginxOrigin)> {
    let root = tempfile::tempdir().unwrap();
    make_site(root.path())?;
    let nginx = NginxOrigin::start(root.path())?;
    Some((root, nginx))
}

/// Copies a directory tree, following the package's symbolic links to the font packages.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn site_buckets(origin: &str, page_site: &str) -> OriginpullConfig {
    let cors = format!(
        "cors:\n  - allowed_origins: [\"{page_site}\"]\n    allowed_methods: [GET, HEAD]\n    allowed_headers: [\"*\"]\n"
    );
    OriginpullConfig::new()
        .with_bucket_yaml(&format!(
            "name: {BUCKET}\norigin_pull:\n  enabled: true\n  origin: '{origin}'\n{cors}"
        ))
        .with_bucket_yaml(&format!(
            "name: {REDIRECTING}\norigin_pull:\n  enabled: true\n  origin: '{origin}'\n  cors_misses: redirect\n{cors}"
        ))
}

fn page_url(server: &Originpull, bucket: &str, path: &str) -> String {
    format!(
        "http://{}:{}{path}",
        server.host(bucket),
        server.addr().port()
    )
}

async fn result_count(server: &Originpull, bucket: &str, result: &str) -> f64 {
    server
        .metric(
            "originpull_requests_total",
            &[("bucket", bucket), ("result", result)],
        )
        .await
}

#[tokio::test]
async fn a_bucket_page_loads_its_stylesheet_fonts_and_fetch_on_the_first_visit() {
    let Some((_site, nginx)) = site_origin() else {
        return;
    };
    let server = Originpull::start(site_buckets(&nginx.authority(), "http://unused.example"));
    // The page is in the bucket already; everything it loads is not.
    for bucket in [BUCKET, REDIRECTING] {
        assert_eq!(get(&server, bucket, "/index.html").await.status(), 302);
        assert!(server.wait_stored(bucket, "/index.html").await);
    }

    let Some((first, stderr)) = chromium_title(&page_url(&server, BUCKET, "/index.html")).await
    else {
        return;
    };
    assert_eq!(first, "fonts=7/7 fetch=200 {\"ok\":true}", "{stderr}");
    let mirrored = result_count(&server, BUCKET, "mirror").await;
    assert!(mirrored >= 8.0, "{mirrored} misses mirrored");

    // The second visit is served from the bucket alone.
    for key in ["/_static/css/theme.css", "/data.json"] {
        assert!(
            server.wait_stored(BUCKET, key).await,
            "{key} was not stored"
        );
    }
    assert!(
        wait_until(WAIT, || async {
            server
                .metric("originpull_fills_in_flight", &[])
                .await
                .eq(&0.0)
        })
        .await
    );
    let (second, stderr) = chromium_title(&page_url(&server, BUCKET, "/index.html"))
        .await
        .unwrap();
    assert_eq!(second, "fonts=7/7 fetch=200 {\"ok\":true}", "{stderr}");
    assert_eq!(result_count(&server, BUCKET, "mirror").await, mirrored);

    // What a browser gets through redirects: the stylesheet from the origin, its fonts asked of
    // the origin, which sends no CORS headers, and the fetch() redirected to it.
    let (redirected, _) = chromium_title(&page_url(&server, REDIRECTING, "/index.html"))
        .await
        .unwrap();
    assert_eq!(redirected, "fonts=0/7 fetch=TypeError");
}

#[tokio::test]
async fn a_page_on_another_site_fetches_a_miss_through_its_preflight() {
    let Some((root, nginx)) = site_origin() else {
        return;
    };
    let page_site = format!("http://{}", nginx.authority());
    let server = Originpull::start(site_buckets(&nginx.authority(), &page_site));
    let report = |bucket: &str| {
        format!(
            "<!doctype html><title>pending</title><script>
            fetch('{}', {{headers: {{'X-Requested-With': 'page'}}}})
              .then(r => r.text().then(t => 'status=' + r.status + ' ' + t.trim()), e => 'error=' + e.name)
              .then(result => {{ document.title = result; }});
            </script>",
            page_url(&server, bucket, "/data.json")
        )
    };
    std::fs::write(root.path().join("fetching.html"), report(BUCKET)).unwrap();
    std::fs::write(root.path().join("redirected.html"), report(REDIRECTING)).unwrap();

    let Some((title, stderr)) = chromium_title(&format!("{page_site}/fetching.html")).await else {
        return;
    };
    assert_eq!(title, "status=200 {\"ok\":true}", "{stderr}");
    assert_eq!(result_count(&server, BUCKET, "mirror").await, 1.0);
    assert_eq!(result_count(&server, BUCKET, "preflight").await, 1.0);

    // Redirected, Chromium preflights the origin too, which answers 405.
    let (title, _) = chromium_title(&format!("{page_site}/redirected.html"))
        .await
        .unwrap();
    assert_eq!(title, "error=TypeError");
    assert!(nginx
        .requests()
        .iter()
        .any(|line| line.starts_with("OPTIONS /data.json")));
}

#[tokio::test]
async fn a_folder_url_without_its_slash_is_never_stored_as_the_folders_page() {
    let Some((_site, nginx)) = site_origin() else {
        return;
    };
    let origin = nginx.authority();
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket_yaml(&format!(
                "name: {REDIRECTING}\norigin_pull:\n  enabled: true\n  origin: '{origin}'"
            ))
            .with_bucket_yaml(&format!(
                "name: {BUCKET}\norigin_pull:\n  enabled: true\n  mode: mirror\n  origin: '{origin}'\nwebsite:\n  index_document: index.html"
            ))
            .with_extra_yaml("fill:\n  negative_ttl_secs: 0\n"),
    );

    // Redirect mode: the client follows the origin's own 301; the copy stores nothing.
    let miss = get(&server, REDIRECTING, "/docs").await;
    assert_eq!(miss.status(), 302);
    assert!(
        server
            .wait_fill_outcome(REDIRECTING, "origin_status", 1.0)
            .await
    );
    assert_eq!(
        get(&server, REDIRECTING, "/docs").await.status(),
        302,
        "the folder's page was stored under `docs`"
    );

    // Mirror mode: the origin's redirect to the folder is passed on, on the edge's own host.
    let moved = get(&server, BUCKET, "/docs").await;
    assert_eq!(moved.status(), 301);
    assert_eq!(moved.headers()["location"], "/docs/");
    let folder = get(&server, BUCKET, "/docs/").await;
    assert_eq!(folder.status(), 200);
    assert_eq!(folder.bytes().await.unwrap(), PAGE.as_bytes());
    assert!(server.wait_fill_outcome(BUCKET, "stored", 1.0).await);
    // Once the folder's index document is stored, the bucket answers for the folder itself,
    // as S3 and COS static websites do.
    let moved = get(&server, BUCKET, "/docs?lang=en").await;
    assert_eq!(moved.status(), 302);
    assert_eq!(moved.headers()["location"], "/docs/?lang=en");

    // The page then loads whole in a browser, from `/docs` as typed.
    let Some((title, stderr)) = chromium_title(&page_url(&server, BUCKET, "/docs")).await else {
        return;
    };
    assert_eq!(title, "fonts=7/7 fetch=200 {\"ok\":true}", "{stderr}");
}
