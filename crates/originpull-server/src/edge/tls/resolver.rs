//! Which certificate a handshake gets: the configured certificates (those of the running
//! configuration generation: a reload, or a change to their files, swaps them for the next
//! handshake) and those obtained by ACME, chosen by the SNI name: an exact name first, then a
//! wildcard, configured before obtained; no SNI or no match gets the default (the first
//! configured certificate, else the first obtained). Also publishes
//! `originpull_certificate_expiry_timestamp_seconds`.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certificate::LoadedCertificate;
use super::load_configured;
use super::names::CertificateSet;
use crate::live::reload::{Commit, GenerationPart};
use crate::metrics::METRICS;
use originpull_config::{normalize_name, Config, ConfigErrors};

/// Every certificate the HTTPS listener can serve. As a [`GenerationPart`] it reads and checks
/// `https.certificates` with every configuration generation.
#[derive(Default)]
pub struct Certificates {
    /// Shared with the commit of a reload, which swaps them.
    configured: Arc<ArcSwap<Configured>>,
    obtained: Arc<ArcSwap<CertificateSet>>,
}

/// The configured certificates in file order, and the certificate file each was read from.
#[derive(Default)]
struct Configured {
    set: CertificateSet,
    cert_files: Vec<PathBuf>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("configured", &self.configured.load().set.iter().count())
            .field("obtained", &self.obtained.load().iter().count())
            .finish()
    }
}

impl Certificates {
    /// The certificate for a handshake naming `sni` (or none).
    pub fn choose(&self, sni: Option<&str>) -> Option<Arc<LoadedCertificate>> {
        let configured = self.configured.load();
        let configured = &configured.set;
        let obtained = self.obtained.load();
        if let Some(name) = sni.map(normalize_name) {
            let found = configured
                .exact(&name)
                .or_else(|| obtained.exact(&name))
                .or_else(|| configured.wildcard(&name))
                .or_else(|| obtained.wildcard(&name));
            if let Some(cert) = found {
                return Some(cert.clone());
            }
        }
        configured.first().or_else(|| obtained.first()).cloned()
    }

    /// Whether a configured certificate covers `name` (normalized already): ACME leaves such
    /// names alone.
    pub fn configured_covers(&self, name: &str) -> bool {
        self.configured.load().set.covers(name)
    }

    /// Replaces the obtained certificates (ACME issued or renewed one).
    pub fn set_obtained(&self, certificates: Vec<Arc<LoadedCertificate>>) {
        self.obtained
            .store(Arc::new(CertificateSet::new(certificates)));
        publish_expiry(&self.configured.load().set, &self.obtained.load());
    }
}

impl GenerationPart for Certificates {
    fn prepare(&self, config: &Config) -> Result<Commit, ConfigErrors> {
        let next = match &config.https {
            Some(https) => Configured {
                set: load_configured(https)?,
                cert_files: https
                    .certificates
                    .iter()
                    .map(|files| files.cert_file.clone())
                    .collect(),
            },
            None => Configured::default(),
        };
        let configured = self.configured.clone();
        let obtained = self.obtained.clone();
        Ok(Box::new(move || {
            configured.store(Arc::new(next));
            publish_expiry(&configured.load().set, &obtained.load());
        }))
    }

    fn files(&self, config: &Config) -> Vec<PathBuf> {
        let Some(https) = &config.https else {
            return Vec::new();
        };
        https
            .certificates
            .iter()
            .flat_map(|files| [files.cert_file.clone(), files.key_file.clone()])
            .collect()
    }

    /// A certificate file that now holds other text than was loaded (a rotation), or that
    /// cannot be read (which a reload must report).
    fn files_changed(&self) -> bool {
        let configured = self.configured.load();
        configured
            .cert_files
            .iter()
            .zip(configured.set.iter())
            .any(|(file, loaded)| {
                std::fs::read_to_string(file).map_or(true, |now| now != loaded.source)
            })
    }
}

/// Sets `originpull_certificate_expiry_timestamp_seconds{name}` for every certificate served
/// now, dropping series of certificates no longer served.
fn publish_expiry(configured: &CertificateSet, obtained: &CertificateSet) {
    let gauge = &METRICS.certificate_expiry;
    gauge.reset();
    for cert in configured.iter().chain(obtained.iter()) {
        gauge
            .with_label_values(&[cert.label()])
            .set(cert.not_after as f64);
    }
}

/// rustls's hook: runs inside every handshake, synchronously, on certificates in memory.
#[derive(Debug)]
pub struct SniResolver(pub Arc<Certificates>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0
            .choose(hello.server_name())
            .map(|cert| cert.key.clone())
    }
}
