//! Where the S3 store's access keys come from, chosen once at start in the order the AWS SDKs
//! use, and kept fresh while the node runs.
//!
//! 1. `store.s3.credentials_file`, when set: an AWS shared-credentials file, the profile
//!    `AWS_PROFILE` names or `[default]`.
//! 2. `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`).
//! 3. The shared-credentials file `AWS_SHARED_CREDENTIALS_FILE` (else `~/.aws/credentials`),
//!    when it holds that profile.
//! 4. Web identity (Kubernetes IRSA): `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`, traded
//!    at STS (`AWS_ROLE_SESSION_NAME`, `AWS_ENDPOINT_URL_STS`).
//! 5. The container's role: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (ECS), or
//!    `AWS_CONTAINER_CREDENTIALS_FULL_URI` with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (EKS Pod
//!    Identity).
//! 6. The instance's role from instance metadata (IMDSv2), at `AWS_EC2_METADATA_SERVICE_ENDPOINT`
//!    (or `AWS_METADATA_ENDPOINT`), else `http://169.254.169.254`; not with
//!    `AWS_EC2_METADATA_DISABLED=true`.
//!
//! Sources 4 to 6 are object_store's own providers (`AmazonS3Builder`'s chain), which fetch
//! temporary keys and fetch new ones five minutes before they expire. The files of 1 and 3 are
//! read by [`ProfileFile`], which looks for a change at most once a second and reads the file
//! again when it changed, so keys rotated into the file are used without a restart. Only the
//! variables named here are read: an `AWS_ENDPOINT_URL_S3` or `AWS_REGION` in the environment
//! does not override the configuration. No key is ever printed.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredential};
use object_store::{CredentialProvider, StaticCredentialProvider};
use parking_lot::Mutex;

use originpull_config::S3Settings;

/// A credentials file is checked for a change at most this often.
const FILE_RECHECK: Duration = Duration::from_secs(1);
/// Instance metadata's address when no variable names another.
const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// The chosen source of the store's keys (see the module documentation).
#[derive(Debug, Clone)]
pub enum CredentialSource {
    File(Arc<ProfileFile>),
    Environment(Arc<AwsCredential>),
    /// One of object_store's providers, configured by these keys.
    Chain {
        description: String,
        config: Vec<(AmazonS3ConfigKey, String)>,
    },
}

impl CredentialSource {
    /// The source for `settings` and this process's environment; the error names what is
    /// missing or unreadable, never a value.
    pub fn resolve(settings: &S3Settings) -> Result<CredentialSource, String> {
        CredentialSource::resolve_with(settings, |name| {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        })
    }

