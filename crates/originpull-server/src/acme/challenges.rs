//! The HTTP-01 challenges of the ACME orders running now: token → key authorization, answered
//! on the plain listener at `/.well-known/acme-challenge/<token>` before any bucket routing
//! (RFC 8555 §8.3). A token is known only while its order waits for validation. With a state
//! the fleet shares, a token another node's order put in the store is answered too (the ACME
//! server may ask any node of the domain), once the request is routed to the domain's bucket.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::state::AcmeState;

/// Where HTTP-01 validation requests arrive.
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// Where a pending challenge's key authorization is kept in a shared state.
pub fn challenge_name(token: &str) -> String {
    format!("challenges/{token}")
}

#[derive(Default)]
pub struct Challenges {
    local: RwLock<HashMap<String, String>>,
    shared: Option<Arc<dyn AcmeState>>,
}

impl Challenges {
    /// The table of this node's orders, and `shared`, where the fleet's orders keep theirs.
    pub fn new(shared: Option<Arc<dyn AcmeState>>) -> Challenges {
        Challenges {
            local: RwLock::default(),
            shared,
        }
    }

    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.local
            .write()
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        self.local.write().remove(token);
    }

    /// The key authorization for a request path, when it is a pending challenge of this node.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(CHALLENGE_PATH)?;
        let table = self.local.read();
        if table.is_empty() {
            return None;
        }
        table.get(token).cloned()
    }

    /// The key authorization another node of the fleet keeps in the shared state for a
    /// request path of `bucket` (a domain's validation); `None` without a shared state.
    pub async fn shared_answer(&self, bucket: &str, path: &str) -> Option<String> {
        let shared = self.shared.as_ref()?;
        let token = path.strip_prefix(CHALLENGE_PATH)?;
        // Tokens are base64url: anything else is no token, and is not looked up.
        let plausible = !token.is_empty()
            && token.len() <= 128
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plausible {
            return None;
        }
        let body = shared.read(bucket, &challenge_name(token)).await.ok()??;
        String::from_utf8(body.to_vec()).ok()
    }
}

/// Whether `path` is under `/.well-known/acme-challenge/` (never redirected to HTTPS).
pub fn is_challenge_path(path: &str) -> bool {
    path.starts_with(CHALLENGE_PATH)
}
