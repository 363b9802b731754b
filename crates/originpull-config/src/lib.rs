//! The configuration file: its YAML shape, its defaults, and the validation that turns a file
//! into a [`Config`] or into every error found, each naming the bucket (or section) and the field.
//!
//! Parsing goes key by key instead of through one derived struct so that a single typo does not
//! hide the other errors in the file, and so that bucket errors carry the bucket's name. Each
//! section of the file has its own module here; [`errors`] collects what they find and
//! [`section`] is how each reads its mapping.

mod admin;
mod buckets;
mod cors;
mod domains;
mod errors;
mod fill;
mod hostname;
mod https;
mod memory_cache;
mod origin_pull;
mod origins;
#[cfg(feature = "properties")]
pub mod properties;
mod section;
mod server;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

pub use admin::{read_token_file, AdminSettings};
pub use buckets::{validate_bucket_name, BucketConfig, Retention};
pub use cors::{CorsRule, WildcardPattern};
pub use domains::BucketDomains;
pub use errors::{ConfigError, ConfigErrors};
pub use fill::FillSettings;
pub use hostname::{is_valid_hostname, normalize_name};
pub use https::{AcmeSettings, CertificateFiles, HttpsSettings, MinTlsVersion};
pub use memory_cache::{MemoryCacheSettings, DEFAULT_OPEN_FILES};
pub use origin_pull::{OriginPullConfig, PullMode, PullRule};
pub use origins::{
    parse_origin, parse_origin_with, OriginAddr, OriginConfig, OriginHost, Protocol,
};
pub use server::ServerSettings;
pub use store::{
    CapacityLimits, ConditionalPut, LocalTierSettings, S3Settings, StoreSettings,
    BUCKET_PLACEHOLDER,
};

use admin::parse_admin;
use buckets::parse_buckets;
use errors::Errors;
use fill::parse_fill;
use https::parse_https;
use memory_cache::parse_memory_cache;
use origin_pull::LoopGuard;
use section::Section;
use server::parse_server;
use store::parse_store;

/// A fully validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    /// The HTTPS listener; `None` without an `https:` section.
    pub https: Option<HttpsSettings>,
    pub metrics_listen: Option<SocketAddr>,
    /// The admin API; `None` when `admin_listen` is not set.
    pub admin: Option<AdminSettings>,
    pub data_dir: PathBuf,
    /// Lower-case, without a leading or trailing dot.
    pub domain_suffix: String,
    pub access_log: AccessLogTarget,
    pub server: ServerSettings,
    pub fill: FillSettings,
    pub memory_cache: MemoryCacheSettings,
    /// Where objects live; fixed at start.
    pub store: StoreSettings,
    /// How much the disk store may hold; a reload may change it.
    pub capacity: CapacityLimits,
    pub buckets: Vec<BucketConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stderr,
    Off,
    File(PathBuf),
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "https",
    "metrics_listen",
    "admin_listen",
    "admin_token_file",
    "data_dir",
    "domain_suffix",
    "access_log",
    "server",
    "fill",
    "memory_cache",
    "store",
    "buckets",
];

impl Config {
    /// Reads and validates a configuration file. Relative paths stay relative; see
    /// [`Config::resolve_relative_paths`].
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                scope: "file".into(),
                field: path.display().to_string(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Config::parse(&text)
    }

