//! The properties the request parsers promise for any input, written once as checks: the
//! property tests (`tests/properties.rs`) run them on generated input and the fuzz targets
//! (`fuzz/`) on mutated bytes. Each check takes anything a client could send and returns `Err`
//! with what was broken; an `Err` is a bug in originpull, never in the input. (The key parser's
//! are `originpull_store::properties`, the configuration loader's
//! `originpull_config::properties`.)

use http::{header, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::answer::redirect::location;
use crate::answer::serve::byte_range;
use originpull_config::properties::Violation;
use originpull_config::OriginAddr;
use originpull_store::key::ObjectKey;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_comes_through_as_itself_or_escaped() {
        assert!(query_bytes_come_through("a=1&b", "a=1&b"));
        assert!(query_bytes_come_through("a b\r", "a%20b%0D"));
        assert!(!query_bytes_come_through("a b", "a%20b%0D%0A"));
        assert!(!query_bytes_come_through("a b", "a+b"));
        assert!(!query_bytes_come_through("ab", "a"));
    }
}
