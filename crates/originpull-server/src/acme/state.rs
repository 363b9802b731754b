//! What ACME keeps: the account (`account.json`, its URL and key as instant-acme serializes
//! them, and `directory_url`, the CA it belongs to), each domain's certificate (`<domain>.pem`,
//! the chain, and `<domain>.key`) and, while an order waits for validation, its HTTP-01 tokens
//! (`challenges/<token>`). Kept either in `https.acme.state_dir` on this node ([`StateDir`]:
//! every file 0600, written to a temporary name, synced and renamed into place), or in the S3
//! store every node shares ([`StoreState`]: under each bucket's reserved prefix, with the
//! store's lease so one node orders a domain at a time and every node serves the result).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use originpull_store::s3::S3Store;
use originpull_store::s3_private::PrivateObjects;
use originpull_store::FillClaim;

/// Where ACME's files live. `bucket` is the originpull bucket the domain belongs to (a store
/// shared by a fleet keeps each domain's state with its bucket).
#[async_trait]
pub trait AcmeState: Send + Sync {
    async fn read(&self, bucket: &str, name: &str) -> Result<Option<Bytes>, String>;
    async fn write(&self, bucket: &str, name: &str, body: Bytes) -> Result<(), String>;
    async fn remove(&self, bucket: &str, name: &str) -> Result<(), String>;
    /// The right to order `domain` until dropped; `None` while another node orders it.
    async fn claim(&self, bucket: &str, domain: &str) -> Result<Option<FillClaim>, String>;
    /// Whether other nodes share this state (and so may answer each other's challenges).
    fn shared(&self) -> bool;
}

/// `state_dir` on this node's disk.
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates the directory (0700) if needed.
    pub fn open(dir: &Path) -> std::io::Result<StateDir> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }
}

#[async_trait]
impl AcmeState for StateDir {
    async fn read(&self, _bucket: &str, name: &str) -> Result<Option<Bytes>, String> {
        match std::fs::read(self.dir.join(name)) {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.dir.join(name).display())),
        }
    }

    async fn write(&self, _bucket: &str, name: &str, body: Bytes) -> Result<(), String> {
        let path = self.dir.join(name);
        write_private(&path, &body).map_err(|e| format!("{}: {e}", path.display()))
    }

    async fn remove(&self, _bucket: &str, name: &str) -> Result<(), String> {
        match std::fs::remove_file(self.dir.join(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// One node: the service's own loop orders one domain at a time.
    async fn claim(&self, _bucket: &str, _domain: &str) -> Result<Option<FillClaim>, String> {
        Ok(Some(FillClaim::default()))
    }

    fn shared(&self) -> bool {
        false
    }
}

/// Writes `bytes` to `path` atomically, readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The S3 store, shared by the fleet: originpull's own objects of each bucket.
pub struct StoreState(pub Arc<S3Store>);

/// The private objects of ACME in the store.
fn store_name(name: &str) -> String {
    format!("acme/{name}")
}

impl StoreState {
    fn objects(&self, bucket: &str) -> Result<PrivateObjects, String> {
        self.0.private_objects(bucket).map_err(|e| e.to_string())
    }
}

#[async_trait]
impl AcmeState for StoreState {
    async fn read(&self, bucket: &str, name: &str) -> Result<Option<Bytes>, String> {
        let objects = self.objects(bucket)?;
        objects
            .get(&store_name(name))
            .await
            .map_err(|e| e.to_string())
    }

    async fn write(&self, bucket: &str, name: &str, body: Bytes) -> Result<(), String> {
        let objects = self.objects(bucket)?;
        objects
            .put(&store_name(name), body)
            .await
            .map_err(|e| e.to_string())
    }

    async fn remove(&self, bucket: &str, name: &str) -> Result<(), String> {
        let objects = self.objects(bucket)?;
        objects
            .delete(&store_name(name))
            .await
            .map_err(|e| e.to_string())
    }

    async fn claim(&self, bucket: &str, domain: &str) -> Result<Option<FillClaim>, String> {
        let objects = self.objects(bucket)?;
        objects
            .claim(&store_name(&format!("order/{domain}")))
            .await
            .map_err(|e| e.to_string())
    }

    fn shared(&self) -> bool {
        true
    }
}
