//! `store:`: where buckets keep their objects, fixed at start: the disk under `data_dir` (the
//! default) or an S3-compatible object store. Only the shape is checked here; whether the S3
//! buckets are reachable, and the credentials themselves, are checked at start. Also the disk
//! store's limits (`max_bytes`, `min_free_bytes`), which a reload may change.

use std::path::PathBuf;

use super::errors::Errors;
use super::section::Section;

/// Where buckets keep their objects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreSettings {
    /// The hashed directory under `data_dir`.
    #[default]
    Disk,
    S3(S3Settings),
}

/// `store.max_bytes` and `store.min_free_bytes`: how much the disk store may hold. Past either,
/// objects of `retention: cache` buckets are evicted; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapacityLimits {
    /// File bytes of every bucket's objects and variants.
    pub max_bytes: u64,
    /// Free bytes to keep on `data_dir`'s file system.
    pub min_free_bytes: u64,
}

impl CapacityLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.max_bytes > 0 || self.min_free_bytes > 0
    }
}

/// `store.s3`: one S3-compatible endpoint; each originpull bucket maps to an S3 bucket.
/// Holds no secret: credentials are read from `credentials_file` or the environment at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// `http://` or `https://`, without a path.
    pub endpoint: String,
    pub region: String,
    /// `true`: `endpoint/bucket/key` (MinIO style); `false`: `bucket.endpoint/key`.
    pub path_style: bool,
    /// AWS shared-credentials format (`[default]`, or the profile `AWS_PROFILE` names), read
    /// again when it changes; `None`: the credential chain (see `store/s3_credentials.rs`).
    pub credentials_file: Option<PathBuf>,
    /// PEM file of the CA (or CAs) the endpoint's certificate is checked against, besides the
    /// system's roots; for stores with a private CA.
    pub ca_file: Option<PathBuf>,
    /// The longest wait for the head of a store's answer (retries included), and for the next
    /// bytes of a body being read.
    pub request_timeout_ms: u64,
    /// How the store refuses to create an object that exists: what one fetch per key across
    /// the fleet rests on.
    pub conditional_put: ConditionalPut,
    /// The S3 bucket's name; [`BUCKET_PLACEHOLDER`] stands for the originpull bucket's name.
    pub bucket: String,
    /// Prepended to every object key, as is (give it a trailing `/` for a folder).
    pub prefix: String,
    /// `store.local_tier`: copies of store objects on this node's disk.
    pub local_tier: Option<LocalTierSettings>,
}

/// `store.s3.conditional_put`: how a lease object is created only if it does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConditionalPut {
    /// `If-None-Match: *` on PUT (412 when it exists); takeover with `If-Match` (AWS S3, R2,
    /// MinIO, Ceph RGW).
    #[default]
    IfNoneMatch,
    /// `x-cos-forbid-overwrite: true` on PUT (409 `FileAlreadyExists`): Tencent COS.
    CosForbidOverwrite,
    /// No conditional write: leases are best effort, nodes may fetch a key more than once.
    None,
}

impl ConditionalPut {
    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            ConditionalPut::IfNoneMatch => "if_none_match",
            ConditionalPut::CosForbidOverwrite => "cos_forbid_overwrite",
            ConditionalPut::None => "none",
        }
    }
}

/// `store.local_tier`: copies of S3 objects on this node's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTierSettings {
    pub dir: PathBuf,
    /// Least-recently-used copies are removed past this.
    pub max_bytes: u64,
    /// After this, a copy is checked against the store (ETag) before it is served again.
    pub revalidate_secs: u64,
}

/// In `store.s3.bucket`, replaced by the originpull bucket's name.
pub const BUCKET_PLACEHOLDER: &str = "{bucket}";

impl S3Settings {
    /// The S3 bucket that holds originpull bucket `bucket`.
    pub fn s3_bucket_for(&self, bucket: &str) -> String {
        self.bucket.replace(BUCKET_PLACEHOLDER, bucket)
    }
}

