//! `https:`: the HTTPS listener (HTTP/2 and HTTP/1.1 by ALPN), its certificates and the ACME
//! account that obtains certificates for bucket domains no configured certificate covers.
//! Only the shape is checked here; the certificate files themselves are read (and checked) by
//! the server's `edge::tls` when a configuration generation is built, so `-t` and reloads check
//! them too.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::errors::Errors;
use super::section::Section;

/// The default of `https.max_concurrent_streams`.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 128;
/// The default of `https.acme.renew_before_days`.
pub const DEFAULT_RENEW_BEFORE_DAYS: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsSettings {
    /// (restart) The HTTPS listener.
    pub listen: SocketAddr,
    /// Whether ALPN offers `h2` (else `http/1.1` only).
    pub http2: bool,
    pub min_tls_version: MinTlsVersion,
    /// SETTINGS_MAX_CONCURRENT_STREAMS of each HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// In file order: the first is the default certificate (no SNI, or no name matches).
    pub certificates: Vec<CertificateFiles>,
    pub acme: Option<AcmeSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinTlsVersion {
    Tls12,
    Tls13,
}

/// One `https.certificates[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// `https.acme`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub directory_url: String,
    /// `mailto:` address given to the ACME server; none when absent.
    pub contact: Option<String>,
    /// The account key and the certificates obtained, kept 0600; required unless the buckets
    /// live in an S3 store, which then keeps them for the whole fleet.
    pub state_dir: Option<PathBuf>,
    /// Extra trust for the ACME server's own certificate (a private ACME server).
    pub ca_file: Option<PathBuf>,
    pub renew_before_days: u64,
}

const HTTPS_KEYS: &[&str] = &[
    "listen",
    "http2",
    "min_tls_version",
    "max_concurrent_streams",
    "certificates",
    "acme",
];
const CERTIFICATE_KEYS: &[&str] = &["cert_file", "key_file"];
const ACME_KEYS: &[&str] = &[
    "directory_url",
    "contact",
    "state_dir",
    "ca_file",
    "renew_before_days",
];

/// `s3_store`: whether the S3 store keeps ACME's state (else `https.acme.state_dir` must).
pub(crate) fn parse_https(
    top: &Section<'_>,
    listen: Option<SocketAddr>,
    s3_store: bool,
    errors: &mut Errors,
) -> Option<HttpsSettings> {
    let https = top.nested("https", HTTPS_KEYS, "https.", errors)?;
    let https_listen = https.socket_addr("listen", errors, true);
    if let (Some(plain), Some(tls)) = (listen, https_listen) {
        let same_ip =
            plain.ip() == tls.ip() || plain.ip().is_unspecified() || tls.ip().is_unspecified();
        if plain.port() == tls.port() && same_ip {
            errors.push(
                &https.scope,
                "https.listen",
                format!("{tls} is the plain listener's address (`listen: {plain}`)"),
            );
        }
    }
    let http2 = https.typed::<bool>("http2", errors).unwrap_or(true);
    let min_tls_version = match https.typed::<String>("min_tls_version", errors).as_deref() {
        None | Some("1.2") => MinTlsVersion::Tls12,
        Some("1.3") => MinTlsVersion::Tls13,
        Some(other) => {
            errors.push(
                &https.scope,
                "https.min_tls_version",
                format!("`{other}` is not a TLS version originpull offers; use \"1.2\" or \"1.3\""),
            );
            MinTlsVersion::Tls12
        }
    };
    let max_concurrent_streams = https.positive(
        "max_concurrent_streams",
        u64::from(DEFAULT_MAX_CONCURRENT_STREAMS),
        errors,
    );
    let max_concurrent_streams = u32::try_from(max_concurrent_streams).unwrap_or_else(|_| {
        errors.push(
            &https.scope,
            "https.max_concurrent_streams",
            format!("must be at most {}", u32::MAX),
        );
        DEFAULT_MAX_CONCURRENT_STREAMS
    });
    let mut certificates = Vec::new();
    https.each_mapping(
        "certificates",
        CERTIFICATE_KEYS,
        (
            "a list of {cert_file, key_file}",
            "a mapping with cert_file and key_file",
        ),
        errors,
        |cert, errors| {
            let file = |key: &str, errors: &mut Errors| {
                let path = cert.typed::<String>(key, errors);
                match path {
                    Some(p) if !p.trim().is_empty() => Some(PathBuf::from(p)),
                    _ => {
                        errors.push(&cert.scope, &cert.field(key), "is required: a PEM file");
                        None
                    }
                }
            };
            if let (Some(cert_file), Some(key_file)) =
                (file("cert_file", errors), file("key_file", errors))
            {
                certificates.push(CertificateFiles {
                    cert_file,
                    key_file,
                });
            }
        },
    );
    let acme = parse_acme(&https, s3_store, errors);
    if certificates.is_empty() && acme.is_none() {
        errors.push(
            &https.scope,
            "https.certificates",
            "at least one certificate is required (the first is the default), unless https.acme obtains them",
        );
    }
    Some(HttpsSettings {
        listen: https_listen?,
        http2,
        min_tls_version,
        max_concurrent_streams,
        certificates,
        acme,
    })
}

