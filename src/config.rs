//! The configuration file: its YAML shape, its defaults, and the validation that turns a file
//! into a [`Config`] or into every error found, each naming the bucket (or section) and the field.
//!
//! Parsing goes key by key instead of through one derived struct so that a single typo does not
//! hide the other errors in the file, and so that bucket errors carry the bucket's name.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

/// A fully validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Lower-case, without a leading or trailing dot.
    pub domain_suffix: String,
    pub access_log: AccessLogTarget,
    pub server: ServerSettings,
    pub fill: FillSettings,
    pub memory_cache: MemoryCacheSettings,
    pub buckets: Vec<BucketConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stderr,
    Off,
    File(PathBuf),
}

/// Process-level settings handed to Pingora; they take effect only at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period_secs: u64,
    pub graceful_shutdown_timeout_secs: u64,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: 2,
            grace_period_secs: 30,
            graceful_shutdown_timeout_secs: 10,
            pid_file: None,
            upgrade_sock: None,
        }
    }
}

/// Limits for the background copies from origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillSettings {
    pub concurrency: usize,
    pub queue: usize,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub max_object_bytes: u64,
    pub negative_ttl_secs: u64,
}

impl Default for FillSettings {
    fn default() -> Self {
        FillSettings {
            concurrency: 32,
            queue: 10_000,
            connect_timeout_ms: 2_000,
            read_timeout_ms: 15_000,
            max_object_bytes: 5 * 1024 * 1024 * 1024,
            negative_ttl_secs: 30,
        }
    }
}

/// The memory tier for hot small objects; fixed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryCacheSettings {
    /// 0 turns the tier off.
    pub max_bytes: u64,
    pub max_object_bytes: u64,
    pub revalidate_secs: u64,
}

impl Default for MemoryCacheSettings {
    fn default() -> Self {
        MemoryCacheSettings {
            max_bytes: 32 * 1024 * 1024,
            // Up to 1 MiB: an object served from memory is copied once on its way to the socket,
            // from disk twice (Pingora has no sendfile), which is most of a 1 MiB hit's cost.
            max_object_bytes: 1024 * 1024,
            revalidate_secs: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    /// `<BucketName>-<APPID>`; also the first DNS label of the bucket's host.
    pub name: String,
    /// `None` when origin-pull is disabled.
    pub origin: Option<OriginAddr>,
}

/// An origin server address as the user wrote it: `host[:port]`, no scheme, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginAddr {
    /// Exactly as configured; this is what the 302 `Location` and the copy's `Host` carry.
    pub authority: String,
    pub host: OriginHost,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginHost {
    Domain(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: `bucket "example-1250000000"`, `fill`, or `top level`.
    pub scope: String,
    /// The key, e.g. `origin_pull.origin`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.scope, self.field, self.message)
    }
}

/// Every error found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "metrics_listen",
    "data_dir",
    "domain_suffix",
    "access_log",
    "server",
    "fill",
    "memory_cache",
    "buckets",
];
const SERVER_KEYS: &[&str] = &[
    "threads",
    "grace_period_secs",
    "graceful_shutdown_timeout_secs",
    "pid_file",
    "upgrade_sock",
];
const FILL_KEYS: &[&str] = &[
    "concurrency",
    "queue",
    "connect_timeout_ms",
    "read_timeout_ms",
    "max_object_bytes",
    "negative_ttl_secs",
];
const MEMORY_CACHE_KEYS: &[&str] = &["max_bytes", "max_object_bytes", "revalidate_secs"];
const BUCKET_KEYS: &[&str] = &["name", "origin_pull"];
const ORIGIN_PULL_KEYS: &[&str] = &["enabled", "origin"];

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
        let buckets = parse_buckets(&top, &mut errors);

