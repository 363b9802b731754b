//! A bucket at its own domains: `domains` (names CNAMEd to the edge and served as the bucket),
//! `https_redirect` and `hsts_max_age_secs`. A domain is kept lower-case without a trailing
//! dot; one listed by two buckets, or one under `domain_suffix` (which already names buckets),
//! is an error naming the bucket(s).

use std::collections::HashMap;

use super::errors::Errors;
use super::hostname::{is_valid_hostname, normalize_name};
use super::section::Section;

/// The most a bucket may list (each is a certificate name for ACME too).
const MAX_DOMAINS: usize = 100;
/// Two years: the longest `max-age` the HSTS preload list asks for, and then some.
const MAX_HSTS_SECS: u64 = 2 * 366 * 24 * 3600;

/// A bucket's own-domain settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketDomains {
    /// Lower-case, without a trailing dot.
    pub domains: Vec<String>,
    /// Plain-HTTP requests get 301 to `https://` (never `/.well-known/acme-challenge/`).
    pub https_redirect: bool,
    /// `Strict-Transport-Security: max-age=N` on HTTPS answers; 0: none.
    pub hsts_max_age_secs: u64,
}

pub(crate) fn parse_bucket_domains(
    bucket: &Section<'_>,
    has_https: bool,
    errors: &mut Errors,
) -> BucketDomains {
    let mut domains = Vec::new();
    if let Some(list) = bucket.typed::<Vec<String>>("domains", errors) {
        if list.len() > MAX_DOMAINS {
            errors.push(
                &bucket.scope,
                "domains",
                format!("at most {MAX_DOMAINS} domains per bucket"),
            );
        }
        for (index, raw) in list.iter().enumerate() {
            let domain = normalize_name(raw);
            if !is_valid_hostname(&domain) || domain.parse::<std::net::IpAddr>().is_ok() {
                errors.push(
                    &bucket.scope,
                    &format!("domains[{index}]"),
                    format!("`{}` is not a domain name", raw.escape_debug()),
                );
                continue;
            }
            if domains.contains(&domain) {
                errors.push(
                    &bucket.scope,
                    &format!("domains[{index}]"),
                    format!("`{domain}` is listed twice"),
                );
                continue;
            }
            domains.push(domain);
        }
    }
    let https_redirect = bucket
        .typed::<bool>("https_redirect", errors)
        .unwrap_or(false);
    if https_redirect && !has_https {
        errors.push(
            &bucket.scope,
            "https_redirect",
            "needs the `https:` section: there is no HTTPS listener to redirect to",
        );
    }
    let hsts_max_age_secs = bucket
        .at_most("hsts_max_age_secs", MAX_HSTS_SECS, errors)
        .unwrap_or(0);
    BucketDomains {
        domains,
        https_redirect,
        hsts_max_age_secs,
    }
}

/// Checks the domains of every bucket against each other and against `domain_suffix`.
pub(crate) fn check_domain_conflicts<'a>(
    buckets: impl Iterator<Item = (&'a str, &'a BucketDomains)>,
    domain_suffix: Option<&str>,
    errors: &mut Errors,
) {
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for (bucket, settings) in buckets {
        let scope = format!("bucket \"{bucket}\"");
        for domain in &settings.domains {
            if let Some(suffix) = domain_suffix {
                let under = domain == suffix
                    || domain
                        .strip_suffix(suffix)
                        .is_some_and(|head| head.ends_with('.'));
                if under {
                    errors.push(
                        &scope,
                        "domains",
                        format!(
                            "`{domain}` is under domain_suffix {suffix}, whose names are buckets \
                             already; list only the bucket's own domains"
                        ),
                    );
                    continue;
                }
            }
            match owner.get(domain.as_str()) {
                Some(first) if *first != bucket => errors.push(
                    &scope,
                    "domains",
                    format!(
                        "`{domain}` is also listed by bucket \"{first}\"; a domain serves one bucket"
                    ),
                ),
                _ => {
                    owner.insert(domain, bucket);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn config(buckets: &str) -> String {
        format!("listen: 127.0.0.1:8080\ndata_dir: ./data\ndomain_suffix: file.myqcloud.com\nbuckets:\n{buckets}")
    }

    #[test]
    fn domains_are_normalized_and_conflicts_name_both_buckets() {
        let parsed = Config::parse(&config(
            "  - name: shop-1\n    domains: [Static.Shop.Example., img.shop.example]\n    hsts_max_age_secs: 31536000\n",
        ))
        .unwrap();
        let domains = &parsed.buckets[0].domains;
        assert_eq!(domains.domains, ["static.shop.example", "img.shop.example"]);
        assert_eq!(domains.hsts_max_age_secs, 31536000);
        assert!(!domains.https_redirect);

        let text = Config::parse(&config(
            "  - name: shop-1\n    domains: [static.shop.example]\n  - name: other-1\n    domains: [STATIC.shop.example, x.file.myqcloud.com, 'bad domain']\n    https_redirect: true\n",
        ))
        .unwrap_err()
        .to_string();
        for needle in [
            "bucket \"other-1\": domains: `static.shop.example` is also listed by bucket \"shop-1\"",
            "bucket \"other-1\": domains: `x.file.myqcloud.com` is under domain_suffix",
            "bucket \"other-1\": domains[2]: `bad domain` is not a domain name",
            "bucket \"other-1\": https_redirect: needs the `https:` section",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
    }
}
