//! A bucket's `cors:` rules, read and validated with S3's CORSRule semantics: up to 100 rules,
//! each with its allowed origins (at most one `*` per origin pattern), methods, request headers,
//! exposed headers and preflight cache time. The response header values a rule sends are
//! computed here once, so a request only compares and copies.
//!
//! Matching a request against the rules is [`crate::cors`]'s job.

use http::{HeaderName, HeaderValue, Method};

use super::errors::Errors;
use super::section::Section;

/// S3 allows 100 rules per bucket.
const MAX_RULES: usize = 100;
/// The methods S3 accepts in `AllowedMethod`.
const S3_METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "HEAD"];
/// S3 stores `MaxAgeSeconds` as a 32-bit signed integer.
const MAX_AGE_LIMIT: u64 = i32::MAX as u64;

const RULE_KEYS: &[&str] = &[
    "allowed_origins",
    "allowed_methods",
    "allowed_headers",
    "expose_headers",
    "max_age_secs",
];

/// A pattern with at most one `*`, which matches any run of characters (none included).
/// Stored lower-case and compared case-insensitively: browsers send origins and header names
/// lower-case, and a rule written `https://WWW.Example.com` means the same origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WildcardPattern {
    pub prefix: String,
    /// The text after the `*`; `None` when the pattern has no `*` (an exact match).
    pub suffix: Option<String>,
}

impl WildcardPattern {
    fn parse(text: &str) -> WildcardPattern {
        let lower = text.to_ascii_lowercase();
        match lower.split_once('*') {
            Some((prefix, suffix)) => WildcardPattern {
                prefix: prefix.to_string(),
                suffix: Some(suffix.to_string()),
            },
            None => WildcardPattern {
                prefix: lower,
                suffix: None,
            },
        }
    }

    /// True for the pattern `*` alone.
    pub fn is_any(&self) -> bool {
        self.prefix.is_empty() && self.suffix.as_deref() == Some("")
    }
}

/// One CORS rule of a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsRule {
    pub allowed_origins: Vec<WildcardPattern>,
    pub allowed_methods: Vec<Method>,
    pub allowed_headers: Vec<WildcardPattern>,
    /// `Access-Control-Allow-Methods`: the allowed methods, comma-separated.
    pub allow_methods_value: HeaderValue,
    /// `Access-Control-Expose-Headers`, when the rule exposes any.
    pub expose_headers_value: Option<HeaderValue>,
    /// `Access-Control-Max-Age`, when the rule sets one.
    pub max_age_value: Option<HeaderValue>,
}

/// Reads `cors:` of one bucket; an absent key means no rules (no CORS headers, preflights 403).
pub(crate) fn parse_cors(bucket: &Section<'_>, errors: &mut Errors) -> Vec<CorsRule> {
    let mut rules = Vec::new();
    let shape = (
        "a list of rules",
        "a mapping with `allowed_origins` and `allowed_methods`",
    );
    let count = bucket.each_mapping("cors", RULE_KEYS, shape, errors, |rule, errors| {
        if let Some(rule) = parse_rule(rule, errors) {
            rules.push(rule);
        }
    });
    if let Some(count) = count.filter(|n| *n > MAX_RULES) {
        errors.push(
            &bucket.scope,
            "cors",
            format!("has {count} rules; at most {MAX_RULES} are allowed"),
        );
    }
    rules
}

fn parse_rule(rule: &Section<'_>, errors: &mut Errors) -> Option<CorsRule> {
    let before = errors.0.len();
    let origins = required_list(
        rule,
        "allowed_origins",
        "[\"https://www.example.com\"]",
        errors,
    );
    let methods = required_list(rule, "allowed_methods", "[GET, HEAD]", errors);
    let headers = rule
        .typed::<Vec<String>>("allowed_headers", errors)
        .unwrap_or_default();
    let expose = rule
        .typed::<Vec<String>>("expose_headers", errors)
        .unwrap_or_default();
    let max_age = rule.at_most("max_age_secs", MAX_AGE_LIMIT, errors);

    for (i, origin) in origins.iter().enumerate() {
        if let Err(why) = check_origin(origin) {
            errors.push(
                &rule.scope,
                &rule.field(&format!("allowed_origins[{i}]")),
                why,
            );
        }
    }
    let mut allowed_methods = Vec::new();
    for (i, method) in methods.iter().enumerate() {
        if S3_METHODS.contains(&method.as_str()) {
            if let Ok(m) = Method::from_bytes(method.as_bytes()) {
                allowed_methods.push(m);
            }
        } else {
            errors.push(
                &rule.scope,
                &rule.field(&format!("allowed_methods[{i}]")),
                format!(
                    "`{method}` is not one of {} (upper-case, as S3 has them)",
                    S3_METHODS.join(", ")
                ),
            );
        }
    }
    for (i, header) in headers.iter().enumerate() {
        if let Err(why) = check_header_pattern(header) {
            errors.push(
                &rule.scope,
                &rule.field(&format!("allowed_headers[{i}]")),
                why,
            );
        }
    }
    for (i, header) in expose.iter().enumerate() {
        // `*` is a valid header-name character, but S3 refuses wildcards here.
        if header.contains('*') || HeaderName::from_bytes(header.as_bytes()).is_err() {
            errors.push(
                &rule.scope,
                &rule.field(&format!("expose_headers[{i}]")),
                format!("`{header}` is not a header name (no wildcards here, as in S3)"),
            );
        }
    }
    if errors.0.len() != before {
        return None;
    }
    Some(CorsRule {
        allowed_origins: origins.iter().map(|o| WildcardPattern::parse(o)).collect(),
        allowed_headers: headers.iter().map(|h| WildcardPattern::parse(h)).collect(),
        allow_methods_value: header_value(&methods.join(", "))?,
        expose_headers_value: (!expose.is_empty())
            .then(|| header_value(&expose.join(", ")))
            .flatten(),
        max_age_value: max_age.map(HeaderValue::from),
        allowed_methods,
    })
}

