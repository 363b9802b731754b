//! HTTPS test pieces: a test CA that issues server certificates for any names (PEM files with
//! known serial numbers), the `https:` section pointing at them, a TLS client that reports the
//! certificate a handshake was answered with, and `curl` over HTTP/2 or HTTP/1.1 trusting the
//! test CA.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::require_program;

/// A CA whose certificates the tests trust (curl's `--cacert`, Chromium's SPKI list).
pub struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
    pub pem: String,
}

/// A server certificate the CA issued, as PEM, with its serial number (hex, lower-case).
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
    /// base64 of the SHA-256 of its SubjectPublicKeyInfo (Chromium's
    /// `--ignore-certificate-errors-spki-list`).
    pub spki_sha256: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "originpull HTTPS test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        let pem = cert.pem();
        TestCa { key, cert, pem }
    }

    /// A certificate for `names` with a fresh key and a random serial number.
    pub fn issue(&self, names: &[&str]) -> IssuedCert {
        self.issue_valid_for(names, Duration::from_secs(30 * 86_400))
    }

    /// Like [`TestCa::issue`], valid from a day ago for `validity` from now (zero: expired).
    pub fn issue_valid_for(&self, names: &[&str], validity: Duration) -> IssuedCert {
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        let serial: u64 = rand::random::<u64>() >> 1 | 1 << 56;
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let now = std::time::SystemTime::now();
        params.not_before = (now - Duration::from_secs(86_400)).into();
        params.not_after = (now + validity).into();
        if validity.is_zero() {
            params.not_after = (now - Duration::from_secs(3600)).into();
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        use sha2::Digest;
        let spki = sha2::Sha256::digest(key.public_key_der());
        IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: format!("{serial:x}"),
            spki_sha256: base64(&spki),
        }
    }

    /// Writes the CA's PEM into `dir`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        fs::write(&path, &self.pem).expect("write CA");
        path
    }
}

impl IssuedCert {
    /// Writes `<stem>.pem` and `<stem>.key` (0600) into `dir`; returns both paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        write_private(&key, &self.key_pem);
        fs::write(&cert, &self.cert_pem).expect("write certificate");
        (cert, key)
    }
}

/// Writes `text` to `path`, readable by the owner only.
pub fn write_private(path: &Path, text: &str) {
    fs::write(path, text).expect("write key");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod key");
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `https:` section for `listen` and certificate files, in order (the first is the
/// default), plus `extra` lines (indented under `https:` by this function).
pub fn https_yaml(listen: u16, certificates: &[(PathBuf, PathBuf)], extra: &str) -> String {
    let mut yaml = format!("https:\n  listen: 127.0.0.1:{listen}\n");
    if !certificates.is_empty() {
        yaml.push_str("  certificates:\n");
    }
    for (cert, key) in certificates {
        yaml.push_str(&format!(
            "    - cert_file: {}\n      key_file: {}\n",
            cert.display(),
            key.display()
        ));
    }
    for line in extra.lines() {
        yaml.push_str(&format!("  {line}\n"));
    }
    yaml
}

/// Accepts any server certificate: these tests look at which certificate was sent, not
/// whether it verifies (curl and Chromium check that).
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client connection to `port` on 127.0.0.1, sending `sni` (none when `None`), offering
/// `alpn`.
pub async fn tls_connect(
    port: u16,
    sni: Option<&str>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // An IP address as the server name sends no SNI.
    let name = match sni {
        Some(name) => ServerName::try_from(name.to_string()).expect("server name"),
        None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    };
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The serial number (hex, lower-case, no leading zeros) of the certificate a handshake naming
/// `sni` is answered with.
pub async fn served_serial(port: u16, sni: Option<&str>) -> String {
    let tls = tls_connect(port, sni, &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    serial_of(&tls)
}

/// The serial number of the leaf certificate of an established connection.
pub fn serial_of(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let (_, session) = tls.get_ref();
    let leaf = &session.peer_certificates().expect("a certificate")[0];
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).expect("certificate parses");
    parsed
        .raw_serial_as_string()
        .replace(':', "")
        .trim_start_matches('0')
        .to_string()
}

/// What `curl` reports for one HTTPS request.
#[derive(Debug)]
pub struct CurlResult {
    /// `2` or `1.1`.
    pub http_version: String,
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

/// `curl` for `https://<host>:<port><path>` resolved to 127.0.0.1, trusting `ca`, with
/// `--http2` or `--http1.1` and any `extra` arguments. `None` where curl is missing and the run
/// is not CI's.
pub fn curl(
    ca: &Path,
    host: &str,
    port: u16,
    path: &str,
    http2: bool,
    extra: &[&str],
) -> Option<CurlResult> {
    let curl = require_program("curl", None)?;
    let dir = tempfile::tempdir().expect("temp dir");
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    let output = Command::new(curl)
        .arg("-sS")
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .arg("--max-time")
        .arg("20")
        .arg("--cacert")
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("-D")
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .arg("-w")
        .arg("%{http_version} %{http_code}")
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let (version, status) = stdout.split_once(' ').unwrap_or(("", "0"));
    Some(CurlResult {
        http_version: version.to_string(),
        status: status.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl https://{host}:{port}{path}: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        }),
        headers: fs::read_to_string(&headers).unwrap_or_default(),
        body: fs::read(&body).unwrap_or_default(),
    })
}
