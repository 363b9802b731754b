//! A list of origins (one bucket's, or one rule's) and the order in which a key tries them:
//! healthy primaries by weight, then healthy backups, and when none is healthy, the primaries
//! anyway (a redirect must go somewhere).
//!
//! The weighted choice is Pingora's (`pingora-load-balancing`'s FNV-hashed `Weighted`): the
//! key is hashed into a table where each primary has `weight` slots, so one key always starts at
//! the same origin (its redirect and its copy agree) and keys spread by weight. Its `Backend`
//! wants a socket address, but origins are names resolved per copy (DNS may change while we
//! run), so each primary enters the table under a placeholder Unix-socket path naming its
//! `scheme://authority`, which is only compared and hashed, never connected to. Its health
//! checks are not used: they probe `Backend` addresses and know nothing of backups or of
//! failures seen by copies, which [`super::health`] tracks.

use std::collections::BTreeSet;
use std::sync::Arc;

use pingora_load_balancing::selection::{BackendIter, BackendSelection, FNVHash};
use pingora_load_balancing::Backend;

use super::Origin;

pub struct OriginSet {
    primaries: Vec<Arc<Origin>>,
    backups: Vec<Arc<Origin>>,
    /// `None` with a single primary: nothing to choose.
    weighted: Option<Arc<FNVHash>>,
}

impl OriginSet {
    pub fn new(origins: Vec<Arc<Origin>>) -> OriginSet {
        let (backups, primaries): (Vec<_>, Vec<_>) =
            origins.into_iter().partition(|o| o.config.backup);
        let weighted = (primaries.len() > 1).then(|| {
            let backends: BTreeSet<Backend> = primaries
                .iter()
                .enumerate()
                .filter_map(|(index, origin)| placeholder_backend(index, origin))
                .collect();
            Arc::new(FNVHash::build(&backends))
        });
        OriginSet {
            primaries,
            backups,
            weighted,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.primaries.is_empty()
    }

    /// Every origin of the set, primaries first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Origin>> {
        self.primaries.iter().chain(self.backups.iter())
    }

    /// The origin a redirect for `key` points at. Allocates nothing: this is the miss path.
    pub fn first_choice(&self, key: &str) -> Option<&Arc<Origin>> {
        let mut fallback = None;
        let mut found = None;
        self.for_each_primary(key, |origin| {
            fallback.get_or_insert(origin);
            if origin.health.is_up() {
                found = Some(origin);
                return false;
            }
            true
        });
        found
            .or_else(|| self.backups.iter().find(|o| o.health.is_up()))
            .or(fallback)
    }

    /// The origins a copy of `key` tries, in order, until one answers.
    pub fn candidates(&self, key: &str) -> Vec<Arc<Origin>> {
        let mut ordered = Vec::with_capacity(self.primaries.len() + self.backups.len());
        self.for_each_primary(key, |origin| {
            ordered.push(origin.clone());
            true
        });
        let (mut up, down): (Vec<_>, Vec<_>) = ordered.into_iter().partition(|o| o.health.is_up());
        let backups_up: Vec<_> = self
            .backups
            .iter()
            .filter(|o| o.health.is_up())
            .cloned()
            .collect();
        if up.is_empty() && backups_up.is_empty() {
            // All down: try them all anyway, primaries first; one may have come back.
            up = down;
            up.extend(self.backups.iter().cloned());
        } else {
            up.extend(backups_up);
        }
        up
    }

    /// Visits every primary once, in the order `key` prefers, while `visit` returns true.
    fn for_each_primary<'a>(&'a self, key: &str, mut visit: impl FnMut(&'a Arc<Origin>) -> bool) {
        let Some(weighted) = &self.weighted else {
            if let Some(only) = self.primaries.first() {
                visit(only);
            }
            return;
        };
        let mut seen = vec![false; self.primaries.len()];
        let mut remaining = self.primaries.len();
        let mut iter = weighted.iter(key.as_bytes());
        // The weighted iterator walks pseudo-randomly after its first pick; bound the walk and
        // then take the rest in file order.
        let mut steps = 0;
        while remaining > 0 && steps < self.primaries.len() * 8 {
            steps += 1;
            let Some(backend) = iter.next() else { break };
            let Some(&index) = backend.ext.get::<usize>() else {
                continue;
            };
            if seen.get(index).copied() == Some(false) {
                seen[index] = true;
                remaining -= 1;
                if !visit(&self.primaries[index]) {
                    return;
                }
            }
        }
        for (index, origin) in self.primaries.iter().enumerate() {
            if !seen[index] && !visit(origin) {
                return;
            }
        }
    }
}

/// The table entry for primary `index`: a placeholder address naming the origin (see the
/// module documentation), its weight, and its index.
fn placeholder_backend(index: usize, origin: &Origin) -> Option<Backend> {
    // Short: a Unix socket path holds at most 107 bytes.
    let path = format!("/originpull-origin/{index}");
    let addr = std::os::unix::net::SocketAddr::from_pathname(path).ok()?;
    let mut backend = Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Unix(addr),
        weight: origin.config.weight as usize,
        ext: Default::default(),
    };
    backend.ext.insert(index);
    Some(backend)
}
