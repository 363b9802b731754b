//! `origin_pull:` of a bucket: whether misses are pulled, from which origins, how (TLS, redirect
//! code, redirects followed, query string, extra headers), and the per-key `rules` that override
//! those settings for some keys.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use http::{HeaderName, HeaderValue};

use super::errors::Errors;
use super::origins::{parse_origin, parse_origins, OriginConfig, OriginHost, HINT};
use super::section::Section;

/// A bucket's origin-pull settings. With `enabled: false` and no rule enabling it, misses are
/// answered `404 NoSuchKey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPullConfig {
    pub enabled: bool,
    /// Primaries and backups, in file order; empty only when nothing is pulled from them.
    pub origins: Vec<OriginConfig>,
    /// PEM file of CA certificates trusted for HTTPS origins in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// The status of the answer to a miss: 301, 302, 307 or 308.
    pub redirect_code: u16,
    /// Redirect hops a copy follows (to the same host or another origin of the bucket).
    pub follow_redirects: u32,
    /// How a miss is answered: a redirect and a background copy, or mirrored.
    pub mode: PullMode,
    /// How a miss is answered in redirect mode when it is a CORS request a `cors` rule allows
    /// (a browser would refuse the redirect to an origin that does not allow the page).
    pub cors_misses: PullMode,
    /// Whether copies send the request's query string to the origin.
    pub pass_query_string: bool,
    /// Set on every copy request: (lower-case name, value).
    pub origin_headers: Vec<(String, String)>,
    pub rules: Vec<PullRule>,
    /// A hit on an object last checked longer ago than this starts a conditional GET to the
    /// origin; 0: never.
    pub revalidate_after_secs: u64,
}

/// One entry of `origin_pull.rules`: which keys it matches and what it overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRule {
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub enabled: Option<bool>,
    pub origins: Option<Vec<OriginConfig>>,
    /// Replaces the matched `prefix` in the path asked of the origin; the stored key is unchanged.
    pub replace_prefix: Option<String>,
    pub redirect_code: Option<u16>,
    pub follow_redirects: Option<u32>,
    pub mode: Option<PullMode>,
    pub cors_misses: Option<PullMode>,
    pub revalidate_after_secs: Option<u64>,
}

/// How a miss is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullMode {
    /// 302 to the origin and a background copy (the seed's origin-pull).
    Redirect,
    /// The object is fetched from the origin and streamed to the client while it is stored.
    Mirror,
}

impl PullRule {
    /// Whether `key` has every part of the rule that is given.
    pub fn matches(&self, key: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
            && self.suffix.as_deref().is_none_or(|s| key.ends_with(s))
    }
}

/// What origins may not be, because originpull would then pull from itself.
pub(crate) struct LoopGuard<'a> {
    pub domain_suffix: Option<&'a str>,
    pub listen: Option<SocketAddr>,
}

impl LoopGuard<'_> {
    /// Why `origin` would be originpull itself, if it would.
    fn refuses(&self, origin: &OriginConfig) -> Option<String> {
        let addr = &origin.addr;
        if let (OriginHost::Domain(name), Some(suffix)) = (&addr.host, self.domain_suffix) {
            if name == suffix || name.ends_with(&format!(".{suffix}")) {
                return Some(format!(
                    "`{}` is under domain_suffix {suffix}, which originpull itself serves: a miss would be pulled from this edge (a loop)",
                    addr.authority
                ));
            }
        }
        let listen = self.listen?;
        if addr.port != listen.port() {
            return None;
        }
        let same = match &addr.host {
            OriginHost::Ipv4(ip) => reaches(IpAddr::V4(*ip), listen.ip()),
            OriginHost::Ipv6(ip) => reaches(IpAddr::V6(*ip), listen.ip()),
            OriginHost::Domain(name) => {
                name == "localhost"
                    && (reaches(Ipv4Addr::LOCALHOST.into(), listen.ip())
                        || reaches(Ipv6Addr::LOCALHOST.into(), listen.ip()))
            }
        };
        same.then(|| {
            format!(
                "`{}` is originpull's own listen address {listen}: a miss would be pulled from this edge (a loop)",
                addr.authority
            )
        })
    }
}

