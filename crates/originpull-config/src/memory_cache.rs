//! `memory_cache:`: the memory tier for hot small objects, and the object files kept open
//! between requests; fixed at start.

use super::errors::Errors;
use super::section::Section;

/// The memory tier for hot small objects; fixed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryCacheSettings {
    /// 0 turns the tier off.
    pub max_bytes: u64,
    pub max_object_bytes: u64,
    pub revalidate_secs: u64,
    /// Object files the disk store keeps open between requests, with their metadata (as nginx's
    /// `open_file_cache`), each trusted for `revalidate_secs`; 0: none. Lowered at start to what
    /// the descriptor limit leaves; `None` (not set): [`DEFAULT_OPEN_FILES`], or what the limit
    /// leaves, without a warning.
    pub open_files: Option<u64>,
}

impl Default for MemoryCacheSettings {
    fn default() -> Self {
        MemoryCacheSettings {
            max_bytes: 32 * 1024 * 1024,
            // Up to 1 MiB: an object served from memory is copied once on its way to the socket,
            // from disk twice (Pingora has no sendfile), which is most of a 1 MiB hit's cost.
            max_object_bytes: 1024 * 1024,
            revalidate_secs: 5,
            open_files: None,
        }
    }
}

const MEMORY_CACHE_KEYS: &[&str] = &[
    "max_bytes",
    "max_object_bytes",
    "revalidate_secs",
    "open_files",
];

pub(crate) fn parse_memory_cache(top: &Section<'_>, errors: &mut Errors) -> MemoryCacheSettings {
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
        open_files: cache.at_most("open_files", MAX_OPEN_FILES, errors),
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

/// `memory_cache.open_files` when not set.
pub const DEFAULT_OPEN_FILES: u64 = 20_000;

/// Each kept file holds a descriptor and about a KiB of memory.
const MAX_OPEN_FILES: u64 = 1 << 20;

/// The memory tier's bookkeeping grows with its size; beyond this, use the page cache.
const MAX_MEMORY_CACHE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
