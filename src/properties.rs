//! The properties the request parsers and the configuration loader promise for any input,
//! written once as checks: the property tests (`tests/properties.rs`) run them on generated
//! input and the fuzz targets (`fuzz/`) on mutated bytes. Each check takes anything a client or
//! a configuration file could send and returns `Err` with what was broken; an `Err` is a bug in
//! originpull, never in the input.

use http::{header, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{parse_origin_with, Config, OriginAddr, Protocol};
use crate::key::{ObjectKey, RequestTarget, MAX_KEY_BYTES};
use crate::redirect::location;
use crate::serve::byte_range;

/// What a check found broken, with the input that broke it.
pub type Violation = String;

/// The key parser: `path` is refused, or its key has no control character, no `.`/`..`
/// segment, at most [`MAX_KEY_BYTES`], and parses back from its origin path to itself. With an
/// index document, a folder names `folder + index_document` and an object is never a folder.
pub fn key_parser(path: &str, index_document: &str) -> Result<(), Violation> {
    if let Ok(key) = ObjectKey::from_request_path(path) {
        let origin_path = key.origin_path();
        let again = ObjectKey::from_request_path(&origin_path);
        if again.as_ref() != Ok(&key) {
            return Err(format!(
                "{path:?} is key {key:?}, but its origin path {origin_path:?} is {again:?}"
            ));
        }
        if key.as_str().chars().any(char::is_control) {
            return Err(format!("{path:?} is key {key:?}, with a control character"));
        }
        if key
            .as_str()
            .split(['/', '\\'])
            .any(|s| s == "." || s == "..")
        {
            return Err(format!("{path:?} is key {key:?}, with a dot segment"));
        }
        if key.as_str().len() > MAX_KEY_BYTES {
            return Err(format!("{path:?} is a key of {} bytes", key.as_str().len()));
        }
    }
    match RequestTarget::parse(path, Some(index_document)) {
        Ok(RequestTarget::Object {
            key,
            folder: Some(folder),
        }) => {
            if key.as_str() != format!("{folder}{index_document}") {
                return Err(format!(
                    "{path:?}: key {key:?} is not folder {folder:?} + index"
                ));
            }
            if !(folder.is_empty() || folder.ends_with('/')) {
                return Err(format!("{path:?}: folder {folder:?} does not end with /"));
            }
        }
        Ok(RequestTarget::Object { key, folder: None }) => {
            if key.as_str().ends_with('/') {
                return Err(format!("{path:?}: key {key:?} names a folder"));
            }
        }
        Ok(RequestTarget::Folder { path: folder }) => {
            return Err(format!(
                "{path:?} is folder {folder:?} despite an index document"
            ));
        }
        Err(_) => {}
    }
    let _ = RequestTarget::parse(path, None);
    Ok(())
}

/// The origin parser: `text` is refused, or its authority is visible ASCII without user info,
/// path, query or fragment, and parses back to the same origin.
pub fn origin_round_trips(text: &str, protocol: Protocol) -> Result<(), Violation> {
    let Ok(origin) = parse_origin_with(text, protocol) else {
        return Ok(());
    };
    let authority = &origin.authority;
    if authority.is_empty()
        || authority
            .bytes()
            .any(|b| !b.is_ascii_graphic() || b"/?#@\\".contains(&b))
    {
        return Err(format!("{text:?} gave authority {authority:?}"));
    }
    let again = parse_origin_with(authority, protocol);
    if again.as_ref() != Ok(&origin) {
        return Err(format!(
            "{text:?} is {origin:?}, but its authority parses to {again:?}"
        ));
    }
    Ok(())
}

/// The 302 `Location` for a request `path` and `query` at `origin`: exactly
/// `scheme://authority` from the configuration, the key's origin path, and `?` + the query,
/// each query byte as itself or, where a header cannot carry it, as its `%XX` escape. Nothing
/// else, so no byte the configuration and request did not put there.
pub fn location_carries_only_origin_and_request(
    origin: &OriginAddr,
    path: &str,
    query: &str,
) -> Result<(), Violation> {
    let Ok(key) = ObjectKey::from_request_path(path) else {
        return Ok(());
    };
    let origin_path = key.origin_path();
    let target = location(origin, &origin_path, Some(query));
    if target
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii())
        || HeaderValue::from_str(&target).is_err()
    {
        return Err(format!("{target:?} is not a clean header value"));
    }
    let Some(rest) = target.strip_prefix(&origin.url_base()) else {
        return Err(format!(
            "{target:?} does not start with {}",
            origin.url_base()
        ));
    };
    let (sent_path, sent_query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if sent_path != origin_path {
        return Err(format!("{target:?}: path is not {origin_path:?}"));
    }
    match sent_query {
        None if query.is_empty() => Ok(()),
        Some(sent) if !query.is_empty() && query_bytes_come_through(query, sent) => Ok(()),
        _ => Err(format!("{target:?}: query is not {query:?}")),
    }
}

/// Whether `sent` is `query` with each byte as itself or as `%XX` (upper-case hex).
fn query_bytes_come_through(query: &str, sent: &str) -> bool {
    let mut sent = sent.as_bytes();
    for &byte in query.as_bytes() {
        let escape = format!("%{byte:02X}");
        if let Some(after) = sent.strip_prefix(&[byte][..]) {
            sent = after;
        } else if let Some(after) = sent.strip_prefix(escape.as_bytes()) {
            sent = after;
        } else {
            return false;
        }
    }
    sent.is_empty()
}

/// Range handling for an object of `size` and a client's `Range` header value: a 200 for the
/// whole object, a 206 for a non-empty range inside it with the matching `Content-Range`, or a
/// 416 with `bytes */size` and no body; never an error.
pub fn byte_range_matches_its_headers(range_header: &[u8], size: u64) -> Result<(), Violation> {
    let Ok(value) = HeaderValue::from_bytes(range_header) else {
        return Ok(()); // not a header value: the HTTP parser refuses it first
    };
    let shown = String::from_utf8_lossy(range_header);
    let broken = |what: String| format!("Range {shown:?} of {size} bytes: {what}");
    let mut req =
        RequestHeader::build("GET", b"/k", None).map_err(|e| broken(format!("request: {e}")))?;
    req.insert_header(header::RANGE, value)
        .map_err(|e| broken(format!("request: {e}")))?;
    let mut resp =
        ResponseHeader::build(200, None).map_err(|e| broken(format!("response: {e}")))?;
    resp.insert_header(header::CONTENT_LENGTH, size)
        .map_err(|e| broken(format!("response: {e}")))?;
    let range = byte_range(&req, &mut resp, size).map_err(|e| broken(format!("error {e}")))?;
    let content_range = resp
        .headers
        .get(header::CONTENT_RANGE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match resp.status.as_u16() {
        200 if range == (0..size) => Ok(()),
        206 if !range.is_empty()
            && range.end <= size
            && content_range == Some(format!("bytes {}-{}/{size}", range.start, range.end - 1)) =>
        {
            Ok(())
        }
        416 if range.is_empty() && content_range == Some(format!("bytes */{size}")) => Ok(()),
        status => Err(broken(format!(
            "{status} with range {range:?} and Content-Range {content_range:?}"
        ))),
    }
}

/// The configuration loader: any text is a configuration or a non-empty list of errors, each
/// with a scope and a message.
pub fn config_text_is_a_config_or_named_errors(text: &str) -> Result<(), Violation> {
    match Config::parse(text) {
        Ok(_) => Ok(()),
        Err(errors) if errors.0.is_empty() => Err(format!("{text:?} refused without an error")),
        Err(errors) => match errors
            .0
            .iter()
            .find(|e| e.scope.is_empty() || e.message.is_empty())
        {
            Some(error) => Err(format!(
                "{text:?}: error without scope or message: {error:?}"
            )),
            None => Ok(()),
        },
    }
}

/// One bucket with origin-pull, one origin and one rule, its fields as given: what the bucket
/// part of the configuration loader is checked with.
#[derive(Debug, Clone)]
pub struct GeneratedBucket<'a> {
    pub name: &'a str,
    pub origin: &'a str,
    pub protocol: &'a str,
    pub weight: u32,
    pub prefix: &'a str,
    pub redirect_code: u16,
}

impl GeneratedBucket<'_> {
    /// A whole configuration file with this bucket; every string field is a YAML double-quoted
    /// scalar, so the file is valid YAML whatever the fields hold.
    pub fn config_text(&self) -> String {
        format!(
            "listen: 127.0.0.1:8080\ndata_dir: ./d\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - name: {}\n    origin_pull:\n      enabled: true\n      origins:\n        - address: {}\n          protocol: {}\n          weight: {}\n      rules:\n        - prefix: {}\n          redirect_code: {}\n",
            yaml_quoted(self.name),
            yaml_quoted(self.origin),
            yaml_quoted(self.protocol),
            self.weight,
            yaml_quoted(self.prefix),
            self.redirect_code,
        )
    }

    /// The file parses to this bucket (its name, a weight of at least 1), or every error names
    /// the bucket: by name, or by position when it has no usable name.
    pub fn parses_or_names_its_bucket(&self) -> Result<(), Violation> {
        let text = self.config_text();
        match Config::parse(&text) {
            Ok(config) => {
                let Some(bucket) = config.buckets.first() else {
                    return Err(format!("{text:?} parsed without its bucket"));
                };
                if bucket.name != self.name {
                    return Err(format!("{text:?} parsed to bucket {:?}", bucket.name));
                }
                match &bucket.origin_pull {
                    Some(pull) if pull.origins.first().is_some_and(|o| o.weight >= 1) => Ok(()),
                    other => Err(format!("{text:?} parsed to origin-pull {other:?}")),
                }
            }
            Err(errors) => match errors
                .0
                .iter()
                .find(|e| !(e.scope.contains(self.name) || e.scope.starts_with("buckets[")))
            {
                Some(error) => Err(format!("{text:?}: error not naming the bucket: {error}")),
                None => Ok(()),
            },
        }
    }
}

/// `text` as a YAML double-quoted scalar: printable ASCII as itself, everything else escaped.
fn yaml_quoted(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            ' '..='~' => quoted.push(c),
            _ => quoted.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_yaml_reads_back_as_the_same_string() {
        for text in [
            "",
            "a'b",
            "a\"b\\c",
            "中\u{7f}\u{0}\n\u{feff}\u{10ffff}",
            "{x: [1]}",
        ] {
            let value: String = serde_yaml::from_str(&yaml_quoted(text)).unwrap();
            assert_eq!(value, text);
        }
    }

    #[test]
    fn a_query_comes_through_as_itself_or_escaped() {
        assert!(query_bytes_come_through("a=1&b", "a=1&b"));
        assert!(query_bytes_come_through("a b\r", "a%20b%0D"));
        assert!(!query_bytes_come_through("a b", "a%20b%0D%0A"));
        assert!(!query_bytes_come_through("a b", "a+b"));
        assert!(!query_bytes_come_through("ab", "a"));
    }
}