/// Whether a connection to `origin` reaches a socket listening on `listen` (on the same port).
/// An IPv4-mapped address is its IPv4 address; a connection to the unspecified address goes
/// to the host's own loopback (Linux: `0.0.0.0` to `127.0.0.1`, `::` to `::1`); a socket on
/// the unspecified address takes every local address of its family, and IPv6's takes IPv4
/// too (the dual stack, on unless `net.ipv6.bindv6only` is set).
fn reaches(origin: IpAddr, listen: IpAddr) -> bool {
    let (origin, listen) = (origin.to_canonical(), listen.to_canonical());
    let origin_is_this_host = origin.is_loopback() || origin.is_unspecified();
    if origin == listen {
        return true;
    }
    if listen.is_unspecified() {
        return origin_is_this_host && (listen.is_ipv6() || origin.is_ipv4());
    }
    listen.is_loopback() && origin.is_unspecified() && origin.is_ipv4() == listen.is_ipv4()
}

const ORIGIN_PULL_KEYS: &[&str] = &[
    "enabled",
    "origin",
    "origins",
    "tls",
    "redirect_code",
    "follow_redirects",
    "pass_query_string",
    "origin_headers",
    "rules",
    "mode",
    "cors_misses",
    "revalidate_after_secs",
];
const TLS_KEYS: &[&str] = &["ca_file"];
const RULE_KEYS: &[&str] = &[
    "prefix",
    "suffix",
    "enabled",
    "origins",
    "replace_prefix",
    "redirect_code",
    "follow_redirects",
    "mode",
    "cors_misses",
    "revalidate_after_secs",
];

/// A year: longer is "never", which is 0.
const MAX_REVALIDATE_AFTER_SECS: u64 = 365 * 24 * 3600;

const DEFAULT_REDIRECT_CODE: u16 = 302;
/// Enough for `http://` → `https://` → `https://www.`; a longer chain is usually a loop.
const DEFAULT_FOLLOW_REDIRECTS: u32 = 3;
const MAX_FOLLOW_REDIRECTS: u64 = 10;

/// Headers a copy request sets itself or that would break its framing.
const RESERVED_ORIGIN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "range",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "x-originpull-request-id",
];

