//! The certificates HTTPS origins are verified against: the system roots plus a bucket's
//! `tls.ca_file`. Pingora's rustls connector takes either its own roots or a per-peer CA list,
//! never both, so a bucket with a `ca_file` gets one list holding both, built once per
//! configuration generation. Without a `ca_file`, peers carry no list and the connector's system
//! roots apply.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, WrappedX509};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The system's roots in DER, read once (they do not change while the process runs).
static SYSTEM_ROOTS: LazyLock<Vec<Vec<u8>>> =
    LazyLock::new(|| match rustls_native_certs::load_native_certs() {
        Ok(certs) => certs.into_iter().map(|c| c.to_vec()).collect(),
        Err(e) => {
            log::warn!("cannot read the system's CA certificates: {e}");
            Vec::new()
        }
    });

/// Reads the PEM certificates of `ca_file`; the error says what is wrong for the operator.
pub fn read_ca_file(ca_file: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pem =
        std::fs::read(ca_file).map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut pem.as_slice()) {
        let der = item.map_err(|e| format!("{}: not valid PEM: {e}", ca_file.display()))?;
        if X509Certificate::from_der(&der).is_err() {
            return Err(format!(
                "{}: certificate {} is not a valid X.509 certificate",
                ca_file.display(),
                certs.len() + 1
            ));
        }
        certs.push(der.to_vec());
    }
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ca_file.display()
        ));
    }
    Ok(certs)
}

/// The CA list for peers of a bucket with `ca_file`: the system roots plus the file's.
pub fn roots_with(extra: &[Vec<u8>]) -> Arc<CaType> {
    let list: Vec<WrappedX509> = SYSTEM_ROOTS
        .iter()
        // Pingora's wrapper panics on what it cannot parse; skip such a system root.
        .filter(|der| X509Certificate::from_der(der).is_ok())
        .chain(extra.iter())
        .map(|der| WrappedX509::new(der.clone(), parse_x509))
        .collect();
    Arc::from(list.into_boxed_slice())
}