const STORE_KEYS: &[&str] = &["backend", "s3", "local_tier", "max_bytes", "min_free_bytes"];
const LOCAL_TIER_KEYS: &[&str] = &["dir", "max_bytes", "revalidate_secs"];
const S3_KEYS: &[&str] = &[
    "endpoint",
    "region",
    "path_style",
    "credentials_file",
    "ca_file",
    "bucket",
    "prefix",
    "request_timeout_ms",
    "conditional_put",
];
/// `store.s3.request_timeout_ms` when not set.
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 3000;

pub(crate) fn parse_store(
    top: &Section<'_>,
    errors: &mut Errors,
) -> (StoreSettings, CapacityLimits) {
    let Some(store) = top.nested("store", STORE_KEYS, "store.", errors) else {
        return (StoreSettings::Disk, CapacityLimits::default());
    };
    let limits = CapacityLimits {
        max_bytes: store.typed::<u64>("max_bytes", errors).unwrap_or(0),
        min_free_bytes: store.typed::<u64>("min_free_bytes", errors).unwrap_or(0),
    };
    let settings = parse_backend(&store, errors);
    if matches!(settings, StoreSettings::S3(_)) && limits.any() {
        errors.push(
            "store",
            "store.max_bytes",
            "`max_bytes` and `min_free_bytes` limit the disk store; with `backend: s3` the \
             local tier has its own `local_tier.max_bytes`",
        );
    }
    (settings, limits)
}

fn parse_backend(store: &Section<'_>, errors: &mut Errors) -> StoreSettings {
    let backend = store
        .typed::<String>("backend", errors)
        .unwrap_or_else(|| "disk".to_string());
    let s3 = store.nested("s3", S3_KEYS, "store.s3.", errors);
    let local_tier = store
        .nested("local_tier", LOCAL_TIER_KEYS, "store.local_tier.", errors)
        .and_then(|tier| parse_local_tier(&tier, errors));
    match backend.as_str() {
        "disk" => {
            if s3.is_some() || local_tier.is_some() {
                errors.push(
                    "store",
                    "store.s3",
                    "`s3` and `local_tier` are only read with `backend: s3`",
                );
            }
            StoreSettings::Disk
        }
        "s3" => match s3 {
            Some(s3) => parse_s3(&s3, errors)
                .map(|s3| StoreSettings::S3(S3Settings { local_tier, ..s3 }))
                .unwrap_or_default(),
            None => {
                errors.push("store", "store.s3", "is required with `backend: s3`");
                StoreSettings::Disk
            }
        },
        other => {
            errors.push(
                "store",
                "store.backend",
                format!("unknown backend {other:?}; expected `disk` or `s3`"),
            );
            StoreSettings::Disk
        }
    }
}

