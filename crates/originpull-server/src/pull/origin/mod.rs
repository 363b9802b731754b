//! The one place that decides where a key is pulled from: which rule applies to the key, whether
//! origin-pull is on for it, which origin (by weight and health), the path asked of the origin
//! (`replace_prefix`, index documents), the redirect status and the hops a copy may follow.
//! Redirects ([`crate::answer::redirect`]) and copies ([`crate::pull::copy`]) both ask here; neither decides on
//! its own.
//!
//! A [`BucketPull`] is built per bucket for each configuration generation; origin health lives
//! longer ([`health`]) so a reload does not forget that an origin is down. Copies report their
//! failures there, and [`probe`] checks that origins still accept connections.

pub mod guard;
pub mod health;
pub mod set;
pub mod tls;

use std::sync::Arc;

use crate::metrics::BucketMetrics;
use health::{health_of, OriginHealth};
use originpull_config::{
    BucketConfig, ConfigError, OriginAddr, OriginConfig, OriginPullConfig, PullMode,
};
use originpull_store::key::encode_origin_path;
use set::OriginSet;

/// One configured origin with its shared health.
pub struct Origin {
    pub config: OriginConfig,
    pub health: Arc<OriginHealth>,
    /// `scheme://authority`, as logs, metrics and the access log name the origin.
    pub label: String,
}

impl Origin {
    pub fn addr(&self) -> &OriginAddr {
        &self.config.addr
    }
}

/// What applies to the keys of one rule (or to the bucket's other keys).
pub struct PullPolicy {
    /// `false`: a miss is `404 NoSuchKey`.
    pub enabled: bool,
    pub origins: Arc<OriginSet>,
    /// `(prefix, replacement)` for the path asked of the origin.
    replace_prefix: Option<(String, String)>,
    pub redirect_code: u16,
    pub follow_redirects: u32,
    pub mode: PullMode,
    /// How a miss that is a CORS request allowed by the bucket's rules is answered.
    pub cors_misses: PullMode,
    /// 0: stored objects are never revalidated.
    pub revalidate_after_secs: u64,
}

impl PullPolicy {
    /// The decoded path (without its leading `/`) asked of the origin for `source`, the key or,
    /// for an index document, the folder as requested.
    pub fn origin_path(&self, source: &str) -> String {
        match &self.replace_prefix {
            Some((prefix, replacement)) if source.starts_with(prefix.as_str()) => {
                let rewritten = format!("{replacement}{}", &source[prefix.len()..]);
                encode_origin_path(&rewritten)
            }
            _ => encode_origin_path(source),
        }
    }

    /// The bucket's path (encoded, with its leading `/`) for `origin_path`, a decoded path at
    /// the origin without its leading `/`: [`PullPolicy::origin_path`] undone.
    pub fn bucket_path(&self, origin_path: &str) -> String {
        match &self.replace_prefix {
            Some((prefix, replacement)) if origin_path.starts_with(replacement.as_str()) => {
                encode_origin_path(&format!("{prefix}{}", &origin_path[replacement.len()..]))
            }
            _ => encode_origin_path(origin_path),
        }
    }
}

/// A bucket's origin-pull settings, compiled for requests and copies, with what its copies
/// report to (its name and metric series).
pub struct BucketPull {
    pub name: String,
    pub metrics: Arc<BucketMetrics>,
    bucket_policy: PullPolicy,
    rules: Vec<(originpull_config::PullRule, PullPolicy)>,
    /// Every configured origin host of the bucket: where a copy may follow a redirect.
    redirect_hosts: Vec<String>,
    /// What HTTPS origins are verified against: system roots, plus the `ca_file`'s if given.
    pub tls_trust: tls::OriginTrust,
    pub pass_query_string: bool,
    pub origin_headers: Vec<(String, String)>,
}

