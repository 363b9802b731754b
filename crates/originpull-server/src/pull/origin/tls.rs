//! The certificates HTTPS origins are verified against: the system roots plus a bucket's
//! `tls.ca_file`. Pingora's rustls connector takes either its own roots or a per-peer CA list,
//! never both, so a bucket with a `ca_file` gets one list holding both, built once per
//! configuration generation. Without a `ca_file`, peers carry no list and the connector's system
//! roots apply.
//!
//! Every copy shares one connector and so one connection pool, whose key (`HttpPeer`'s `Hash`)
//! covers the address, SNI and verify flags but not the CA list: a connection one bucket's roots
//! verified would be handed to a bucket that does not trust them. [`OriginTrust::apply`] gives
//! each set of roots its own pool group, so a pooled connection is only reused under the trust
//! that verified it.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, LazyLock};

use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
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

/// What a bucket's HTTPS peers trust: the system roots, or the system roots plus a `ca_file`.
#[derive(Clone, Default)]
pub struct OriginTrust {
    /// `None`: the connector's system roots.
    roots: Option<Arc<CaType>>,
    /// The connection pool group of peers with these roots; 0 for the system roots alone.
    pool_group: u64,
}

impl OriginTrust {
    /// The system roots plus `extra` (a `ca_file`'s certificates, DER).
    pub fn with_extra_roots(extra: &[Vec<u8>]) -> OriginTrust {
        let list: Vec<WrappedX509> = SYSTEM_ROOTS
            .iter()
            // Pingora's wrapper panics on what it cannot parse; skip such a system root.
            .filter(|der| X509Certificate::from_der(der).is_ok())
            .chain(extra.iter())
            .map(|der| WrappedX509::new(der.clone(), parse_x509))
            .collect();
        // The same certificates give the same group (a reload, two buckets naming one file);
        // other certificates another one. Never 0, the system roots' group.
        let mut hasher = DefaultHasher::new();
        extra.hash(&mut hasher);
        OriginTrust {
            roots: Some(Arc::from(list.into_boxed_slice())),
            pool_group: hasher.finish() | 1,
        }
    }

    /// Makes `peer` verify against these roots and reuse only connections verified against them.
    pub fn apply(&self, peer: &mut HttpPeer) {
        peer.options.ca = self.roots.clone();
        peer.group_key = self.pool_group;
    }
}