/// Reads `origin_pull`; `None` when the bucket has no such section (origin-pull off).
pub(crate) fn parse_origin_pull(
    bucket: &Section<'_>,
    guard: &LoopGuard<'_>,
    errors: &mut Errors,
) -> Option<OriginPullConfig> {
    let section = bucket.nested("origin_pull", ORIGIN_PULL_KEYS, "origin_pull.", errors)?;
    let enabled = section.typed::<bool>("enabled", errors).unwrap_or(false);
    let scope = section.scope.clone();

    let shorthand = section.typed::<String>("origin", errors);
    let listed = parse_origins(&section, "origins", errors);
    let origins = match (shorthand, listed) {
        (Some(_), Some(list)) => {
            errors.push(
                &scope,
                "origin_pull.origin",
                "give either `origin` or `origins`, not both",
            );
            list
        }
        (None, Some(list)) => list,
        (Some(text), None) if text.trim().is_empty() => {
            if enabled {
                errors.push(
                    &scope,
                    "origin_pull.origin",
                    format!("must not be empty when origin_pull.enabled is true; {HINT}"),
                );
            }
            Vec::new()
        }
        (Some(text), None) => match parse_origin(&text) {
            Ok(addr) => vec![OriginConfig {
                addr,
                weight: 1,
                backup: false,
            }],
            Err(why) => {
                errors.push(&scope, "origin_pull.origin", why);
                Vec::new()
            }
        },
        (None, None) => {
            if enabled {
                errors.push(
                    &scope,
                    "origin_pull.origin",
                    format!(
                        "is required when origin_pull.enabled is true (or give `origins`); {HINT}"
                    ),
                );
            }
            Vec::new()
        }
    };
    let origins_field = if section.get("origins").is_some() {
        "origin_pull.origins"
    } else {
        "origin_pull.origin"
    };
    if enabled && section.get("origins").is_some() && origins.is_empty() {
        errors.push(
            &scope,
            "origin_pull.origins",
            "must list at least one origin when origin_pull.enabled is true",
        );
    }
    refuse_loops(&scope, origins_field, &origins, guard, errors);

    let ca_file = section
        .nested("tls", TLS_KEYS, "origin_pull.tls.", errors)
        .and_then(|tls| tls.typed::<String>("ca_file", errors))
        .and_then(|path| {
            if path.trim().is_empty() {
                errors.push(&scope, "origin_pull.tls.ca_file", "must not be empty");
                None
            } else {
                Some(PathBuf::from(path))
            }
        });
    let redirect_code = redirect_code(&section, errors).unwrap_or(DEFAULT_REDIRECT_CODE);
    let follow_redirects = section
        .at_most("follow_redirects", MAX_FOLLOW_REDIRECTS, errors)
        .map_or(DEFAULT_FOLLOW_REDIRECTS, |n| n as u32);
    let mode = pull_mode(&section, "mode", errors).unwrap_or(PullMode::Redirect);
    let cors_misses = pull_mode(&section, "cors_misses", errors).unwrap_or(PullMode::Mirror);
    let pass_query_string = section
        .typed::<bool>("pass_query_string", errors)
        .unwrap_or(false);
    let origin_headers = parse_origin_headers(&section, errors);
    let rules = parse_rules(&section, enabled, !origins.is_empty(), guard, errors);
    let revalidate_after_secs = section
        .at_most("revalidate_after_secs", MAX_REVALIDATE_AFTER_SECS, errors)
        .unwrap_or(0);

    Some(OriginPullConfig {
        enabled,
        origins,
        ca_file,
        redirect_code,
        follow_redirects,
        mode,
        cors_misses,
        pass_query_string,
        origin_headers,
        rules,
        revalidate_after_secs,
    })
}

fn refuse_loops(
    scope: &str,
    field: &str,
    origins: &[OriginConfig],
    guard: &LoopGuard<'_>,
    errors: &mut Errors,
) {
    for (index, origin) in origins.iter().enumerate() {
        if let Some(why) = guard.refuses(origin) {
            let at = if field.ends_with("origins") {
                format!("{field}[{index}].address")
            } else {
                field.to_string()
            };
            errors.push(scope, &at, why);
        }
    }
}

fn redirect_code(section: &Section<'_>, errors: &mut Errors) -> Option<u16> {
    let code = section.typed::<u16>("redirect_code", errors)?;
    if matches!(code, 301 | 302 | 307 | 308) {
        Some(code)
    } else {
        errors.push(
            &section.scope,
            &section.field("redirect_code"),
            format!("{code} is not a redirect status; use 301, 302, 307 or 308"),
        );
        None
    }
}

/// `mode` or `cors_misses`: how a miss is answered.
fn pull_mode(section: &Section<'_>, key: &str, errors: &mut Errors) -> Option<PullMode> {
    match section.typed::<String>(key, errors)?.as_str() {
        "redirect" => Some(PullMode::Redirect),
        "mirror" => Some(PullMode::Mirror),
        other => {
            errors.push(
                &section.scope,
                &section.field(key),
                format!("`{other}` is not a mode; use redirect or mirror"),
            );
            None
        }
    }
}

