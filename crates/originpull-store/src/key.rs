//! Object keys: the one parser from a request path to a key, the one encoder from a key back
//! to a URL path for the origin, the ids the in-process caches file objects under, and the
//! stable hash that names an object's file and its place in the eviction order.
//!
//! A key is the request path without its leading `/`, percent-decoded, valid UTF-8 (as S3 and
//! COS keys are), at most 1024 bytes, and free of control characters and `.`/`..` segments. Keys
//! never name files directly (the disk store hashes them), so this parser is about what a valid
//! key is, not about file system safety; the store does not rely on it for that.

use std::hash::{BuildHasher, Hash, Hasher};

use percent_encoding::{percent_decode, percent_encode, AsciiSet, CONTROLS, NON_ALPHANUMERIC};

/// S3's limit on key length, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

/// Why a request path is not an object key; each maps to one S3-style error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// Empty, undecodable, not UTF-8, control characters, or dot segments: `InvalidURI`.
    Invalid(&'static str),
    /// Longer than [`MAX_KEY_BYTES`]: `KeyTooLongError`.
    TooLong,
}

/// Bytes kept as they are in a path sent to an origin: RFC 3986 `pchar` minus `%`, plus `/`.
/// Everything else, including `%`, `?`, `#`, `\`, spaces and non-ASCII, is percent-encoded.
const PATH_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// Bytes encoded in a query string copied into a redirect: only those a header value cannot
/// carry (controls and space; non-ASCII bytes are always encoded). Everything else, `%` and
/// `{}` included, passes through as the client sent it.
const QUERY_ENCODE: &AsciiSet = &CONTROLS.add(b' ');

/// What a request path names: an object, or a folder (`/`, or a path ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestTarget {
    /// `folder` is set when the key is a folder's index document: the folder as requested
    /// (decoded, no leading `/`, e.g. `docs/`), which is what the origin is asked for.
    Object {
        key: ObjectKey,
        folder: Option<String>,
    },
    /// A folder without an index document: redirected to the origin, never copied.
    Folder { path: String },
}

impl RequestTarget {
    /// Parses a request path; with `index_document`, `/` and `/docs/` name `index.html` and
    /// `docs/index.html` (COS's static-website index document).
    pub fn parse(path: &str, index_document: Option<&str>) -> Result<RequestTarget, KeyError> {
        let decoded = decode_path(path)?;
        if !decoded.is_empty() && !decoded.ends_with('/') {
            return Ok(RequestTarget::Object {
                key: ObjectKey(decoded),
                folder: None,
            });
        }
        match index_document {
            Some(index) => {
                let key = format!("{decoded}{index}");
                if key.len() > MAX_KEY_BYTES {
                    return Err(KeyError::TooLong);
                }
                Ok(RequestTarget::Object {
                    key: ObjectKey(key),
                    folder: Some(decoded),
                })
            }
            None => Ok(RequestTarget::Folder { path: decoded }),
        }
    }
}

/// The path without its leading `/`, percent-decoded and checked; may be empty (`/`).
fn decode_path(path: &str) -> Result<String, KeyError> {
    let Some(encoded) = path.strip_prefix('/') else {
        return Err(KeyError::Invalid("the path must start with /"));
    };
    let key = if encoded.contains('%') {
        if !percent_escapes_are_complete(encoded.as_bytes()) {
            return Err(KeyError::Invalid("the path has a malformed percent escape"));
        }
        let decoded: Vec<u8> = percent_decode(encoded.as_bytes()).collect();
        let Ok(key) = String::from_utf8(decoded) else {
            return Err(KeyError::Invalid("the object key is not valid UTF-8"));
        };
        key
    } else {
        // Nothing to decode (most paths): the text is the key, and UTF-8 already.
        encoded.to_string()
    };
    check_key(key)
}

/// What makes decoded text a key: at most [`MAX_KEY_BYTES`], no control character, no `.` or
/// `..` segment (an empty text is checked by the caller: `/` is a folder).
fn check_key(key: String) -> Result<String, KeyError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong);
    }
    if key.chars().any(char::is_control) {
        return Err(KeyError::Invalid(
            "the object key contains NUL or control characters",
        ));
    }
    if key
        .split(['/', '\\'])
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(KeyError::Invalid(
            "the object key contains a . or .. path segment",
        ));
    }
    Ok(key)
}

