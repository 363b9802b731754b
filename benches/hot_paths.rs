//! Criterion benchmarks of the per-request hot paths: Host → bucket, path → key, a hit's
//! response headers, a miss's `Location`, a store lookup of a small object, and what picking a
//! compressed variant adds to a hit.

// A test (or benchmark) that unwraps fails loudly, which is what it should do.
#![allow(clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use originpull_config::{parse_origin, Config};
use originpull_server::answer::compress::Compressor;
use originpull_server::answer::cors::CorsReply;
use originpull_server::answer::object_head::ObjectHead;
use originpull_server::answer::redirect::location;
use originpull_server::answer::respond::{Reply, RequestId};
use originpull_server::live::bucket::Routes;
use originpull_store::key::ObjectKey;
use originpull_store::{BucketStore, DiskStore, HotTier, HotTierLimits, NewObject};
use pingora::http::RequestHeader;
use std::sync::Arc;
use std::time::Duration;

fn config() -> Config {
    let mut yaml = String::from(
        "listen: 127.0.0.1:8080\ndata_dir: ./data\ndomain_suffix: file.myqcloud.com\nbuckets:\n",
    );
    // A realistic table: the lookup must not depend on how many buckets there are.
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - name: bucket{i}-1250000000\n    origin_pull: {{enabled: true, origin: 'origin{i}.example.com:8080'}}\n"
        ));
    }
    Config::parse(&yaml).expect("benchmark config is valid")
}

fn hot_paths(c: &mut Criterion) {
    let routes = Routes::new(&config()).expect("routes");
    c.bench_function("route/host_to_bucket", |b| {
        b.iter(|| routes.bucket_for_host(black_box(b"bucket500-1250000000.file.myqcloud.com:8080")))
    });
    c.bench_function("key/parse_plain", |b| {
        b.iter(|| ObjectKey::from_request_path(black_box("/images/2017/07/1.jpg")))
    });
    c.bench_function("key/parse_encoded", |b| {
        b.iter(|| ObjectKey::from_request_path(black_box("/images/%E4%B8%AD%E6%96%87/a%20b.jpg")))
    });

    let origin = parse_origin("abc.example.com:8080").expect("valid origin");
    let key = ObjectKey::from_request_path("/images/2017/07/1.jpg").expect("valid key");
    c.bench_function("redirect/location", |b| {
        b.iter(|| {
            location(
                black_box(&origin),
                &black_box(&key).origin_path(),
                Some("v=1"),
            )
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = DiskStore::open(dir.path()).expect("store");
    runtime.block_on(async {
        let mut writer = store.create("b-1", &key).await.expect("create");
        writer
            .write(bytes::Bytes::from_static(&[7u8; 4096]))
            .await
            .expect("write");
        writer
            .commit(NewObject {
                content_type: Some("image/jpeg".into()),
                headers: vec![("cache-control".into(), "max-age=60".into())],
                ..NewObject::default()
            })
            .await
            .expect("commit");
    });
    c.bench_function("store/open_and_read_4k", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut object = store
                    .open("b-1", &key)
                    .await
                    .expect("open")
                    .expect("exists");
                object.read_at(0, 65536).await.expect("read")
            })
        })
    });
    let meta = runtime.block_on(async {
        store
            .open("b-1", &key)
            .await
            .expect("open")
            .expect("exists")
            .meta()
            .clone()
    });
    let reply = Reply::new(RequestId::new());
    // Building an object's head from its metadata: what a hit from disk does.
    c.bench_function("serve/hit_headers", |b| {
        b.iter(|| {
            ObjectHead::of(black_box(&meta))
                .and_then(|head| head.response(&reply))
                .expect("head")
        })
    });
    // A hit from the memory tier: the head was prepared when the object was loaded.
    let prepared = ObjectHead::of(&meta).expect("head");
    c.bench_function("serve/hit_headers_prepared", |b| {
        b.iter(|| black_box(&prepared).response(&reply).expect("head"))
    });
    // A bucket with CORS rules, a request without Origin: only `Vary: Origin` is added.
    let cors_reply = Reply {
        cors: CorsReply::VaryOnly,
        ..reply.clone()
    };
    c.bench_function("serve/hit_headers_cors_bucket_no_origin", |b| {
        b.iter(|| black_box(&prepared).response(&cors_reply).expect("head"))
    });
}

/// What a compressed hit adds: picking the representation (a second memory-tier look-up, the
/// variant's), against opening the object alone.
fn compressed_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = DiskStore::open(dir.path()).expect("store");
    let limits = HotTierLimits {
        max_bytes: 32 << 20,
        max_object_bytes: 1 << 20,
        revalidate: Duration::from_secs(3600),
    };
    let store: Arc<dyn BucketStore> = Arc::new(HotTier::new(disk, limits));
    let config = Config::parse(
        "listen: 127.0.0.1:8080\ndata_dir: d\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - name: b-1\n",
    )
    .expect("valid config");
    let routes = Routes::new(&config).expect("routes");
    let bucket = routes
        .bucket_for_host(b"b-1.file.myqcloud.com")
        .expect("bucket")
        .clone();
    let key = ObjectKey::from_request_path("/app.js").expect("valid key");
    let script: String = (0..2500)
        .map(|i| format!("function f{i}(a) {{ return a * {i}; }}\n"))
        .collect();
    runtime.block_on(async {
        let mut writer = store.create("b-1", &key).await.expect("create");
        writer
            .write(bytes::Bytes::from(script))
            .await
            .expect("write");
        let meta = writer
            .commit(NewObject {
                content_type: Some("application/javascript".into()),
                headers: vec![("cache-control".into(), "max-age=60".into())],
                ..NewObject::default()
            })
            .await
            .expect("commit");
        store
            .put_variant(
                "b-1",
                &key,
                &meta,
                "gzip",
                bytes::Bytes::from(vec![1u8; 20_000]),
            )
            .await
            .expect("put variant");
    });
    let compressor = Compressor::new(store.clone());
    let mut req = RequestHeader::build("GET", b"/app.js", None).expect("request");
    req.insert_header("accept-encoding", "gzip, deflate")
        .expect("header");
    c.bench_function("store/open_100k_js_from_memory", |b| {
        b.iter(|| runtime.block_on(store.open("b-1", &key)).expect("open"))
    });
    c.bench_function("compress/open_and_select_gzip_from_memory", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let object = store
                    .open("b-1", &key)
                    .await
                    .expect("open")
                    .expect("exists");
                let hit = compressor.select(&req, &bucket, &key, object).await;
                assert!(hit.encoding.is_some());
                hit
            })
        })
    });
}

criterion_group!(benches, hot_paths, compressed_hit);
criterion_main!(benches);