        if !errors.0.is_empty() {
            return Err(ConfigErrors(errors.0));
        }
        match (listen, data_dir, domain_suffix) {
            (Some(listen), Some(data_dir), Some(domain_suffix)) => Ok(Config {
                listen,
                metrics_listen,
                data_dir,
                domain_suffix,
                access_log,
                server,
                fill,
                memory_cache,
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
        if let AccessLogTarget::File(path) = &mut self.access_log {
            *path = base.join(&*path);
        }
    }

    /// For a reload: puts back the running values of the settings only a restart can change
    /// (listeners, `data_dir`, `access_log`, `server`, `memory_cache`), and names those that
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
        keep(
            "metrics_listen",
            &mut self.metrics_listen,
            &running.metrics_listen,
            &mut changed,
        );
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
        changed
    }
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, scope: &str, field: &str, message: impl Into<String>) {
        self.0.push(ConfigError {
            scope: scope.to_string(),
            field: field.to_string(),
            message: message.into(),
        });
    }
}

/// A YAML mapping being read, with the scope and key prefix its errors are reported under.
struct Section<'a> {
    scope: String,
    prefix: &'a str,
    map: &'a Mapping,
}

impl<'a> Section<'a> {
    /// Reports keys that are not in `known` (typos) right away.
    fn new(
        scope: impl Into<String>,
        prefix: &'a str,
        map: &'a Mapping,
        known: &[&str],
        errors: &mut Errors,
    ) -> Section<'a> {
        let section = Section {
            scope: scope.into(),
            prefix,
            map,
        };
        for key in map.keys() {
            match key.as_str() {
                Some(k) if known.contains(&k) => {}
                Some(k) => errors.push(
                    &section.scope,
                    &section.field(k),
                    format!("unknown key; expected one of: {}", known.join(", ")),
                ),
                None => errors.push(&section.scope, prefix, "keys must be strings"),
            }
        }
        section
    }

    fn field(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn typed<T: DeserializeOwned>(&self, key: &str, errors: &mut Errors) -> Option<T> {
        let value = self.get(key)?;
        match serde_yaml::from_value::<T>(value.clone()) {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(
                    &self.scope,
                    &self.field(key),
                    format!("invalid value: {}", strip_yaml_location(&e.to_string())),
                );
                None
            }
        }
    }

    fn nested(
        &self,
        key: &str,
        known: &[&str],
        prefix: &'a str,
        errors: &mut Errors,
    ) -> Option<Section<'a>> {
        let value = self.get(key)?;
        match value.as_mapping() {
            Some(map) => Some(Section::new(self.scope.clone(), prefix, map, known, errors)),
            None => {
                errors.push(&self.scope, &self.field(key), "expected a mapping of keys");
                None
            }
        }
    }

    fn socket_addr(&self, key: &str, errors: &mut Errors, required: bool) -> Option<SocketAddr> {
        if self.get(key).is_none() {
            if required {
                errors.push(
                    &self.scope,
                    &self.field(key),
                    "is required, e.g. 127.0.0.1:8080",
                );
            }
            return None;
        }
        let text = self.typed::<String>(key, errors)?;
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                errors.push(
                    &self.scope,
                    &self.field(key),
                    format!("`{text}` is not an IP:port address, e.g. 127.0.0.1:8080 or [::]:8080"),
                );
                None
            }
        }
    }

    fn domain_suffix(&self, errors: &mut Errors) -> Option<String> {
        if self.get("domain_suffix").is_none() {
            errors.push(
                &self.scope,
                "domain_suffix",
                "is required, e.g. file.myqcloud.com (buckets are served at <name>.<domain_suffix>)",
            );
            return None;
        }
        let raw = self.typed::<String>("domain_suffix", errors)?;
        let suffix = raw.trim_matches('.').to_ascii_lowercase();
        if !is_valid_hostname(&suffix) {
            errors.push(
                &self.scope,
                "domain_suffix",
                format!("`{raw}` is not a valid domain name"),
            );
            return None;
        }
        Some(suffix)
    }

    fn at_most(&self, key: &str, max: u64, errors: &mut Errors) -> Option<u64> {
        let value = self.typed::<u64>(key, errors)?;
        if value > max {
            errors.push(
                &self.scope,
                &self.field(key),
                format!("must be at most {max}"),
            );
            return None;
        }
        Some(value)
    }

    fn positive(&self, key: &str, default: u64, errors: &mut Errors) -> u64 {
        match self.typed::<u64>(key, errors) {
            Some(0) => {
                errors.push(&self.scope, &self.field(key), "must be greater than 0");
                default
            }
            Some(v) => v,
            None => default,
        }
    }
}