/// The URL path that names decoded `source` (a key or a folder, no leading `/`) at an origin:
/// `/` plus `source` with every byte outside the unreserved and path-safe set percent-encoded.
pub fn encode_origin_path(source: &str) -> String {
    let mut path = String::with_capacity(source.len() + 1);
    path.push('/');
    path.extend(percent_encode(source.as_bytes(), PATH_KEEP));
    path
}

impl ObjectKey {
    /// Parses the path part of a request target (no query), e.g. `/photos/1.jpg`.
    pub fn from_request_path(path: &str) -> Result<ObjectKey, KeyError> {
        let key = decode_path(path)?;
        if key.is_empty() {
            return Err(KeyError::Invalid("the object key is empty"));
        }
        Ok(ObjectKey(key))
    }

    /// The key a store recorded (a file's trailer, a listing of the S3 bucket), checked as a
    /// request's key is; a store may hold what no request could name (another tool's object).
    pub fn from_stored(key: &str) -> Result<ObjectKey, KeyError> {
        if key.is_empty() {
            return Err(KeyError::Invalid("the object key is empty"));
        }
        check_key(key.to_string()).map(ObjectKey)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of `document` (a valid key segment, such as an index document) in the folder
    /// this key names; `None` when it would be too long.
    pub fn in_folder(&self, document: &str) -> Option<ObjectKey> {
        let key = format!("{}/{document}", self.0);
        (key.len() <= MAX_KEY_BYTES).then_some(ObjectKey(key))
    }

    /// The URL path that names this key at an origin: `/` plus the key with every byte outside
    /// the unreserved and path-safe set percent-encoded. The 302 and the copy use the same path,
    /// so the client is sent to the object the bucket will store (the redirect also carries the
    /// request's query string, which the copy leaves out: it is not part of the key).
    pub fn origin_path(&self) -> String {
        encode_origin_path(&self.0)
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request's query string for a redirect, byte for byte except the bytes a header cannot carry
/// (controls such as CR and LF, space, non-ASCII), which are percent-encoded. The client's own
/// escapes are never touched, so a signed origin URL stays valid.
pub fn safe_query(query: &str) -> String {
    percent_encode(query.as_bytes(), QUERY_ENCODE).to_string()
}

fn percent_escapes_are_complete(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// The ids the in-process caches (the memory tier, the files kept open) file an object, or one
/// of its variants, under: a hash of bucket, key (and variant), seeded per process. Two objects
/// sharing an id only share a slot (a look-up checks bucket and key), so a fast hash is enough.
#[derive(Default)]
pub(crate) struct ObjectIds(hashbrown::DefaultHashBuilder);

impl ObjectIds {
    pub(crate) fn of(&self, bucket: &str, key: &ObjectKey) -> u64 {
        self.hasher_for(bucket, key).finish()
    }

    pub(crate) fn of_variant(&self, bucket: &str, key: &ObjectKey, variant: &str) -> u64 {
        let mut h = self.hasher_for(bucket, key);
        variant.hash(&mut h);
        h.finish()
    }

    fn hasher_for(&self, bucket: &str, key: &ObjectKey) -> impl Hasher {
        let mut h = self.0.build_hasher();
        bucket.hash(&mut h);
        key.as_str().hash(&mut h);
        h
    }
}

/// SHA-256 of an object key: names the object's file in the disk store (`disk.rs`) and its
/// entry in the eviction order (`capacity.rs`), the same across restarts and processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileHash(pub [u8; 32]);

impl FileHash {
    pub fn of(key: &ObjectKey) -> FileHash {
        use sha2::{Digest, Sha256};
        FileHash(Sha256::digest(key.as_str().as_bytes()).into())
    }

    /// The hash a file name of 64 lower-case hex digits spells; `None` for any other name.
    pub fn from_file_name(name: &[u8]) -> Option<FileHash> {
        if name.len() != 64 || !name.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut hash = [0u8; 32];
        hex::decode_to_slice(name, &mut hash).ok()?;
        Some(FileHash(hash))
    }

    /// The 64 lower-case hex digits, as the file is named.
    pub fn to_hex(&self) -> [u8; 64] {
        let mut hex = [0u8; 64];
        if hex::encode_to_slice(self.0, &mut hex).is_err() {
            unreachable!("32 bytes are 64 hex digits");
        }
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_key_is_checked_as_a_requested_one_without_a_round_trip() {
        for key in ["a", "photos/中 x.jpg", "a%20b", "q?x#y", "a/.b"] {
            let from_request = ObjectKey::from_request_path(&encode_origin_path(key));
            assert_eq!(ObjectKey::from_stored(key), from_request, "{key}");
        }
        for bad in ["", "a/../b", ".", "a\u{0}b", &"k".repeat(MAX_KEY_BYTES + 1)] {
            assert!(ObjectKey::from_stored(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decodes_and_strips_the_leading_slash() {
        let key = ObjectKey::from_request_path("/photos/%E4%B8%AD%20x.jpg").unwrap();
        assert_eq!(key.as_str(), "photos/中 x.jpg");
        assert_eq!(key.origin_path(), "/photos/%E4%B8%AD%20x.jpg");
    }

    #[test]
    fn seed_example_round_trips_unchanged() {
        let key = ObjectKey::from_request_path("/1.jpg").unwrap();
        assert_eq!(key.origin_path(), "/1.jpg");
    }

    #[test]
    fn refuses_what_cannot_be_a_key() {
        for path in [
            "/",
            "",
            "a",
            "/%",
            "/%zz",
            "/a/%2e%2e/b",
            "/..",
            "/a/./b",
            "/a%00b",
            "/a%0d%0ab",
            "/%ff",
            "/a/..%5cb",
            "/..\\x",
        ] {
            assert!(ObjectKey::from_request_path(path).is_err(), "{path:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_KEY_BYTES + 1));
        assert_eq!(ObjectKey::from_request_path(&long), Err(KeyError::TooLong));
    }

    #[test]
    fn keeps_keys_that_only_look_odd() {
        for path in ["/a..b", "/.hidden", "/a//b", "/a/b/", "/%2e%2e.txt"] {
            assert!(ObjectKey::from_request_path(path).is_ok(), "{path:?}");
        }
    }

    #[test]
    fn encodes_separators_that_would_change_the_url() {
        let key = ObjectKey::from_request_path("/a%3Fb%23c%25d%5Ce").unwrap();
        assert_eq!(key.as_str(), "a?b#c%d\\e");
        assert_eq!(key.origin_path(), "/a%3Fb%23c%25d%5Ce");
    }

    #[test]
    fn folders_name_their_index_document_or_stay_folders() {
        let parse = RequestTarget::parse;
        assert_eq!(
            parse("/", Some("index.html")),
            Ok(RequestTarget::Object {
                key: ObjectKey("index.html".into()),
                folder: Some(String::new())
            })
        );
        assert_eq!(
            parse("/docs%20x/", Some("index.html")),
            Ok(RequestTarget::Object {
                key: ObjectKey("docs x/index.html".into()),
                folder: Some("docs x/".into())
            })
        );
        assert_eq!(
            parse("/docs/", None),
            Ok(RequestTarget::Folder {
                path: "docs/".into()
            })
        );
        assert_eq!(
            parse("/", None),
            Ok(RequestTarget::Folder {
                path: String::new()
            })
        );
        assert!(parse("/a/../", Some("index.html")).is_err());
        assert!(parse("/a%00/", None).is_err());
        assert_eq!(
            parse("/a.jpg", Some("index.html")),
            Ok(RequestTarget::Object {
                key: ObjectKey("a.jpg".into()),
                folder: None
            })
        );
    }

    #[test]
    fn query_keeps_escapes_and_encodes_unsafe_bytes() {
        assert_eq!(safe_query("a=1&b=%20"), "a=1&b=%20");
        assert_eq!(safe_query("a=\r\nSet-Cookie: x"), "a=%0D%0ASet-Cookie:%20x");
    }

    #[test]
    fn query_passes_through_byte_for_byte() {
        for query in [
            "q={a}",
            "q=%7Ba%7D",
            "sig=ab+c/d==&exp=1&x=%2F%2f",
            "a=\"b\"&c=<d>|^`\\",
            "100%&%zz",
            "?a=b?c",
        ] {
            assert_eq!(safe_query(query), query);
        }
        assert_eq!(safe_query("q=\u{7f}\t\u{0}"), "q=%7F%09%00");
        assert_eq!(safe_query("q=中"), "q=%E4%B8%AD");
    }
}