    fn resolve_with(
        settings: &S3Settings,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<CredentialSource, String> {
        let named_profile = var("AWS_PROFILE");
        let profile = named_profile.clone().unwrap_or_else(|| "default".into());
        if let Some(path) = &settings.credentials_file {
            let file = ProfileFile::open(path, &profile, "store.s3.credentials_file")?;
            return Ok(CredentialSource::File(Arc::new(file)));
        }
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(key_id), Some(secret_key)) => {
                return Ok(CredentialSource::Environment(Arc::new(AwsCredential {
                    key_id,
                    secret_key,
                    token: var("AWS_SESSION_TOKEN"),
                })))
            }
            (None, None) => {}
            _ => {
                return Err(
                    "store.s3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set \
                            together"
                        .into(),
                )
            }
        }
        let shared = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".aws/credentials")));
        if let Some(path) = shared.filter(|path| path.exists()) {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("store.s3: {}: cannot read: {e}", path.display()))?;
            if profile_section(&text, &profile).is_some() {
                let file = ProfileFile::open(&path, &profile, "the shared credentials file")?;
                return Ok(CredentialSource::File(Arc::new(file)));
            }
            if named_profile.is_some() {
                return Err(format!(
                    "store.s3: AWS_PROFILE names [{profile}], which {} does not hold",
                    path.display()
                ));
            }
        }
        let chain = |description: String, keys: &[(&str, AmazonS3ConfigKey)]| {
            let config = keys
                .iter()
                .filter_map(|(name, key)| var(name).map(|value| (*key, value)))
                .collect();
            CredentialSource::Chain {
                description,
                config,
            }
        };
        if var("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() && var("AWS_ROLE_ARN").is_some() {
            return Ok(chain(
                "web identity (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN)".into(),
                &[
                    (
                        "AWS_WEB_IDENTITY_TOKEN_FILE",
                        AmazonS3ConfigKey::WebIdentityTokenFile,
                    ),
                    ("AWS_ROLE_ARN", AmazonS3ConfigKey::RoleArn),
                    ("AWS_ROLE_SESSION_NAME", AmazonS3ConfigKey::RoleSessionName),
                    ("AWS_ENDPOINT_URL_STS", AmazonS3ConfigKey::StsEndpoint),
                ],
            ));
        }
        if var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some() {
            return Ok(chain(
                "the ECS task role (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI)".into(),
                &[(
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                    AmazonS3ConfigKey::ContainerCredentialsRelativeUri,
                )],
            ));
        }
        if var("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
            && var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").is_some()
        {
            return Ok(chain(
                "the container's role (AWS_CONTAINER_CREDENTIALS_FULL_URI)".into(),
                &[
                    (
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                        AmazonS3ConfigKey::ContainerCredentialsFullUri,
                    ),
                    (
                        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                        AmazonS3ConfigKey::ContainerAuthorizationTokenFile,
                    ),
                ],
            ));
        }
        if var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Err(
                "store.s3: no credentials: no credentials_file, no AWS_ACCESS_KEY_ID / \
                        AWS_SECRET_ACCESS_KEY, no shared credentials file with the profile, no \
                        web identity or container role, and instance metadata is disabled \
                        (AWS_EC2_METADATA_DISABLED)"
                    .into(),
            );
        }
        let endpoint = var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .or_else(|| var("AWS_METADATA_ENDPOINT"))
            .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.into());
        let endpoint = endpoint.trim_end_matches('/').to_string();
        Ok(CredentialSource::Chain {
            description: format!("the instance's role (instance metadata at {endpoint})"),
            config: vec![(AmazonS3ConfigKey::MetadataEndpoint, endpoint)],
        })
    }

    /// Says where the keys come from, for the log and for start-up errors.
    pub fn describe(&self) -> String {
        match self {
            CredentialSource::File(file) => file.describe(),
            CredentialSource::Environment(_) => "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY".into(),
            CredentialSource::Chain { description, .. } => description.clone(),
        }
    }

    /// `builder` taking its keys from this source.
    pub fn apply(&self, builder: AmazonS3Builder) -> AmazonS3Builder {
        match self {
            CredentialSource::File(file) => builder.with_credentials(file.clone()),
            CredentialSource::Environment(credential) => {
                let credential = AwsCredential {
                    key_id: credential.key_id.clone(),
                    secret_key: credential.secret_key.clone(),
                    token: credential.token.clone(),
                };
                builder.with_credentials(Arc::new(StaticCredentialProvider::new(credential)))
            }
            CredentialSource::Chain { config, .. } => {
                config.iter().fold(builder, |builder, (key, value)| {
                    builder.with_config(*key, value)
                })
            }
        }
    }
}

/// One profile of an AWS shared-credentials file, read again when the file changes.
#[derive(Debug)]
pub struct ProfileFile {
    path: PathBuf,
    profile: String,
    /// How the configuration names the file, for messages.
    named_by: &'static str,
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    checked: Instant,
    /// What identifies the version read: modification time, length, inode.
    stamp: Option<(SystemTime, u64, u64)>,
    credential: Arc<AwsCredential>,
}