    /// Validates configuration text; see the module documentation.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let mut errors = Errors::default();
        let root: Value = match serde_yaml::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                errors.push("file", "yaml", format!("not valid YAML: {e}"));
                return Err(ConfigErrors(errors.0));
            }
        };
        let Some(root) = root.as_mapping() else {
            errors.push(
                "file",
                "yaml",
                "expected a mapping of keys at the top level",
            );
            return Err(ConfigErrors(errors.0));
        };
        let top = Section::new("top level", "", root, TOP_LEVEL_KEYS, &mut errors);

        let listen = top.socket_addr("listen", &mut errors, true);
        let metrics_listen = top.socket_addr("metrics_listen", &mut errors, false);
        let admin = parse_admin(&top, &mut errors);
        let data_dir = top
            .typed::<String>("data_dir", &mut errors)
            .filter(|d| {
                let ok = !d.trim().is_empty();
                if !ok {
                    errors.push("top level", "data_dir", "must not be empty");
                }
                ok
            })
            .map(PathBuf::from);
        if top.get("data_dir").is_none() {
            errors.push(
                "top level",
                "data_dir",
                "is required: the bucket store's directory",
            );
        }
        let domain_suffix = top.domain_suffix(&mut errors);
        let access_log = match top.typed::<String>("access_log", &mut errors) {
            None => AccessLogTarget::Stderr,
            Some(s) if s == "stderr" => AccessLogTarget::Stderr,
            Some(s) if s == "off" => AccessLogTarget::Off,
            Some(s) if s.trim().is_empty() => {
                errors.push(
                    "top level",
                    "access_log",
                    "must be `stderr`, `off` or a file path",
                );
                AccessLogTarget::Stderr
            }
            Some(s) => AccessLogTarget::File(PathBuf::from(s)),
        };
        let server = parse_server(&top, &mut errors);
        let fill = parse_fill(&top, &mut errors);
        let memory_cache = parse_memory_cache(&top, &mut errors);
        let (store, capacity) = parse_store(&top, &mut errors);
        let s3_store = matches!(store, StoreSettings::S3(_));
        let https = parse_https(&top, listen, s3_store, &mut errors);
        let guard = LoopGuard {
            domain_suffix: domain_suffix.as_deref(),
            listen,
        };
        let buckets = parse_buckets(&top, &guard, https.is_some(), &mut errors);
        for bucket in &buckets {
            if s3_store && bucket.retention == Retention::Cache {
                errors.push(
                    &format!("bucket \"{}\"", bucket.name),
                    "retention",
                    "`cache` applies to the disk store; with `backend: s3` the store is the \
                     bucket's home and the local tier already keeps only recent copies",
                );
            }
        }

        if !errors.0.is_empty() {
            return Err(ConfigErrors(errors.0));
        }
        match (listen, data_dir, domain_suffix) {
            (Some(listen), Some(data_dir), Some(domain_suffix)) => Ok(Config {
                listen,
                https,
                metrics_listen,
                admin,
                data_dir,
                domain_suffix,
                access_log,
                server,
                fill,
                memory_cache,
                store,
                capacity,
                buckets,
            }),
            // Each missing value pushed an error above, so this arm is not reached.
            _ => Err(ConfigErrors(vec![ConfigError {
                scope: "top level".into(),
                field: "listen/data_dir/domain_suffix".into(),
                message: "missing".into(),
            }])),
        }
    }

    /// Makes `data_dir` and a file `access_log` absolute against `base` (the working directory
    /// at start), so they keep meaning the same place when the working directory changes.
    pub fn resolve_relative_paths(&mut self, base: &Path) {
        self.data_dir = base.join(&self.data_dir);
        if let StoreSettings::S3(s3) = &mut self.store {
            if let Some(path) = &mut s3.credentials_file {
                *path = base.join(&*path);
            }
            if let Some(tier) = &mut s3.local_tier {
                tier.dir = base.join(&tier.dir);
            }
        }
        for pull in self
            .buckets
            .iter_mut()
            .filter_map(|b| b.origin_pull.as_mut())
        {
            if let Some(ca_file) = &mut pull.ca_file {
                *ca_file = base.join(&*ca_file);
            }
        }
        if let AccessLogTarget::File(path) = &mut self.access_log {
            *path = base.join(&*path);
        }
        if let Some(admin) = &mut self.admin {
            admin.token_file = base.join(&admin.token_file);
        }
        if let Some(https) = &mut self.https {
            for files in &mut https.certificates {
                files.cert_file = base.join(&files.cert_file);
                files.key_file = base.join(&files.key_file);
            }
            if let Some(acme) = &mut https.acme {
                if let Some(state_dir) = &mut acme.state_dir {
                    *state_dir = base.join(&*state_dir);
                }
                if let Some(ca_file) = &mut acme.ca_file {
                    *ca_file = base.join(&*ca_file);
                }
            }
        }
    }

    /// For a reload: puts back the running values of the settings only a restart can change
    /// (listeners, `data_dir`, `access_log`, `server`, `memory_cache`, `store`), and names those that
    /// differed so the caller can warn about them.
    pub fn keep_restart_only_settings(&mut self, running: &Config) -> Vec<&'static str> {
        fn keep<T: PartialEq + Clone>(
            name: &'static str,
            new: &mut T,
            running: &T,
            changed: &mut Vec<&'static str>,
        ) {
            if new != running {
                changed.push(name);
                *new = running.clone();
            }
        }
        let mut changed = Vec::new();
        keep("listen", &mut self.listen, &running.listen, &mut changed);
        // The HTTPS listener and its TLS and HTTP/2 settings are fixed at start; its
        // certificates and ACME settings follow the file.
        match (&mut self.https, &running.https) {
            (Some(new), Some(old)) => {
                let mut fixed = (new.listen, new.http2, new.min_tls_version);
                keep(
                    "https.listen/http2/min_tls_version",
                    &mut fixed,
                    &(old.listen, old.http2, old.min_tls_version),
                    &mut changed,
                );
                (new.listen, new.http2, new.min_tls_version) = fixed;
                keep(
                    "https.max_concurrent_streams",
                    &mut new.max_concurrent_streams,
                    &old.max_concurrent_streams,
                    &mut changed,
                );
            }
            (None, None) => {}
            (new, old) => {
                changed.push("https");
                *new = old.clone();
            }
        }
        keep(
            "metrics_listen",
            &mut self.metrics_listen,
            &running.metrics_listen,
            &mut changed,
        );
        // The admin listener is fixed at start; its token file is re-read on every reload.
        let mut admin_listen = self.admin.as_ref().map(|a| a.listen);
        keep(
            "admin_listen",
            &mut admin_listen,
            &running.admin.as_ref().map(|a| a.listen),
            &mut changed,
        );
        match (&mut self.admin, admin_listen) {
            (Some(admin), Some(listen)) => admin.listen = listen,
            (admin, _) => *admin = running.admin.clone(),
        }
        keep(
            "data_dir",
            &mut self.data_dir,
            &running.data_dir,
            &mut changed,
        );
        keep(
            "access_log",
            &mut self.access_log,
            &running.access_log,
            &mut changed,
        );
        keep("server", &mut self.server, &running.server, &mut changed);
        keep(
            "memory_cache",
            &mut self.memory_cache,
            &running.memory_cache,
            &mut changed,
        );
        keep("store", &mut self.store, &running.store, &mut changed);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(buckets: &str) -> String {
        format!("listen: 127.0.0.1:8080\ndata_dir: ./data\ndomain_suffix: file.myqcloud.com\nbuckets:\n{buckets}")
    }

    #[test]
    fn reads_retention_and_the_disk_store_limits() {
        let config = Config::parse(&format!(
            "store: {{max_bytes: 1000000, min_free_bytes: 5000}}\n{}",
            base("  - name: img-1250000000\n    retention: cache\n    origin_pull: {enabled: true, origin: a.example}\n  - name: site-1250000000\n  - name: rule-1250000000\n    retention: cache\n    origin_pull:\n      origin: a.example\n      rules: [{prefix: img/, enabled: true}]\n")
        ))
        .unwrap();
        assert_eq!(
            config.capacity,
            CapacityLimits {
                max_bytes: 1_000_000,
                min_free_bytes: 5000
            }
        );
        let retention: Vec<_> = config.buckets.iter().map(|b| b.retention).collect();
        assert_eq!(
            retention,
            [Retention::Cache, Retention::Keep, Retention::Cache]
        );
        assert_eq!(
            Config::parse(&base("  - name: a-1\n")).unwrap().capacity,
            CapacityLimits::default()
        );
    }

    #[test]
    fn refuses_cache_retention_without_origin_pull_or_on_the_s3_store() {
        let text = Config::parse(&base(
            "  - name: img-1250000000\n    retention: cache\n  - name: off-1250000000\n    retention: cache\n    origin_pull: {enabled: false, origin: a.example}\n  - name: odd-1250000000\n    retention: forever\n",
        ))
        .unwrap_err()
        .to_string();
        for needle in [
            "bucket \"img-1250000000\": retention: `cache` needs origin pull",
            "bucket \"off-1250000000\": retention: `cache` needs origin pull",
            "bucket \"odd-1250000000\": retention: unknown retention \"forever\"",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
        let text = Config::parse(&format!(
            "store: {{backend: s3, s3: {{endpoint: 'http://127.0.0.1:9000', region: r}}, max_bytes: 10}}\n{}",
            base("  - name: img-1250000000\n    retention: cache\n    origin_pull: {enabled: true, origin: a.example}\n")
        ))
        .unwrap_err()
        .to_string();
        for needle in [
            "store.max_bytes: `max_bytes` and `min_free_bytes` limit the disk store",
            "bucket \"img-1250000000\": retention: `cache` applies to the disk store",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
        let text = Config::parse(&format!(
            "store: {{max_bytes: -1}}\n{}",
            base("  - name: a-1\n")
        ))
        .unwrap_err()
        .to_string();
        assert!(text.contains("store.max_bytes: invalid value"), "{text}");
    }

    #[test]
    fn accepts_the_documented_origin_forms() {
        for (text, port) in [
            ("abc.example.com", 80),
            ("abc.example.com:8080", 8080),
            ("10.10.10.10", 80),
            ("10.10.10.10:8080", 8080),
            ("[::1]:8080", 8080),
            ("[::1]", 80),
        ] {
            let addr = parse_origin(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(addr.port, port);
            assert_eq!(addr.authority, text);
        }
    }

    #[test]
    fn refuses_bad_origins_with_a_reason() {
        for (text, needle) in [
            ("http://abc.example.com", "scheme"),
            ("https://abc.example.com", "scheme"),
            ("abc.example.com/path", "path"),
            ("user@abc.example.com", "user info"),
            ("abc .example.com", "spaces"),
            ("abc.example.com:0", "port 0"),
            ("abc.example.com:65536", "above 65535"),
            ("abc.example.com:http", "not a number"),
            ("abc.example.com:", "empty port"),
            ("-abc.example.com", "not a valid host name"),
            ("10.10.10.300", "not a valid IPv4"),
            ("::1", "brackets"),
            ("[::1", "without closing"),
            ("abc.example.com\r\nX: y", "spaces"),
        ] {
            let err = parse_origin(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn enabled_without_origin_names_bucket_and_field() {
        let errs = Config::parse(&base(
            "  - name: example-1250000000\n    origin_pull:\n      enabled: true\n",
        ))
        .unwrap_err();
        let text = errs.to_string();
        assert!(
            text.contains("bucket \"example-1250000000\": origin_pull.origin: is required"),
            "{text}"
        );
    }

    #[test]
    fn reports_every_error_not_just_the_first() {
        let errs = Config::parse(&base(
            "  - name: Bad_Name\n    origin_pull: {enabled: true, origin: 'http://x'}\n  - name: ok-1\n    orign_pull: {}\n  - name: ok-1\n",
        ))
        .unwrap_err();
        let text = errs.to_string();
        assert!(text.contains("bucket \"Bad_Name\": name:"), "{text}");
        assert!(
            text.contains("bucket \"Bad_Name\": origin_pull.origin:"),
            "{text}"
        );
        assert!(
            text.contains("bucket \"ok-1\": orign_pull: unknown key"),
            "{text}"
        );
        assert!(text.contains("bucket \"ok-1\": name: duplicate"), "{text}");
    }

    #[test]
    fn migration_settings_parse_and_their_errors_name_the_field() {
        let text = format!(
            "admin_listen: 127.0.0.1:9180\nadmin_token_file: /etc/originpull/admin.token\nfill:\n  per_origin_concurrency: 4\n  per_origin_rate: 50\n  breaker_failures: 5\n  breaker_secs: 10\n{}",
            base("  - name: example-1250000000\n    origin_pull:\n      enabled: true\n      origin: a.example\n      revalidate_after_secs: 3600\n      rules:\n        - prefix: news/\n          revalidate_after_secs: 60\n")
        );
        let config = Config::parse(&text).unwrap();
        let admin = config.admin.as_ref().unwrap();
        assert_eq!(admin.listen.port(), 9180);
        assert_eq!(config.fill.per_origin_concurrency, 4);
        assert_eq!(config.fill.per_origin_rate, 50);
        assert_eq!(
            (config.fill.breaker_failures, config.fill.breaker_secs),
            (5, 10)
        );
        let pull = config.buckets[0].origin_pull.as_ref().unwrap();
        assert_eq!(pull.revalidate_after_secs, 3600);
        assert_eq!(pull.rules[0].revalidate_after_secs, Some(60));

        let errs = Config::parse(&format!(
            "admin_listen: 127.0.0.1:9180\nfill:\n  per_origin_concurrency: 0\n{}",
            base("  - name: example-1250000000\n    origin_pull:\n      enabled: true\n      origin: a.example\n      rules:\n        - prefix: a/\n          revalidate_after_secs: 99999999999\n")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            errs.contains("top level: admin_token_file: is required with admin_listen"),
            "{errs}"
        );
        assert!(
            errs.contains("top level: fill.per_origin_concurrency: must be greater than 0"),
            "{errs}"
        );
        assert!(
            errs.contains(
                "bucket \"example-1250000000\": origin_pull.rules[0].revalidate_after_secs: must be at most"
            ),
            "{errs}"
        );
    }

    #[test]
    fn disabled_without_origin_is_fine_and_defaults_apply() {
        let config = Config::parse(&base(
            "  - name: example-1250000000\n    origin_pull: {enabled: false}\n",
        ))
        .unwrap();
        let pull = config.buckets[0].origin_pull.as_ref().unwrap();
        assert!(!pull.enabled && pull.origins.is_empty());
        assert_eq!(config.fill, FillSettings::default());
        assert_eq!(config.access_log, AccessLogTarget::Stderr);
    }
}