fn parse_acme(https: &Section<'_>, s3_store: bool, errors: &mut Errors) -> Option<AcmeSettings> {
    let acme = https.nested("acme", ACME_KEYS, "https.acme.", errors)?;
    let directory_url = match acme.typed::<String>("directory_url", errors) {
        Some(url) if url.starts_with("https://") && url.len() > "https://".len() => Some(url),
        Some(url) => {
            errors.push(
                &acme.scope,
                "https.acme.directory_url",
                format!("`{url}` must be an https:// URL of an ACME directory"),
            );
            None
        }
        None => {
            errors.push(
                &acme.scope,
                "https.acme.directory_url",
                "is required, e.g. https://acme-v02.api.letsencrypt.org/directory",
            );
            None
        }
    };
    let contact = acme.typed::<String>("contact", errors);
    if let Some(contact) = &contact {
        if !contact.starts_with("mailto:") || contact.len() <= "mailto:".len() {
            errors.push(
                &acme.scope,
                "https.acme.contact",
                format!("`{contact}` must be a mailto: address, e.g. mailto:ops@example.com"),
            );
        }
    }
    let state_dir = match acme.typed::<String>("state_dir", errors) {
        Some(dir) if dir.trim().is_empty() => {
            errors.push(&acme.scope, "https.acme.state_dir", "must not be empty");
            None
        }
        None if !s3_store => {
            errors.push(
                &acme.scope,
                "https.acme.state_dir",
                "is required without store.backend: s3: the directory for the account key and \
                 the certificates obtained",
            );
            None
        }
        dir => dir.map(PathBuf::from),
    };
    let ca_file = acme.typed::<String>("ca_file", errors).map(PathBuf::from);
    let renew_before_days = acme.positive("renew_before_days", DEFAULT_RENEW_BEFORE_DAYS, errors);
    if renew_before_days >= 90 {
        errors.push(
            &acme.scope,
            "https.acme.renew_before_days",
            "must be below 90 (certificates from Let's Encrypt last 90 days)",
        );
    }
    Some(AcmeSettings {
        directory_url: directory_url?,
        contact,
        state_dir,
        ca_file,
        renew_before_days,
    })
}

#[cfg(test)]
mod tests {
    use crate::{Config, MinTlsVersion};

    fn with_https(https: &str) -> String {
        format!("listen: 127.0.0.1:8080\ndata_dir: ./data\ndomain_suffix: file.myqcloud.com\nhttps:\n{https}buckets: []\n")
    }

    #[test]
    fn parses_the_documented_section_with_defaults() {
        let config = Config::parse(&with_https(
            "  listen: 0.0.0.0:443\n  certificates:\n    - cert_file: /etc/originpull/tls/edge.pem\n      key_file: /etc/originpull/tls/edge.key\n",
        ))
        .unwrap();
        let https = config.https.unwrap();
        assert!(https.http2);
        assert_eq!(https.min_tls_version, MinTlsVersion::Tls12);
        assert_eq!(https.max_concurrent_streams, 128);
        assert_eq!(https.certificates.len(), 1);
        assert!(https.acme.is_none());

        let config = Config::parse(&with_https(
            "  listen: 0.0.0.0:443\n  http2: false\n  min_tls_version: \"1.3\"\n  acme:\n    directory_url: https://acme-v02.api.letsencrypt.org/directory\n    contact: mailto:ops@example.com\n    state_dir: /var/lib/originpull/acme\n",
        ))
        .unwrap();
        let https = config.https.unwrap();
        assert!(!https.http2);
        assert_eq!(https.min_tls_version, MinTlsVersion::Tls13);
        assert_eq!(https.acme.unwrap().renew_before_days, 30);
    }

    #[test]
    fn errors_name_the_field() {
        let text = Config::parse(&with_https(
            "  listen: 127.0.0.1:8080\n  min_tls_version: \"1.1\"\n  max_concurrent_streams: 0\n  certificates:\n    - cert_file: a.pem\n  acme:\n    directory_url: http://acme.example\n    contact: ops@example.com\n    renew_before_days: 90\n    typo: 1\n",
        ))
        .unwrap_err()
        .to_string();
        for needle in [
            "https.listen: 127.0.0.1:8080 is the plain listener's address",
            "https.min_tls_version: `1.1`",
            "https.max_concurrent_streams: must be greater than 0",
            "https.certificates[0].key_file: is required",
            "https.acme.directory_url: `http://acme.example` must be an https:// URL",
            "https.acme.contact: `ops@example.com` must be a mailto: address",
            "https.acme.state_dir: is required without store.backend: s3",
            "https.acme.renew_before_days: must be below 90",
            "https.acme.typo: unknown key",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
        let text = Config::parse(&with_https("  listen: 127.0.0.1:8443\n"))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("https.certificates: at least one certificate is required"),
            "{text}"
        );
    }
}