fn stamp_of(path: &FsPath) -> Option<(SystemTime, u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

impl ProfileFile {
    fn open(path: &FsPath, profile: &str, named_by: &'static str) -> Result<ProfileFile, String> {
        let stamp = stamp_of(path);
        let credential = read_profile(path, profile, named_by)?;
        Ok(ProfileFile {
            path: path.to_path_buf(),
            profile: profile.to_string(),
            named_by,
            state: Mutex::new(FileState {
                checked: Instant::now(),
                stamp,
                credential: Arc::new(credential),
            }),
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} {}, profile [{}] (read again when it changes)",
            self.named_by,
            self.path.display(),
            self.profile
        )
    }

    /// The profile's keys, read again if the file changed since the last look.
    fn current(&self) -> Arc<AwsCredential> {
        let mut state = self.state.lock();
        if state.checked.elapsed() < FILE_RECHECK {
            return state.credential.clone();
        }
        state.checked = Instant::now();
        let stamp = stamp_of(&self.path);
        if stamp == state.stamp {
            return state.credential.clone();
        }
        // One log line per change of the file, whatever the number of requests.
        state.stamp = stamp;
        match read_profile(&self.path, &self.profile, self.named_by) {
            Ok(credential) => {
                log::info!(
                    "S3 store: {} changed; using its new keys",
                    self.path.display()
                );
                state.credential = Arc::new(credential);
            }
            Err(why) => log::warn!("S3 store: {why}; keeping the keys read before"),
        }
        state.credential.clone()
    }
}

#[async_trait]
impl CredentialProvider for ProfileFile {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        Ok(self.current())
    }
}

fn read_profile(path: &FsPath, profile: &str, named_by: &str) -> Result<AwsCredential, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{named_by} {}: cannot read: {e}", path.display()))?;
    parse_profile(&text, profile).ok_or_else(|| {
        format!(
            "{named_by} {}: the [{profile}] profile needs aws_access_key_id and \
             aws_secret_access_key",
            path.display()
        )
    })
}

/// The `name = value` pairs of section `[profile]` (names lower-cased); `None` without one.
fn profile_section(text: &str, profile: &str) -> Option<HashMap<String, String>> {
    let mut in_profile = false;
    let mut found = false;
    let mut values = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = section.trim() == profile;
            found |= in_profile;
            continue;
        }
        if let (true, Some((name, value))) = (in_profile, line.split_once('=')) {
            values.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    found.then_some(values)
}

