//! The HTTPS listener's TLS: the certificates (loaded from PEM files, checked, chosen by SNI
//! with exact and one-label wildcard names, the first as the default, swapped with each
//! configuration generation as its [`GenerationPart`](crate::live::reload::GenerationPart)), the
//! rustls server configuration (TLS 1.2 and 1.3 with forward-secret AEAD suites only, ALPN
//! `h2` and `http/1.1`, session resumption), and the handshake itself, which the connection
//! gate runs under `server.header_timeout_secs`.
//!
//! Pingora's own TLS listener is not used: it bounds a handshake by a fixed 60 s, runs it
//! before the gate could count the connection against `server.max_connections`, logs every
//! failed handshake at error level, and its rustls settings cannot leave TLS 1.2 out.

pub mod certificate;
pub mod names;
pub mod resolver;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::Stream;
use rustls::server::ServerConfig;

use crate::metrics::METRICS;
pub use certificate::LoadedCertificate;
pub use names::certificate_covers;
use names::CertificateSet;
use originpull_config::{ConfigError, ConfigErrors, HttpsSettings, MinTlsVersion};
pub use resolver::Certificates;
use resolver::SniResolver;
pub use stream::EdgeTlsStream;

/// TLS sessions remembered for resumption by session id (TLS 1.2); tickets need no memory.
const SESSION_CACHE: usize = 20_000;

/// Loads every `https.certificates` entry; an error names the entry and the file.
fn load_configured(https: &HttpsSettings) -> Result<CertificateSet, ConfigErrors> {
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for (index, files) in https.certificates.iter().enumerate() {
        match certificate::load_files(&files.cert_file, &files.key_file) {
            Ok(cert) => loaded.push(Arc::new(cert)),
            Err(message) => errors.push(ConfigError {
                scope: "https".to_string(),
                field: format!("https.certificates[{index}]"),
                message,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(CertificateSet::new(loaded))
}

/// The rustls configuration of the HTTPS listener.
fn server_config(
    https: &HttpsSettings,
    certificates: Arc<Certificates>,
) -> Result<ServerConfig, String> {
    // ring's suites: TLS 1.3's three AEADs, and for TLS 1.2 only ECDHE with AES-GCM or
    // ChaCha20-Poly1305: every one forward-secret and AEAD.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match https.min_tls_version {
        MinTlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinTlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(certificates)));
    config.alpn_protocols = if https.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    config.ignore_client_order = true;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS session tickets: {e}"))?;
    Ok(config)
}

/// The HTTPS side of the connection gate: runs handshakes.
pub struct EdgeTls {
    acceptor: tokio_rustls::TlsAcceptor,
    certificates: Arc<Certificates>,
    /// `server.header_timeout_secs`: a handshake must finish within it.
    timeout: Duration,
}

impl EdgeTls {
    /// The TLS side of the listener `https` describes, serving `certificates`, each handshake
    /// within `timeout`.
    pub fn new(
        https: &HttpsSettings,
        certificates: Arc<Certificates>,
        timeout: Duration,
    ) -> Result<EdgeTls, String> {
        let config = server_config(https, certificates.clone())?;
        Ok(EdgeTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            certificates,
            timeout,
        })
    }

    /// Runs the handshake on `stream`; `None` when it fails or takes too long (counted in
    /// `originpull_tls_handshake_failures_total`, logged at debug level only: scanners and
    /// clients that give up are ordinary traffic).
    pub async fn handshake(&self, stream: Stream) -> Option<EdgeTlsStream> {
        let reason = match tokio::time::timeout(self.timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let sni = tls.get_ref().1.server_name().map(str::to_string);
                let certificate = self.certificates.choose(sni.as_deref());
                return Some(EdgeTlsStream::new(tls, certificate));
            }
            Ok(Err(e)) => {
                log::debug!("TLS handshake failed: {e}");
                "error"
            }
            Err(_) => {
                log::debug!("TLS handshake not finished within server.header_timeout_secs");
                "timeout"
            }
        };
        METRICS
            .tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
        None
    }
}