fn parse_server(top: &Section<'_>, errors: &mut Errors) -> ServerSettings {
    let defaults = ServerSettings::default();
    let Some(server) = top.nested("server", SERVER_KEYS, "server.", errors) else {
        return defaults;
    };
    ServerSettings {
        threads: server.positive("threads", defaults.threads as u64, errors) as usize,
        grace_period_secs: server
            .typed("grace_period_secs", errors)
            .unwrap_or(defaults.grace_period_secs),
        graceful_shutdown_timeout_secs: server
            .typed("graceful_shutdown_timeout_secs", errors)
            .unwrap_or(defaults.graceful_shutdown_timeout_secs),
        pid_file: server.typed("pid_file", errors),
        upgrade_sock: server.typed("upgrade_sock", errors),
    }
}

fn parse_fill(top: &Section<'_>, errors: &mut Errors) -> FillSettings {
    let d = FillSettings::default();
    let Some(fill) = top.nested("fill", FILL_KEYS, "fill.", errors) else {
        return d;
    };
    FillSettings {
        concurrency: fill.positive("concurrency", d.concurrency as u64, errors) as usize,
        queue: fill
            .typed::<u64>("queue", errors)
            .map_or(d.queue, |q| q as usize),
        connect_timeout_ms: fill.positive("connect_timeout_ms", d.connect_timeout_ms, errors),
        read_timeout_ms: fill.positive("read_timeout_ms", d.read_timeout_ms, errors),
        max_object_bytes: fill.positive("max_object_bytes", d.max_object_bytes, errors),
        negative_ttl_secs: fill
            .at_most("negative_ttl_secs", MAX_NEGATIVE_TTL_SECS, errors)
            .unwrap_or(d.negative_ttl_secs),
    }
}

fn parse_memory_cache(top: &Section<'_>, errors: &mut Errors) -> MemoryCacheSettings {
    let d = MemoryCacheSettings::default();
    let Some(cache) = top.nested("memory_cache", MEMORY_CACHE_KEYS, "memory_cache.", errors) else {
        return d;
    };
    let settings = MemoryCacheSettings {
        max_bytes: cache
            .at_most("max_bytes", MAX_MEMORY_CACHE_BYTES, errors)
            .unwrap_or(d.max_bytes),
        max_object_bytes: cache.positive("max_object_bytes", d.max_object_bytes, errors),
        revalidate_secs: cache
            .typed("revalidate_secs", errors)
            .unwrap_or(d.revalidate_secs),
    };
    // TinyUFO weighs an entry in u16 units of 1 KiB.
    if settings.max_object_bytes > 32 * 1024 * 1024 {
        errors.push(
            &cache.scope,
            "memory_cache.max_object_bytes",
            "must be at most 33554432 (32 MiB); the tier is for small objects",
        );
    }
    settings
}