/// The keys of `[profile]` of an AWS shared-credentials (INI) file.
fn parse_profile(text: &str, profile: &str) -> Option<AwsCredential> {
    let mut values = profile_section(text, profile)?;
    let mut take = |name: &str| values.remove(name).filter(|v| !v.is_empty());
    Some(AwsCredential {
        key_id: take("aws_access_key_id")?,
        secret_key: take("aws_secret_access_key")?,
        token: take("aws_session_token"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(credentials_file: Option<PathBuf>) -> S3Settings {
        S3Settings {
            endpoint: "http://127.0.0.1:1".into(),
            region: "r".into(),
            path_style: true,
            credentials_file,
            ca_file: None,
            request_timeout_ms: 1000,
            conditional_put: originpull_config::ConditionalPut::IfNoneMatch,
            bucket: "{bucket}".into(),
            prefix: String::new(),
            local_tier: None,
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn reads_the_named_profile_only() {
        let text = "[other]\naws_access_key_id = OTHER\naws_secret_access_key = o\n\n\
                    [default]\n# comment\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key=secret/key+1\n";
        let credential = parse_profile(text, "default").unwrap();
        assert_eq!(credential.key_id, "AKIDEXAMPLE");
        assert_eq!(credential.secret_key, "secret/key+1");
        assert!(credential.token.is_none());
        assert_eq!(parse_profile(text, "other").unwrap().key_id, "OTHER");
        assert!(parse_profile(text, "missing").is_none());
    }

    #[test]
    fn a_profile_without_the_secret_is_refused_without_showing_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        std::fs::write(&path, "[default]\naws_access_key_id = AKIDEXAMPLE\n").unwrap();
        let err = read_profile(&path, "default", "store.s3.credentials_file").unwrap_err();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("aws_secret_access_key"),
            "{err}"
        );
        assert!(!err.contains("AKIDEXAMPLE"), "{err}");
    }

    #[test]
    fn the_chain_goes_in_the_sdk_order() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("credentials");
        std::fs::write(
            &shared,
            "[default]\naws_access_key_id = D\naws_secret_access_key = d\n[ci]\naws_access_key_id = C\naws_secret_access_key = c\n",
        )
        .unwrap();
        let shared_var = shared.to_str().unwrap();
        let describe = |vars: &[(&str, &str)]| {
            CredentialSource::resolve_with(&settings(None), env(vars))
                .map(|source| source.describe())
        };
        // The explicit file wins over everything.
        let explicit = CredentialSource::resolve_with(
            &settings(Some(shared.clone())),
            env(&[("AWS_ACCESS_KEY_ID", "E"), ("AWS_SECRET_ACCESS_KEY", "e")]),
        )
        .unwrap();
        assert!(explicit.describe().starts_with("store.s3.credentials_file"));
        assert_eq!(
            describe(&[
                ("AWS_ACCESS_KEY_ID", "E"),
                ("AWS_SECRET_ACCESS_KEY", "e"),
                ("AWS_SHARED_CREDENTIALS_FILE", shared_var),
            ])
            .unwrap(),
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        );
        let profile = describe(&[
            ("AWS_SHARED_CREDENTIALS_FILE", shared_var),
            ("AWS_PROFILE", "ci"),
            ("AWS_ROLE_ARN", "arn"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
        ])
        .unwrap();
        assert!(profile.contains("profile [ci]"), "{profile}");
        let missing = describe(&[
            ("AWS_SHARED_CREDENTIALS_FILE", shared_var),
            ("AWS_PROFILE", "nope"),
        ])
        .unwrap_err();
        assert!(missing.contains("[nope]"), "{missing}");
        let none_there = dir.path().join("absent");
        let none_there = none_there.to_str().unwrap();
        assert!(describe(&[
            ("AWS_SHARED_CREDENTIALS_FILE", none_there),
            ("AWS_ROLE_ARN", "arn"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/x"),
        ])
        .unwrap()
        .starts_with("web identity"));
        assert!(describe(&[
            ("AWS_SHARED_CREDENTIALS_FILE", none_there),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/x"),
        ])
        .unwrap()
        .contains("ECS"));
        assert_eq!(
            describe(&[
                ("AWS_SHARED_CREDENTIALS_FILE", none_there),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9/"),
            ])
            .unwrap(),
            "the instance's role (instance metadata at http://127.0.0.1:9)"
        );
        assert!(describe(&[
            ("AWS_SHARED_CREDENTIALS_FILE", none_there),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ])
        .unwrap_err()
        .contains("no credentials"));
        assert!(describe(&[("AWS_ACCESS_KEY_ID", "E")])
            .unwrap_err()
            .contains("together"));
    }

    #[test]
    fn a_rewritten_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        std::fs::write(
            &path,
            "[default]\naws_access_key_id=OLD\naws_secret_access_key=s\n",
        )
        .unwrap();
        let file = ProfileFile::open(&path, "default", "store.s3.credentials_file").unwrap();
        assert_eq!(file.current().key_id, "OLD");
        std::fs::write(
            &path,
            "[default]\naws_access_key_id=NEWER\naws_secret_access_key=s\n",
        )
        .unwrap();
        assert_eq!(
            file.current().key_id,
            "OLD",
            "not looked at within a second"
        );
        file.state.lock().checked = Instant::now() - FILE_RECHECK;
        assert_eq!(file.current().key_id, "NEWER");
        std::fs::write(&path, "[default]\n").unwrap();
        file.state.lock().checked = Instant::now() - FILE_RECHECK;
        assert_eq!(
            file.current().key_id,
            "NEWER",
            "a broken file keeps the keys"
        );
    }
}
