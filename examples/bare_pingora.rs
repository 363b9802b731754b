//! The floor of originpull's stack, for `benches/side_by_side.sh`: a bare Pingora `ProxyHttp`
//! that answers every request from `request_filter` with a constant response, as originpull
//! answers a 302 or a small hit, with nothing of originpull's own (no routing, key parsing,
//! store, metrics, access log or connection gate). It sends the same header names and value
//! lengths as originpull and uses the same allocator (mimalloc), so the two put the same bytes
//! on the wire through the same stack. Same thread count and the same listening
//! arrangement as originpull (one `SO_REUSEPORT` socket and one single-threaded runtime per
//! worker), so the difference between the two is not how connections are spread over threads.
//! Each worker is Pingora's own listening service with its default socket buffers (64 KiB to
//! read, 16 KiB to write): Pingora's accept loop and connection handling, where originpull has
//! its own (`edge::listener`, `edge::connection`).
//!
//! `cargo run --release --example bare_pingora -- MODE LISTEN THREADS [CERT KEY]`, MODE `302`
//! (a redirect with an empty body), `4k` (a 4 KiB body) or `1m` (1 MiB), e.g.
//! `302 127.0.0.1:8090 2`. With CERT and KEY (PEM files) it speaks HTTPS instead, HTTP/2 and
//! HTTP/1.1 by ALPN, through Pingora's own TLS listener (one service of THREADS threads): the
//! floor of `benches/https_side_by_side.sh`.

// A test (or benchmark) that unwraps fails loudly, which is what it should do.
#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use bytes::Bytes;
use originpull_server::edge::listener::bind_reuseport;
use pingora::http::ResponseHeader;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Fds, ListenFds, Server, ShutdownWatch};
use pingora::services::listening::Service as ListeningService;
use pingora::services::Service;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use pingora_proxy::HttpProxy;
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;
use std::sync::Arc;

/// One worker: Pingora's listening service (its accept loop, its default socket buffers) on a
/// `SO_REUSEPORT` socket of its own, in a runtime of one thread.
struct PingoraWorker {
    inner: ListeningService<HttpProxy<Constant>>,
    listen: SocketAddr,
}

#[async_trait]
impl Service for PingoraWorker {
    async fn start_service(
        &mut self,
        _inherited: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let fd = bind_reuseport(self.listen).expect("bind the worker's socket");
        // Pingora's service looks its address up in this table and adopts the socket.
        let own: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
        own.lock().add(self.listen.to_string(), fd);
        self.inner
            .start_service(Some(own), shutdown, listeners_per_fd)
            .await;
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }
}

// The allocator originpull uses: part of the stack, so part of its floor.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone)]
struct Constant {
    status: u16,
    body: Bytes,
}

#[async_trait]
impl ProxyHttp for Constant {
    type CTX = ();

    fn new_ctx(&self) {}

    /// The same header names, in the same order and of the same lengths, as originpull's
    /// answer (`curl -i` a hit and a 302 of the benchmark's bucket), with constant values, so
    /// both send the same bytes and the difference is the code that makes them.
    async fn request_filter(&self, session: &mut Session, _: &mut ()) -> Result<bool> {
        let mut resp = ResponseHeader::build(self.status, Some(12))?;
        resp.insert_header("server", "originpull")?;
        if self.status == 302 {
            resp.insert_header("cache-control", "no-store")?;
            resp.insert_header("content-length", 0)?;
            resp.insert_header("x-originpull-request-id", "59d494f3e78eebb8")?;
            resp.insert_header("location", "http://127.0.0.1:18099/missing/nothing.bin")?;
        } else {
            resp.insert_header("content-length", self.body.len())?;
            resp.insert_header("content-type", "application/octet-stream")?;
            resp.insert_header("etag", "\"71443672af7eb2a92c26aa6e8b53f184\"")?;
            resp.insert_header("x-cos-hash-crc64ecma", "10015603723314590922")?;
            resp.insert_header("last-modified", "Fri, 27 Nov 2026 08:00:44 GMT")?;
            resp.insert_header("accept-ranges", "bytes")?;
            resp.insert_header("x-originpull-request-id", "4aceec809fcf15eb")?;
        }
        let empty = self.body.is_empty();
        session.write_response_header(Box::new(resp), empty).await?;
        if !empty {
            session
                .write_response_body(Some(self.body.clone()), true)
                .await?;
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(ErrorType::InternalError, "answers every request itself")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(listen), Some(threads)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: bare_pingora 302|4k|1m LISTEN THREADS [CERT KEY]");
        std::process::exit(2);
    };
    let Ok(threads) = threads.parse::<usize>() else {
        eprintln!("THREADS must be a number");
        std::process::exit(2);
    };
    let app = match mode.as_str() {
        "302" => Constant {
            status: 302,
            body: Bytes::new(),
        },
        "4k" => Constant {
            status: 200,
            body: Bytes::from(vec![b'x'; 4096]),
        },
        "1m" => Constant {
            status: 200,
            body: Bytes::from(vec![b'x'; 1024 * 1024]),
        },
        other => {
            eprintln!("unknown mode {other}; use 302, 4k or 1m");
            std::process::exit(2);
        }
    };
    let Ok(listen) = listen.parse::<std::net::SocketAddr>() else {
        eprintln!("LISTEN must be IP:port");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    if let (Some(cert), Some(key)) = (args.get(4), args.get(5)) {
        let mut service =
            pingora_proxy::http_proxy_service_with_name(&server.configuration, app, "bare HTTPS");
        let mut tls = match TlsSettings::intermediate(cert, key) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("CERT/KEY: {e}");
                std::process::exit(2);
            }
        };
        tls.enable_h2();
        service.add_tls_with_settings(&listen.to_string(), None, tls);
        server.add_service(service);
        server.run_forever();
    }
    for worker in 0..threads {
        let mut service = pingora_proxy::http_proxy_service_with_name(
            &server.configuration,
            app.clone(),
            &format!("bare worker {worker}"),
        );
        // Found in the table `PingoraWorker` hands it: the worker's own socket.
        service.add_tcp(&listen.to_string());
        server.add_service(PingoraWorker {
            inner: service,
            listen,
        });
    }
    server.run_forever();
}
