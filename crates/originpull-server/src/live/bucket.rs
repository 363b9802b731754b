//! Routing a request to its bucket: the `Host` (or an absolute request target's authority, or
//! HTTP/2's `:authority`) must be `<bucket name>.<domain_suffix>` or one of a bucket's own
//! `domains`, compared case-insensitively with any `:port` and a trailing dot ignored. An
//! HTTP/1.1 request without `Host` is addressed to nothing (RFC 9112 §3.2: 400).

use std::sync::Arc;

use hashbrown::HashMap;
use http::Version;
use pingora::http::authority::raw_target_authority;
use pingora::http::RequestHeader;

use crate::metrics::BucketMetrics;
use crate::pull::origin::BucketPull;
use originpull_config::{BucketConfig, Config, ConfigErrors};

/// A bucket as requests see it: its settings, where misses are pulled from, its metric series.
pub struct Bucket {
    pub config: BucketConfig,
    /// `None` when the bucket never pulls: every miss is `404 NoSuchKey`.
    pub pull: Option<Arc<BucketPull>>,
    pub metrics: Arc<BucketMetrics>,
}

/// Where a request is addressed.
pub enum Addressed<'a> {
    Bucket(&'a Arc<Bucket>),
    /// To no bucket (counted under `bucket=""`).
    Nowhere(Unaddressed),
}

/// Why a request is addressed to no bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unaddressed {
    /// Its host names no bucket.
    NoSuchBucket,
    /// An HTTP/1.1 request without `Host`, which RFC 9112 §3.2 makes a 400, even with an
    /// absolute-form target.
    NoHost,
}

/// The host → bucket table of one configuration generation.
#[derive(Default)]
pub struct Routes {
    /// `.` + the lower-case domain suffix, so a match also checks the label boundary.
    dotted_suffix: String,
    /// hashbrown's default (foldhash, seeded per process) hashes a host in a few nanoseconds;
    /// the table is built from the configuration alone, so a client's host can only be looked
    /// up, never make the table degrade.
    buckets: HashMap<String, Arc<Bucket>>,
    /// A bucket's own domains (lower-case, no trailing dot) → the bucket.
    domains: HashMap<String, Arc<Bucket>>,
}

impl Routes {
    /// Fails when a bucket's files (a `tls.ca_file`) cannot be read: the configuration is then
    /// refused as a whole, like a validation error.
    pub fn new(config: &Config) -> Result<Routes, ConfigErrors> {
        let mut errors = Vec::new();
        let mut buckets = HashMap::new();
        let mut domains = HashMap::new();
        for b in &config.buckets {
            let metrics = Arc::new(BucketMetrics::new(&b.name));
            let pull = BucketPull::new(b, &metrics).unwrap_or_else(|e| {
                errors.push(e);
                None
            });
            let bucket = Bucket {
                config: b.clone(),
                pull: pull.map(Arc::new),
                metrics,
            };
            let bucket = Arc::new(bucket);
            for domain in &b.domains.domains {
                domains.insert(domain.clone(), bucket.clone());
            }
            buckets.insert(b.name.clone(), bucket);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Routes {
            dotted_suffix: format!(".{}", config.domain_suffix),
            buckets,
            domains,
        })
    }

    /// Every bucket of the generation.
    pub fn buckets(&self) -> impl Iterator<Item = &Arc<Bucket>> {
        self.buckets.values()
    }

    /// The bucket the request addresses. An absolute-form target's authority decides over
    /// `Host` (RFC 9112 §3.2.2; the connection gate has already made `Host` agree with it, as
    /// Pingora requires); an HTTP/1.0 request may carry neither, and then addresses nothing.
    pub fn route(&self, req: &RequestHeader) -> Addressed<'_> {
        let header = req.headers.get(http::header::HOST);
        if header.is_none() && req.version == Version::HTTP_11 {
            return Addressed::Nowhere(Unaddressed::NoHost);
        }
        let host = match raw_target_authority(req.raw_path()).authority() {
            Some(authority) => authority,
            None => match (header, req.uri.authority()) {
                (Some(host), _) => host.as_bytes(),
                // HTTP/2 names the host in `:authority`.
                (None, Some(authority)) => authority.as_str().as_bytes(),
                (None, None) => return Addressed::Nowhere(Unaddressed::NoSuchBucket),
            },
        };
        match self.bucket_for_host(host) {
            Some(bucket) => Addressed::Bucket(bucket),
            None => Addressed::Nowhere(Unaddressed::NoSuchBucket),
        }
    }

    pub fn bucket_for_host(&self, host: &[u8]) -> Option<&Arc<Bucket>> {
        let host = strip_port(host);
        let host = host.strip_suffix(b".").unwrap_or(host);
        let suffix = self.dotted_suffix.as_bytes();
        let under_suffix = host.len() > suffix.len()
            && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
        if under_suffix {
            // Bucket names are lower-case ASCII; anything else cannot match.
            lower_case_lookup(&self.buckets, &host[..host.len() - suffix.len()])
        } else if self.domains.is_empty() {
            None
        } else {
            lower_case_lookup(&self.domains, host)
        }
    }
}

/// `table`'s entry for `name` compared lower-case (the keys are lower-case); lower-casing only
/// names that need it, so the usual look-up copies nothing.
fn lower_case_lookup<'a>(
    table: &'a HashMap<String, Arc<Bucket>>,
    name: &[u8],
) -> Option<&'a Arc<Bucket>> {
    let name = std::str::from_utf8(name).ok()?;
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        table.get(&name.to_ascii_lowercase())
    } else {
        table.get(name)
    }
}

fn strip_port(host: &[u8]) -> &[u8] {
    if host.starts_with(b"[") {
        // An IPv6 literal is never a bucket host; keep it whole so it matches nothing.
        return host;
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        let config = Config::parse(
            "listen: 127.0.0.1:1\ndata_dir: d\ndomain_suffix: File.MyQcloud.com\nbuckets:\n  - name: example-1250000000\n  - name: shop-1\n    domains: [static.shop.example]\n",
        )
        .unwrap();
        Routes::new(&config).unwrap()
    }

    #[test]
    fn matches_case_insensitively_and_ignores_port() {
        let r = routes();
        for host in [
            "example-1250000000.file.myqcloud.com",
            "EXAMPLE-1250000000.File.Myqcloud.Com:8080",
            "example-1250000000.file.myqcloud.com.",
        ] {
            assert_eq!(
                r.bucket_for_host(host.as_bytes())
                    .map(|b| b.config.name.as_str()),
                Some("example-1250000000"),
                "{host}"
            );
        }
    }

    #[test]
    fn own_domains_route_to_their_bucket() {
        let r = routes();
        for host in [
            "static.shop.example",
            "STATIC.Shop.Example.:443",
            "static.shop.example:8443",
        ] {
            assert_eq!(
                r.bucket_for_host(host.as_bytes())
                    .map(|b| b.config.name.as_str()),
                Some("shop-1"),
                "{host}"
            );
        }
    }

    #[test]
    fn other_hosts_match_nothing() {
        let r = routes();
        for host in [
            "file.myqcloud.com",
            ".file.myqcloud.com",
            "other-1.file.myqcloud.com",
            "example-1250000000xfile.myqcloud.com",
            "a.example-1250000000.file.myqcloud.com",
            "example-1250000000.file.myqcloud.com.evil",
            "[::1]:80",
            "x.static.shop.example",
            "shop.example",
        ] {
            assert!(r.bucket_for_host(host.as_bytes()).is_none(), "{host}");
        }
    }
}
