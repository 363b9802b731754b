//! One server certificate ready for handshakes: its chain and key as rustls signs with them,
//! the DNS names it covers, when it expires and its serial number. Loading refuses what must
//! never be served: an unreadable or empty file, a key that does not match the certificate, a
//! certificate with no DNS name, an expired one, and a key file every user can read.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use originpull_config::normalize_name;

/// A certificate and its key, checked and parsed.
#[derive(Debug)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// The subjectAltName DNS names, lower-case, without a trailing dot, in certificate order
    /// (`*.file.myqcloud.com` kept as written).
    pub names: Vec<String>,
    /// `notBefore` and `notAfter`, in seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The serial number, hex.
    pub serial: String,
    /// The certificate's PEM text as read (to tell whether the files changed since).
    pub source: String,
}

impl LoadedCertificate {
    /// The name the expiry metric is labelled with: the first DNS name.
    pub fn label(&self) -> &str {
        self.names.first().map_or("", String::as_str)
    }
}

/// Reads and checks `cert_file` (PEM chain, leaf first) and `key_file` (PEM key). The error
/// names the file at fault and never quotes key material.
pub fn load_files(cert_file: &Path, key_file: &Path) -> Result<LoadedCertificate, String> {
    let key_meta = std::fs::metadata(key_file)
        .map_err(|e| format!("{}: cannot read: {e}", key_file.display()))?;
    if key_meta.permissions().mode() & 0o004 != 0 {
        return Err(format!(
            "{}: is readable by every user; restrict it (chmod 600 or 640)",
            key_file.display()
        ));
    }
    let cert_pem = std::fs::read_to_string(cert_file)
        .map_err(|e| format!("{}: cannot read: {e}", cert_file.display()))?;
    let key_pem = std::fs::read_to_string(key_file)
        .map_err(|e| format!("{}: cannot read: {e}", key_file.display()))?;
    from_pem(&cert_pem, &key_pem, now_secs()).map_err(|why| match why {
        PemError::Certificate(why) => format!("{}: {why}", cert_file.display()),
        PemError::Key(why) => format!("{}: {why}", key_file.display()),
    })
}

/// What is wrong, and in which of the two PEM texts.
#[derive(Debug)]
pub enum PemError {
    Certificate(String),
    Key(String),
}

impl std::fmt::Display for PemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemError::Certificate(why) => write!(f, "certificate: {why}"),
            PemError::Key(why) => write!(f, "key: {why}"),
        }
    }
}

/// Parses and checks a PEM chain and key as of `now` (seconds since the epoch).
pub fn from_pem(cert_pem: &str, key_pem: &str, now: i64) -> Result<LoadedCertificate, PemError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PemError::Certificate(format!("not valid PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(PemError::Certificate(
            "holds no CERTIFICATE block".to_string(),
        ));
    };
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| PemError::Key(format!("not valid PEM: {e}")))?
        .ok_or_else(|| PemError::Key("holds no PRIVATE KEY block".to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| PemError::Key(format!("not a key rustls can sign with: {e}")))?;
    let (_, parsed) = X509Certificate::from_der(leaf)
        .map_err(|e| PemError::Certificate(format!("the first certificate does not parse: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(normalize_name(dns));
            }
        }
    }
    if names.is_empty() {
        return Err(PemError::Certificate(
            "the first certificate names no DNS name in subjectAltName".to_string(),
        ));
    }
    let not_before = parsed.validity().not_before.timestamp();
    let not_after = parsed.validity().not_after.timestamp();
    if not_after <= now {
        return Err(PemError::Certificate(format!(
            "the certificate for {} expired at {}",
            names[0],
            parsed.validity().not_after
        )));
    }
    let serial = parsed
        .raw_serial_as_string()
        .replace(':', "")
        .trim_start_matches('0')
        .to_string();
    drop(parsed);
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|e| {
        PemError::Key(format!(
            "does not match the certificate for {}: {e}",
            names[0]
        ))
    })?;
    Ok(LoadedCertificate {
        key: Arc::new(key),
        names,
        not_before,
        not_after,
        serial,
        source: cert_pem.to_string(),
    })
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
