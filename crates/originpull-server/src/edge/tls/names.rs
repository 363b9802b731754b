//! Choosing a certificate by name: a set of certificates indexed by their DNS names, where an
//! exact name wins over a wildcard (`*.file.myqcloud.com` covers exactly one label), and the
//! first certificate is the default for no name or no match, as nginx's default server.
//! Names are compared lower-case, without one trailing dot (`originpull_config::normalize_name`).

use std::collections::HashMap;
use std::sync::Arc;

use super::certificate::LoadedCertificate;

/// Certificates in order, indexed by name.
#[derive(Debug, Default)]
pub struct CertificateSet {
    certificates: Vec<Arc<LoadedCertificate>>,
    /// Exact name → index of the first certificate naming it.
    exact: HashMap<String, usize>,
    /// The parent of a wildcard (`file.myqcloud.com` for `*.file.myqcloud.com`) → index.
    wildcard: HashMap<String, usize>,
}

impl CertificateSet {
    pub fn new(certificates: Vec<Arc<LoadedCertificate>>) -> CertificateSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (index, cert) in certificates.iter().enumerate() {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(index),
                    None => exact.entry(name.clone()).or_insert(index),
                };
            }
        }
        CertificateSet {
            certificates,
            exact,
            wildcard,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Arc<LoadedCertificate>> {
        self.certificates.iter()
    }

    /// The certificate whose name matches `name` exactly (normalized already).
    pub fn exact(&self, name: &str) -> Option<&Arc<LoadedCertificate>> {
        self.exact.get(name).map(|&i| &self.certificates[i])
    }

    /// The certificate with a wildcard covering `name` (normalized already).
    pub fn wildcard(&self, name: &str) -> Option<&Arc<LoadedCertificate>> {
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).map(|&i| &self.certificates[i])
    }

    /// The default certificate: the first.
    pub fn first(&self) -> Option<&Arc<LoadedCertificate>> {
        self.certificates.first()
    }

    /// Whether some certificate of the set covers `name` (normalized already).
    pub fn covers(&self, name: &str) -> bool {
        self.exact(name).is_some() || self.wildcard(name).is_some()
    }
}

/// Whether `cert` covers `name` (normalized already), exactly or by a one-label wildcard.
pub fn certificate_covers(cert: &LoadedCertificate, name: &str) -> bool {
    cert.names
        .iter()
        .any(|covered| match covered.strip_prefix("*.") {
            Some(parent) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => covered == name,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Arc<LoadedCertificate> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let made = params.self_signed(&key).unwrap();
        Arc::new(super::super::certificate::from_pem(&made.pem(), &key.serialize_pem(), 0).unwrap())
    }

    #[test]
    fn exact_beats_wildcard_and_the_first_is_the_default() {
        let set = CertificateSet::new(vec![
            cert(&["edge.example"]),
            cert(&["*.file.myqcloud.com"]),
            cert(&["a-1.file.myqcloud.com"]),
        ]);
        let exact = set.exact("a-1.file.myqcloud.com").unwrap();
        assert_eq!(exact.names, ["a-1.file.myqcloud.com"]);
        assert!(set.exact("b-1.file.myqcloud.com").is_none());
        let wild = set.wildcard("b-1.file.myqcloud.com").unwrap();
        assert_eq!(wild.names, ["*.file.myqcloud.com"]);
        // One label only.
        assert!(set.wildcard("x.b-1.file.myqcloud.com").is_none());
        assert!(set.wildcard("file.myqcloud.com").is_none());
        assert_eq!(set.first().unwrap().names, ["edge.example"]);
        assert!(certificate_covers(wild, "b-1.file.myqcloud.com"));
        assert!(!certificate_covers(wild, "x.b-1.file.myqcloud.com"));
        assert!(!certificate_covers(wild, ".file.myqcloud.com"));
    }
}