/// A list of strings that must be present and non-empty.
fn required_list(rule: &Section<'_>, key: &str, example: &str, errors: &mut Errors) -> Vec<String> {
    if rule.get(key).is_none() {
        errors.push(
            &rule.scope,
            &rule.field(key),
            format!("is required, e.g. {example}"),
        );
        return Vec::new();
    }
    let Some(list) = rule.typed::<Vec<String>>(key, errors) else {
        return Vec::new();
    };
    if list.is_empty() {
        errors.push(
            &rule.scope,
            &rule.field(key),
            format!("must list at least one, e.g. {example}"),
        );
    }
    list
}

/// Values were checked to be visible ASCII, so this only fails on a bug; `None` then.
fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

fn check_origin(origin: &str) -> Result<(), String> {
    if origin.is_empty() {
        return Err("must not be empty; use \"*\" to allow every origin".into());
    }
    if !origin.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "`{origin}` may contain only visible ASCII characters, no spaces"
        ));
    }
    if origin.matches('*').count() > 1 {
        return Err(format!(
            "`{origin}` has more than one `*`; S3 allows one wildcard per origin"
        ));
    }
    if let Some((_, rest)) = origin.split_once("://") {
        if rest.contains('/') {
            return Err(format!(
                "`{origin}` has a path; an origin is scheme://host[:port] and never matches one"
            ));
        }
    }
    Ok(())
}

fn check_header_pattern(header: &str) -> Result<(), String> {
    if header.matches('*').count() > 1 {
        return Err(format!(
            "`{header}` has more than one `*`; S3 allows one wildcard per header"
        ));
    }
    if header.is_empty() || HeaderName::from_bytes(header.replace('*', "x").as_bytes()).is_err() {
        return Err(format!(
            "`{header}` is not a header name (one `*` may stand for any characters)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn errors_for(cors: &str) -> String {
        let text = format!(
            "listen: 127.0.0.1:8080\ndata_dir: d\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - name: example-1250000000\n    cors:\n{cors}"
        );
        Config::parse(&text).unwrap_err().to_string()
    }

    #[test]
    fn each_error_names_bucket_rule_and_field() {
        let text = errors_for(
            "      - allowed_origins: [\"https://*.*.example.com\", \"https://a.example.com/x\"]\n        allowed_methods: [GET, OPTIONS, get]\n        allowed_headers: [\"x-*-*\"]\n        expose_headers: [\"ETag\", \"x-*\"]\n        max_age_secs: -1\n      - allowed_methods: [GET]\n        alowed_headers: []\n",
        );
        for needle in [
            "bucket \"example-1250000000\": cors[0].allowed_origins[0]: `https://*.*.example.com` has more than one `*`",
            "cors[0].allowed_origins[1]: `https://a.example.com/x` has a path",
            "cors[0].allowed_methods[1]: `OPTIONS` is not one of",
            "cors[0].allowed_methods[2]: `get` is not one of",
            "cors[0].allowed_headers[0]: `x-*-*` has more than one `*`",
            "cors[0].expose_headers[1]: `x-*` is not a header name",
            "cors[0].max_age_secs: invalid value",
            "cors[1].allowed_origins: is required",
            "cors[1].alowed_headers: unknown key",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn empty_lists_and_non_lists_are_refused() {
        let text = errors_for("      - allowed_origins: []\n        allowed_methods: GET\n");
        assert!(
            text.contains("cors[0].allowed_origins: must list at least one"),
            "{text}"
        );
        assert!(
            text.contains("cors[0].allowed_methods: invalid value"),
            "{text}"
        );
    }
}
