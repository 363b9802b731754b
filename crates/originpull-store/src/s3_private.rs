//! Small objects of originpull's own in the S3 store, shared by every node using it (ACME's
//! account, certificates and pending HTTP-01 tokens), under `<prefix>.originpull-private/`
//! in the S3 bucket of the originpull bucket they belong to. Keys there are never served,
//! stored from an origin or listed as the bucket's objects. A name can also be claimed among
//! the nodes, with the fill lease under that name: one node at a time works on it.

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::s3_lease::Leases;
use super::{FillClaim, StoreError};

/// The folder (inside `prefix`) of originpull's own objects.
pub const PRIVATE_FOLDER: &str = ".originpull-private/";

/// originpull's own objects of one originpull bucket (`S3Store::private_objects`): plain gets
/// and puts of whole small objects, and claims. The requests go through the store's link (its
/// deadlines and health) and the S3 bucket's lease requests.
pub struct PrivateObjects(pub(crate) Leases);

impl PrivateObjects {
    fn path(&self, name: &str) -> Result<Path, StoreError> {
        Path::parse(format!("{}{PRIVATE_FOLDER}{name}", self.0.prefix))
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))
    }

    /// The object `name`; `None` when there is none.
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(name)?;
        let client = &self.0.client;
        let read = async { client.get(&path).await?.bytes().await };
        match self.0.link.run("get", read).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    /// Writes the object `name`, replacing it.
    pub async fn put(&self, name: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.path(name)?;
        let len = body.len() as u64;
        let put = self.0.client.put(&path, PutPayload::from(body));
        self.0
            .link
            .run_sending("put", len, put)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Removes the object `name` (gone already is fine).
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name)?;
        match self.0.link.run("delete", self.0.client.delete(&path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    /// Claims `name` among the nodes until the claim is dropped; `None` while another node
    /// holds it (the fill lease of the key `.originpull-private/<name>`).
    pub async fn claim(&self, name: &str) -> Result<Option<FillClaim>, StoreError> {
        let key = format!("{PRIVATE_FOLDER}{name}");
        let path = self
            .0
            .lease_path(&key)
            .ok_or_else(|| StoreError::Io(std::io::Error::other(format!("bad name {name:?}"))))?;
        self.0
            .claim(&key, path)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}