impl BucketPull {
    /// `None` when the bucket never pulls (no `origin_pull`, or off with no rule turning it on).
    pub fn new(
        bucket: &BucketConfig,
        metrics: &Arc<BucketMetrics>,
    ) -> Result<Option<BucketPull>, ConfigError> {
        let Some(pull) = &bucket.origin_pull else {
            return Ok(None);
        };
        if !pull.enabled && !pull.rules.iter().any(|r| r.enabled == Some(true)) {
            return Ok(None);
        }
        let tls_trust = match &pull.ca_file {
            None => tls::OriginTrust::default(),
            Some(path) => {
                let extra = tls::read_ca_file(path).map_err(|message| ConfigError {
                    scope: format!("bucket \"{}\"", bucket.name),
                    field: "origin_pull.tls.ca_file".into(),
                    message,
                })?;
                tls::OriginTrust::with_extra_roots(&extra)
            }
        };
        let name = &bucket.name;
        let bucket_set = Arc::new(origin_set(name, &pull.origins));
        let bucket_policy = PullPolicy {
            enabled: pull.enabled,
            origins: bucket_set.clone(),
            replace_prefix: None,
            redirect_code: pull.redirect_code,
            follow_redirects: pull.follow_redirects,
            mode: pull.mode,
            cors_misses: pull.cors_misses,
            revalidate_after_secs: pull.revalidate_after_secs,
        };
        let rules = pull
            .rules
            .iter()
            .map(|rule| {
                let origins = match &rule.origins {
                    Some(list) => Arc::new(origin_set(name, list)),
                    None => bucket_set.clone(),
                };
                let policy = PullPolicy {
                    enabled: rule.enabled.unwrap_or(pull.enabled),
                    origins,
                    replace_prefix: rule.prefix.clone().zip(rule.replace_prefix.clone()),
                    redirect_code: rule.redirect_code.unwrap_or(pull.redirect_code),
                    follow_redirects: rule.follow_redirects.unwrap_or(pull.follow_redirects),
                    mode: rule.mode.unwrap_or(pull.mode),
                    cors_misses: rule.cors_misses.unwrap_or(pull.cors_misses),
                    revalidate_after_secs: rule
                        .revalidate_after_secs
                        .unwrap_or(pull.revalidate_after_secs),
                };
                (rule.clone(), policy)
            })
            .collect();
        Ok(Some(BucketPull {
            bucket_policy,
            rules,
            name: bucket.name.clone(),
            metrics: metrics.clone(),
            redirect_hosts: all_hosts(pull),
            tls_trust,
            pass_query_string: pull.pass_query_string,
            origin_headers: pull.origin_headers.clone(),
        }))
    }

    /// A bucket's pull for unit tests: its config must enable origin pull.
    #[cfg(test)]
    pub fn for_tests(bucket: &BucketConfig) -> BucketPull {
        let metrics = Arc::new(BucketMetrics::new(&bucket.name));
        BucketPull::new(bucket, &metrics)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("bucket {} pulls from no origin", bucket.name))
    }

    /// The policy for `key`: the first rule that matches it, else the bucket's.
    pub fn policy_for(&self, key: &str) -> &PullPolicy {
        self.rules
            .iter()
            .find(|(rule, _)| rule.matches(key))
            .map_or(&self.bucket_policy, |(_, policy)| policy)
    }

    /// Every origin of the bucket and its rules (an origin listed twice appears twice).
    pub fn origins(&self) -> impl Iterator<Item = &Arc<Origin>> {
        self.bucket_policy
            .origins
            .all()
            .chain(self.rules.iter().flat_map(|(_, p)| p.origins.all()))
    }

    /// Whether a copy may follow a redirect to `host` (lower-case, without port): the host of
    /// a configured origin of this bucket. The origin must never lead the edge elsewhere.
    pub fn may_follow_to(&self, host: &str) -> bool {
        self.redirect_hosts.iter().any(|h| h == host)
    }
}

fn origin_set(bucket: &str, origins: &[OriginConfig]) -> OriginSet {
    OriginSet::new(
        origins
            .iter()
            .map(|config| {
                let label = config.addr.url_base();
                Arc::new(Origin {
                    health: health_of(bucket, &label),
                    config: config.clone(),
                    label,
                })
            })
            .collect(),
    )
}

fn all_hosts(pull: &OriginPullConfig) -> Vec<String> {
    let mut hosts: Vec<String> = pull
        .origins
        .iter()
        .chain(pull.rules.iter().flat_map(|r| r.origins.iter().flatten()))
        .map(|o| o.addr.host_text())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}