fn parse_origin_headers(section: &Section<'_>, errors: &mut Errors) -> Vec<(String, String)> {
    let Some(value) = section.get("origin_headers") else {
        return Vec::new();
    };
    let field = section.field("origin_headers");
    let Some(map) = value.as_mapping() else {
        errors.push(
            &section.scope,
            &field,
            "expected a mapping of header names to values, e.g. {X-Pull-From: edge}",
        );
        return Vec::new();
    };
    let mut headers = Vec::new();
    for (name, value) in map {
        let Some(name) = name.as_str() else {
            errors.push(&section.scope, &field, "header names must be strings");
            continue;
        };
        let at = format!("{field}.{name}");
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            errors.push(&section.scope, &at, "is not a valid HTTP header name");
            continue;
        };
        if RESERVED_ORIGIN_HEADERS.contains(&header.as_str()) {
            errors.push(
                &section.scope,
                &at,
                "is set by originpull itself (or would break the copy's framing); choose another header",
            );
            continue;
        }
        let text = match value {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            _ => {
                errors.push(&section.scope, &at, "the value must be a string");
                continue;
            }
        };
        if HeaderValue::from_str(&text).is_err() {
            errors.push(
                &section.scope,
                &at,
                "the value must be visible ASCII (no control characters or line breaks)",
            );
            continue;
        }
        headers.push((header.as_str().to_string(), text));
    }
    headers
}

fn parse_rules(
    section: &Section<'_>,
    bucket_enabled: bool,
    bucket_has_origins: bool,
    guard: &LoopGuard<'_>,
    errors: &mut Errors,
) -> Vec<PullRule> {
    let mut rules = Vec::new();
    let shape = (
        "a list of rules",
        "a mapping with prefix and/or suffix and the settings to override",
    );
    section.each_mapping("rules", RULE_KEYS, shape, errors, |rule, errors| {
        let prefix = non_empty(rule, "prefix", errors);
        let suffix = non_empty(rule, "suffix", errors);
        let enabled = rule.typed::<bool>("enabled", errors);
        let origins = parse_origins(rule, "origins", errors);
        if let Some(list) = &origins {
            refuse_loops(&rule.scope, &rule.field("origins"), list, guard, errors);
        }
        let replace_prefix = rule.typed::<String>("replace_prefix", errors);
        if replace_prefix.is_some() && prefix.is_none() {
            errors.push(
                &rule.scope,
                &rule.field("replace_prefix"),
                "needs `prefix`: it replaces the matched prefix in the path asked of the origin",
            );
        }
        if let Some(replacement) = &replace_prefix {
            if replacement.starts_with('/') || replacement.chars().any(char::is_control) {
                errors.push(
                    &rule.scope,
                    &rule.field("replace_prefix"),
                    "must be a key prefix: no leading `/`, no control characters",
                );
            }
        }
        let redirect_code = redirect_code(rule, errors);
        let follow_redirects = rule
            .at_most("follow_redirects", MAX_FOLLOW_REDIRECTS, errors)
            .map(|n| n as u32);
        let mode = pull_mode(rule, "mode", errors);
        let cors_misses = pull_mode(rule, "cors_misses", errors);
        let revalidate_after_secs =
            rule.at_most("revalidate_after_secs", MAX_REVALIDATE_AFTER_SECS, errors);
        let pulls = enabled.unwrap_or(bucket_enabled);
        let has_origins = origins
            .as_ref()
            .map_or(bucket_has_origins, |o| !o.is_empty());
        if pulls && !has_origins {
            errors.push(
                &rule.scope,
                &rule.field("origins"),
                "the rule pulls from origins but neither it nor the bucket lists any",
            );
        }
        rules.push(PullRule {
            prefix,
            suffix,
            enabled,
            origins,
            replace_prefix,
            redirect_code,
            follow_redirects,
            mode,
            cors_misses,
            revalidate_after_secs,
        });
    });
    rules
}

fn non_empty(rule: &Section<'_>, key: &str, errors: &mut Errors) -> Option<String> {
    let text = rule.typed::<String>(key, errors)?;
    if text.is_empty() {
        errors.push(
            &rule.scope,
            &rule.field(key),
            "must not be empty (omit it instead)",
        );
        return None;
    }
    Some(text)
}