fn parse_s3(s3: &Section<'_>, errors: &mut Errors) -> Option<S3Settings> {
    let required = |key: &str, errors: &mut Errors| -> Option<String> {
        let value = s3.typed::<String>(key, errors);
        match value {
            Some(v) if !v.trim().is_empty() => Some(v),
            Some(_) => {
                errors.push("store", &s3.field(key), "must not be empty");
                None
            }
            None => {
                if s3.get(key).is_none() {
                    errors.push("store", &s3.field(key), "is required");
                }
                None
            }
        }
    };
    let endpoint = required("endpoint", errors);
    let region = required("region", errors);
    let bucket = s3
        .typed::<String>("bucket", errors)
        .unwrap_or_else(|| BUCKET_PLACEHOLDER.to_string());
    let path_style = s3.typed::<bool>("path_style", errors).unwrap_or(false);
    let path = |key: &str, errors: &mut Errors| {
        s3.typed::<String>(key, errors)
            .filter(|path| {
                let ok = !path.trim().is_empty();
                if !ok {
                    errors.push("store", &s3.field(key), "must not be empty");
                }
                ok
            })
            .map(PathBuf::from)
    };
    let credentials_file = path("credentials_file", errors);
    let ca_file = path("ca_file", errors);
    let prefix = s3.typed::<String>("prefix", errors).unwrap_or_default();
    let request_timeout_ms = s3.positive("request_timeout_ms", DEFAULT_REQUEST_TIMEOUT_MS, errors);
    let conditional_put = match s3.typed::<String>("conditional_put", errors).as_deref() {
        None | Some("if_none_match") => ConditionalPut::IfNoneMatch,
        Some("cos_forbid_overwrite") => ConditionalPut::CosForbidOverwrite,
        Some("none") => ConditionalPut::None,
        Some(other) => {
            errors.push(
                "store",
                "store.s3.conditional_put",
                format!(
                    "unknown mode {other:?}; expected `if_none_match`, `cos_forbid_overwrite` or \
                     `none`"
                ),
            );
            ConditionalPut::IfNoneMatch
        }
    };

    if let Some(endpoint) = &endpoint {
        if let Err(why) = check_endpoint(endpoint) {
            errors.push("store", "store.s3.endpoint", why);
        }
    }
    if let Err(why) = check_bucket_template(&bucket) {
        errors.push("store", "store.s3.bucket", why);
    }
    if prefix.starts_with('/') || prefix.chars().any(char::is_control) {
        errors.push(
            "store",
            "store.s3.prefix",
            "must not start with `/` or hold control characters",
        );
    }
    Some(S3Settings {
        endpoint: endpoint?.trim_end_matches('/').to_string(),
        region: region?,
        path_style,
        credentials_file,
        ca_file,
        request_timeout_ms,
        conditional_put,
        bucket,
        prefix,
        local_tier: None,
    })
}

fn parse_local_tier(tier: &Section<'_>, errors: &mut Errors) -> Option<LocalTierSettings> {
    let dir = tier
        .typed::<String>("dir", errors)
        .filter(|d| !d.trim().is_empty());
    if dir.is_none() {
        errors.push("store", "store.local_tier.dir", "is required (a directory)");
    }
    let max_bytes = tier.positive("max_bytes", 10 * 1024 * 1024 * 1024, errors);
    let revalidate_secs = tier.typed::<u64>("revalidate_secs", errors).unwrap_or(30);
    Some(LocalTierSettings {
        dir: PathBuf::from(dir?),
        max_bytes,
        revalidate_secs,
    })
}

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or("must start with `http://` or `https://`")?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err("must be a scheme and a host (and port), without a path".into());
    }
    Ok(())
}

