//! `buckets:`: each bucket's name, its origin-pull settings (see [`super::origin_pull`]) and its
//! static-website settings.

use std::collections::HashSet;

use serde_yaml::Value;

use super::cors::{parse_cors, CorsRule};
use super::domains::{check_domain_conflicts, parse_bucket_domains, BucketDomains};
use super::errors::Errors;
use super::origin_pull::{parse_origin_pull, LoopGuard, OriginPullConfig};
use super::section::Section;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    /// `<BucketName>-<APPID>`; also the first DNS label of the bucket's host.
    pub name: String,
    /// `None` when the bucket has no `origin_pull` section.
    pub origin_pull: Option<OriginPullConfig>,
    /// `website.index_document`: `/` and paths ending in `/` name this object in the folder.
    pub index_document: Option<String>,
    /// `website.error_document`: the stored object served with status 404 where the answer
    /// would be `404 NoSuchKey`.
    pub error_document: Option<String>,
    /// `domains`, `https_redirect`, `hsts_max_age_secs`.
    pub domains: BucketDomains,
    /// CORS rules, first match wins; empty when the bucket has no `cors`.
    pub cors: Vec<CorsRule>,
    /// Whether the disk store may evict the bucket's objects to stay within its limits.
    pub retention: Retention,
}

/// `retention`: what the disk store may do with a bucket's objects when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// Never evicted: the bucket is the objects' home (a migration's destination).
    #[default]
    Keep,
    /// Evicted least recently used first to keep `store.max_bytes` and `store.min_free_bytes`;
    /// an evicted object is pulled from the origin again on its next miss.
    Cache,
}

impl BucketConfig {
    /// Whether any miss of the bucket may go to an origin (the whole bucket, or a rule).
    pub fn pulls_from_origin(&self) -> bool {
        self.origin_pull.as_ref().is_some_and(|pull| {
            pull.enabled || pull.rules.iter().any(|rule| rule.enabled == Some(true))
        })
    }
}

const BUCKET_KEYS: &[&str] = &[
    "name",
    "origin_pull",
    "website",
    "cors",
    "domains",
    "https_redirect",
    "hsts_max_age_secs",
    "retention",
];
const WEBSITE_KEYS: &[&str] = &["index_document", "error_document"];

pub(crate) fn parse_buckets(
    top: &Section<'_>,
    guard: &LoopGuard<'_>,
    has_https: bool,
    errors: &mut Errors,
) -> Vec<BucketConfig> {
    let Some(value) = top.get("buckets") else {
        return Vec::new();
    };
    let Some(items) = value.as_sequence() else {
        errors.push("top level", "buckets", "expected a list of buckets");
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut buckets = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Some(map) = item.as_mapping() else {
            errors.push(
                &format!("buckets[{index}]"),
                "",
                "expected a mapping with `name` and `origin_pull`",
            );
            continue;
        };
        let name = map.get("name").and_then(Value::as_str).map(str::to_string);
        let scope = match &name {
            Some(n) => format!("bucket \"{n}\""),
            None => format!("buckets[{index}]"),
        };
        let bucket = Section::new(scope.clone(), "", map, BUCKET_KEYS, errors);
        let Some(name) = name else {
            errors.push(&scope, "name", "is required, e.g. example-1250000000");
            continue;
        };
        if let Err(why) = validate_bucket_name(&name) {
            errors.push(&scope, "name", why);
        }
        if !seen.insert(name.clone()) {
            errors.push(
                &scope,
                "name",
                "duplicate bucket name; each bucket may appear once",
            );
        }
        let origin_pull = parse_origin_pull(&bucket, guard, errors);
        let (index_document, error_document) = parse_website(&bucket, errors);
        let cors = parse_cors(&bucket, errors);
        let domains = parse_bucket_domains(&bucket, has_https, errors);
        let mut config = BucketConfig {
            name,
            origin_pull,
            index_document,
            error_document,
            domains,
            cors,
            retention: Retention::Keep,
        };
        config.retention = parse_retention(&bucket, &config, errors);
        buckets.push(config);
    }
    check_domain_conflicts(
        buckets.iter().map(|b| (b.name.as_str(), &b.domains)),
        guard.domain_suffix,
        errors,
    );
    buckets
}

/// `retention`: `keep` (the default) or `cache`, which only a bucket that pulls from an origin
/// may have (an evicted object must be found again).
fn parse_retention(bucket: &Section<'_>, config: &BucketConfig, errors: &mut Errors) -> Retention {
    match bucket.typed::<String>("retention", errors).as_deref() {
        None | Some("keep") => Retention::Keep,
        Some("cache") if config.pulls_from_origin() => Retention::Cache,
        Some("cache") => {
            errors.push(
                &bucket.scope,
                "retention",
                "`cache` needs origin pull (`origin_pull.enabled: true` or a rule that enables \
                 it): an evicted object is copied again from the origin on its next miss",
            );
            Retention::Keep
        }
        Some(other) => {
            errors.push(
                &bucket.scope,
                "retention",
                format!("unknown retention {other:?}; expected `keep` or `cache`"),
            );
            Retention::Keep
        }
    }
}

/// `website.index_document` and `website.error_document`.
fn parse_website(bucket: &Section<'_>, errors: &mut Errors) -> (Option<String>, Option<String>) {
    let Some(website) = bucket.nested("website", WEBSITE_KEYS, "website.", errors) else {
        return (None, None);
    };
    let error_document = website
        .typed::<String>("error_document", errors)
        .filter(|key| {
            let valid = !key.is_empty()
                && key.len() <= 1024
                && !key.starts_with('/')
                && !key.chars().any(char::is_control);
            if !valid {
                errors.push(
                    &website.scope,
                    "website.error_document",
                    format!(
                        "`{}` must be an object key such as 404.html (not empty, no leading `/`)",
                        key.escape_debug()
                    ),
                );
            }
            valid
        });
    (parse_index_document(&website, errors), error_document)
}

fn parse_index_document(website: &Section<'_>, errors: &mut Errors) -> Option<String> {
    let name = website.typed::<String>("index_document", errors)?;
    let valid = !name.is_empty()
        && name.len() <= 255
        && !name.contains('/')
        && name != "."
        && name != ".."
        && !name.chars().any(char::is_control);
    if !valid {
        errors.push(
            &website.scope,
            "website.index_document",
            format!(
                "`{}` must be a file name such as index.html (no `/`, not empty)",
                name.escape_debug()
            ),
        );
        return None;
    }
    Some(name)
}

/// Bucket names are one DNS label: lower-case letters, digits and hyphens.
pub fn validate_bucket_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("`{name}` must be 1 to 63 characters long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "`{name}` may contain only lower-case letters, digits and hyphens"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("`{name}` must not start or end with a hyphen"));
    }
    Ok(())
}