fn parse_buckets(top: &Section<'_>, errors: &mut Errors) -> Vec<BucketConfig> {
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
        buckets.push(BucketConfig { name, origin });
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

/// A week: longer would keep failed keys from ever being retried in practice.
const MAX_NEGATIVE_TTL_SECS: u64 = 7 * 24 * 3600;
/// The memory tier's bookkeeping grows with its size; beyond this, use the page cache.
const MAX_MEMORY_CACHE_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// How to write an origin, appended to every origin error.
const HINT: &str = "enter only host[:port], e.g. abc.example.com, abc.example.com:8080, 10.10.10.10:8080 or [::1]:8080";

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

/// Parses an origin server address: `host[:port]` with a domain, an IPv4 address or a bracketed
/// IPv6 address. The error text tells the user what to enter instead.
pub fn parse_origin(text: &str) -> Result<OriginAddr, String> {
    if text.contains("://") {
        return Err(format!(
            "`{text}` has a scheme; origin-pull always uses http, {HINT}"
        ));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!("`{}` contains spaces; {HINT}", text.escape_debug()));
    }
    if text.contains('@') {
        return Err(format!("`{text}` contains user info (`@`); {HINT}"));
    }
    if text.contains(['/', '?', '#', '\\']) {
        return Err(format!("`{text}` contains a path or query; {HINT}"));
    }
    if text.bytes().any(|b| b.is_ascii_control() || !b.is_ascii()) {
        return Err(format!(
            "`{}` contains control or non-ASCII characters (use the punycode form of an international domain); {HINT}",
            text.escape_debug()
        ));
    }

    let (host_text, port_text) = if let Some(rest) = text.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!("`{text}` opens `[` without closing `]`; {HINT}"));
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(format!("`{text}` has characters after `]`; {HINT}")),
            },
        };
        (inside, port)
    } else {
        match text.matches(':').count() {
            0 => (text, None),
            1 => {
                let (h, p) = text.split_once(':').unwrap_or((text, ""));
                (h, Some(p))
            }
            _ => {
                return Err(format!(
                    "`{text}` looks like an IPv6 address: write it in brackets, e.g. [::1]:8080"
                ))
            }
        }
    };

    let port = match port_text {
        None => 80,
        Some(p) => {
            parse_port(p).map_err(|why| format!("`{text}` has a bad port: {why}; {HINT}"))?
        }
    };

    let host = if text.starts_with('[') {
        match host_text.parse::<Ipv6Addr>() {
            Ok(ip) => OriginHost::Ipv6(ip),
            Err(_) => return Err(format!("`{host_text}` is not a valid IPv6 address; {HINT}")),
        }
    } else if let Ok(ip) = host_text.parse::<Ipv4Addr>() {
        OriginHost::Ipv4(ip)
    } else if host_text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("`{host_text}` is not a valid IPv4 address; {HINT}"));
    } else if is_valid_hostname(host_text.trim_end_matches('.')) {
        OriginHost::Domain(host_text.trim_end_matches('.').to_ascii_lowercase())
    } else {
        return Err(format!("`{host_text}` is not a valid host name; {HINT}"));
    };

    Ok(OriginAddr {
        authority: text.to_string(),
        host,
        port,
    })
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err("empty port after `:`".into());
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a number"));
    }
    match text.parse::<u32>() {
        Ok(0) => Err("port 0 is not a port".into()),
        Ok(p) if p <= 65_535 => Ok(p as u16),
        _ => Err(format!("`{text}` is above 65535")),
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens; the last label
/// is not all digits (that would be a mistyped IPv4 address).
pub fn is_valid_hostname(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    let last_label_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_label_numeric
}

/// serde_yaml appends "at line L column C" relative to a detached value, which would mislead.
fn strip_yaml_location(message: &str) -> &str {
    message.split(" at line ").next().unwrap_or(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(buckets: &str) -> String {
        format!("listen: 127.0.0.1:8080\ndata_dir: ./data\ndomain_suffix: file.myqcloud.com\nbuckets:\n{buckets}")
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
    fn disabled_without_origin_is_fine_and_defaults_apply() {
        let config = Config::parse(&base(
            "  - name: example-1250000000\n    origin_pull: {enabled: false}\n",
        ))
        .unwrap();
        assert_eq!(config.buckets[0].origin, None);
        assert_eq!(config.fill, FillSettings::default());
        assert_eq!(config.access_log, AccessLogTarget::Stderr);
    }
}
