//! `buckets:`: each bucket's name and its origin-pull settings.

use std::collections::HashSet;

use serde_yaml::Value;

use super::cors::{parse_cors, CorsRule};
use super::errors::Errors;
use super::origins::{parse_origin, OriginAddr, HINT};
use super::section::Section;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    /// `<BucketName>-<APPID>`; also the first DNS label of the bucket's host.
    pub name: String,
    /// `None` when origin-pull is disabled.
    pub origin: Option<OriginAddr>,
    /// CORS rules, first match wins; empty when the bucket has no `cors`.
    pub cors: Vec<CorsRule>,
}

const BUCKET_KEYS: &[&str] = &["name", "origin_pull", "cors"];
const ORIGIN_PULL_KEYS: &[&str] = &["enabled", "origin"];

pub(crate) fn parse_buckets(top: &Section<'_>, errors: &mut Errors) -> Vec<BucketConfig> {
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
        let origin = parse_origin_pull(&bucket, errors);
        let cors = parse_cors(&bucket, errors);
        buckets.push(BucketConfig { name, origin, cors });
    }
    buckets
}

fn parse_origin_pull(bucket: &Section<'_>, errors: &mut Errors) -> Option<OriginAddr> {
    let origin_pull = bucket.nested("origin_pull", ORIGIN_PULL_KEYS, "origin_pull.", errors)?;
    let enabled = origin_pull
        .typed::<bool>("enabled", errors)
        .unwrap_or(false);
    let origin = origin_pull.typed::<String>("origin", errors);
    if !enabled {
        // A disabled bucket may keep an origin for later, but it must still be valid.
        if let Some(text) = origin.filter(|o| !o.is_empty()) {
            if let Err(why) = parse_origin(&text) {
                errors.push(&origin_pull.scope, "origin_pull.origin", why);
            }
        }
        return None;
    }
    match origin {
        None => {
            errors.push(
                &origin_pull.scope,
                "origin_pull.origin",
                format!("is required when origin_pull.enabled is true; {HINT}"),
            );
            None
        }
        Some(text) if text.trim().is_empty() => {
            errors.push(
                &origin_pull.scope,
                "origin_pull.origin",
                format!("must not be empty when origin_pull.enabled is true; {HINT}"),
            );
            None
        }
        Some(text) => match parse_origin(&text) {
            Ok(addr) => Some(addr),
            Err(why) => {
                errors.push(&origin_pull.scope, "origin_pull.origin", why);
                None
            }
        },
    }
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