/// S3 bucket names: 3 to 63 of `a-z`, `0-9`, `.`, `-`; originpull bucket names fit, so only
/// the literal part of a template is checked here.
fn check_bucket_template(template: &str) -> Result<(), String> {
    let literal = template.replace(BUCKET_PLACEHOLDER, "");
    if template.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if !literal
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
    {
        return Err(format!(
            "{template:?}: an S3 bucket name holds only a-z, 0-9, `.` and `-` (and `{BUCKET_PLACEHOLDER}`)"
        ));
    }
    if !template.contains(BUCKET_PLACEHOLDER) && !(3..=63).contains(&template.len()) {
        return Err(format!(
            "{template:?}: an S3 bucket name has 3 to 63 characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{Config, StoreSettings};

    fn with_store(store: &str) -> String {
        format!("listen: 127.0.0.1:8080\ndata_dir: ./data\ndomain_suffix: file.myqcloud.com\n{store}buckets:\n  - name: example-1250000000\n")
    }

    #[test]
    fn omitted_store_is_the_disk() {
        let config = Config::parse(&with_store("")).unwrap();
        assert_eq!(config.store, StoreSettings::Disk);
    }

    #[test]
    fn reads_the_documented_s3_shape() {
        let config = Config::parse(&with_store(
            "store:\n  backend: s3\n  s3:\n    endpoint: https://cos.ap-guangzhou.myqcloud.com/\n    region: ap-guangzhou\n    path_style: false\n    credentials_file: /etc/originpull/s3.credentials\n    bucket: \"{bucket}\"\n    prefix: edge/\n",
        ))
        .unwrap();
        let StoreSettings::S3(s3) = config.store else {
            panic!("not s3: {:?}", config.store);
        };
        assert_eq!(s3.endpoint, "https://cos.ap-guangzhou.myqcloud.com");
        assert_eq!(s3.s3_bucket_for("example-1250000000"), "example-1250000000");
        assert_eq!(s3.prefix, "edge/");
        assert!(!s3.path_style);
        assert_eq!(s3.local_tier, None);
        assert_eq!(s3.request_timeout_ms, 3000);
        assert_eq!(s3.conditional_put, crate::ConditionalPut::IfNoneMatch);
        assert_eq!(s3.ca_file, None);
    }

    #[test]
    fn reads_the_deadline_the_conditional_mode_and_the_ca() {
        let config = Config::parse(&with_store(
            "store:\n  backend: s3\n  s3: {endpoint: 'https://cos.example.com', region: r, request_timeout_ms: 500, conditional_put: cos_forbid_overwrite, ca_file: /etc/ca.pem}\n",
        ))
        .unwrap();
        let StoreSettings::S3(s3) = config.store else {
            panic!("not s3: {:?}", config.store);
        };
        assert_eq!(s3.request_timeout_ms, 500);
        assert_eq!(
            s3.conditional_put,
            crate::ConditionalPut::CosForbidOverwrite
        );
        assert_eq!(s3.ca_file, Some(std::path::PathBuf::from("/etc/ca.pem")));
        let text = Config::parse(&with_store(
            "store:\n  backend: s3\n  s3: {endpoint: 'https://cos.example.com', region: r, request_timeout_ms: 0, conditional_put: if_match, ca_file: ''}\n",
        ))
        .unwrap_err()
        .to_string();
        for needle in [
            "store.s3.request_timeout_ms: must be greater than 0",
            "store.s3.conditional_put: unknown mode \"if_match\"; expected `if_none_match`, `cos_forbid_overwrite` or `none`",
            "store.s3.ca_file: must not be empty",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
    }

    #[test]
    fn reads_the_local_tier() {
        let config = Config::parse(&with_store(
            "store:\n  backend: s3\n  s3: {endpoint: 'http://127.0.0.1:9000', region: r}\n  local_tier: {dir: /var/cache/originpull, max_bytes: 1000, revalidate_secs: 5}\n",
        ))
        .unwrap();
        let StoreSettings::S3(s3) = config.store else {
            panic!("not s3: {:?}", config.store);
        };
        let tier = s3.local_tier.unwrap();
        assert_eq!(tier.dir, std::path::PathBuf::from("/var/cache/originpull"));
        assert_eq!((tier.max_bytes, tier.revalidate_secs), (1000, 5));
        let text = Config::parse(&with_store(
            "store:\n  backend: s3\n  s3: {endpoint: 'http://127.0.0.1:9000', region: r}\n  local_tier: {max_bytes: 0}\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(text.contains("store.local_tier.dir: is required"), "{text}");
        assert!(text.contains("store.local_tier.max_bytes"), "{text}");
    }

    #[test]
    fn names_section_and_field_of_each_error() {
        let text = Config::parse(&with_store(
            "store:\n  backend: s3\n  s3:\n    endpoint: cos.example.com\n    bucket: Bad_Name\n    regoin: x\n",
        ))
        .unwrap_err()
        .to_string();
        for needle in [
            "store.s3.endpoint: must start with",
            "store.s3.region: is required",
            "store.s3.bucket:",
            "store.s3.regoin: unknown key",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
        let text = Config::parse(&with_store("store: {backend: ceph}\n"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("store.backend: unknown backend"), "{text}");
        let text = Config::parse(&with_store("store: {backend: s3}\n"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("store.s3: is required"), "{text}");
    }
}
