//! The answer to a miss with origin-pull on: a redirect (302 unless `redirect_code` says
//! otherwise) to the same object at the origin chosen for the key.
//!
//! `Location` is the origin's `scheme://authority` (validated `host[:port]`, the port only when
//! not the scheme's default) + the path asked of the origin (encoded by [`crate::key`]) +
//! `?query` when the request had one. Nothing else reaches it, so no CR, LF or byte the
//! configuration and request did not carry can appear.

use std::sync::LazyLock;

use http::{header, HeaderValue, StatusCode};
use pingora::ErrorType::InternalError;
use pingora::{OrErr, Result};
use pingora_proxy::Session;

use crate::answer::respond::{base_header, PreparedHead, Reply};
use originpull_config::OriginAddr;
use originpull_store::key::safe_query;

/// The redirect target for `origin_path` (already encoded, with its leading `/`) at `origin`.
pub fn location(origin: &OriginAddr, origin_path: &str, query: Option<&str>) -> String {
    let scheme = origin.protocol.as_str();
    let mut location =
        String::with_capacity(scheme.len() + 3 + origin.authority.len() + origin_path.len() + 16);
    location.push_str(scheme);
    location.push_str("://");
    location.push_str(&origin.authority);
    location.push_str(origin_path);
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.push_str(&safe_query(query));
    }
    location
}

/// Writes the redirect. `no-store` keeps CDNs and browsers from caching it, which would keep
/// sending clients to the origin after the copy has landed in the bucket.
pub async fn write_redirect(
    session: &mut Session,
    status: u16,
    location: String,
    reply: &Reply,
) -> Result<u64> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    // Built from the configuration and the request's encoded path and query: always valid.
    let location = HeaderValue::try_from(location)
        .or_err(InternalError, "redirect Location is no header value")?;
    let location = Some((header::LOCATION, location));
    let resp = match PREPARED.iter().find(|head| head.status() == status) {
        Some(head) => head.finish(reply, location)?,
        None => prepare(status)?.finish(reply, location)?,
    };
    session.write_response_header(Box::new(resp), true).await?;
    Ok(0)
}

/// The headers of a redirect that are the same on every request, per status: built once, so a
/// redirect adds only `Date`, its request id, CORS and `Location`.
static PREPARED: LazyLock<Vec<PreparedHead>> = LazyLock::new(|| {
    [301, 302, 303, 307, 308]
        .into_iter()
        .filter_map(|code| StatusCode::from_u16(code).ok())
        .filter_map(|status| prepare(status).ok())
        .collect()
});

fn prepare(status: StatusCode) -> Result<PreparedHead> {
    let mut resp = base_header(status)?;
    resp.insert_header(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))?;
    resp.insert_header(header::CONTENT_LENGTH, HeaderValue::from_static("0"))?;
    Ok(PreparedHead::new(resp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use originpull_config::{parse_origin, parse_origin_with, Protocol};
    use originpull_store::key::ObjectKey;

    fn path(p: &str) -> String {
        ObjectKey::from_request_path(p).unwrap().origin_path()
    }

    #[test]
    fn seed_example_is_exact() {
        let origin = parse_origin("abc.example.com").unwrap();
        assert_eq!(
            location(&origin, &path("/1.jpg"), None),
            "http://abc.example.com/1.jpg"
        );
        assert_eq!(
            location(&origin, &path("/1.jpg"), Some("v=2")),
            "http://abc.example.com/1.jpg?v=2"
        );
    }

    #[test]
    fn https_origins_use_their_scheme_and_drop_the_default_port() {
        let origin = parse_origin_with("abc.example.com:443", Protocol::Https).unwrap();
        assert_eq!(
            location(&origin, &path("/1.jpg"), None),
            "https://abc.example.com/1.jpg"
        );
        let origin = parse_origin_with("abc.example.com:8443", Protocol::Https).unwrap();
        assert_eq!(
            location(&origin, &path("/1.jpg"), None),
            "https://abc.example.com:8443/1.jpg"
        );
        let origin = parse_origin("abc.example.com:80").unwrap();
        assert_eq!(
            location(&origin, &path("/1.jpg"), None),
            "http://abc.example.com/1.jpg"
        );
    }

    #[test]
    fn port_and_ipv6_origins_are_kept() {
        let origin = parse_origin("[::1]:8080").unwrap();
        assert_eq!(
            location(&origin, &path("/a%20b"), Some("")),
            "http://[::1]:8080/a%20b"
        );
    }

    #[test]
    fn no_header_injection_through_path_or_query() {
        let origin = parse_origin("abc.example.com:8080").unwrap();
        let loc = location(
            &origin,
            &path("/x%E2%80%A8y%3F"),
            Some("q=\r\nLocation: http://evil"),
        );
        assert!(
            !loc.bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii()),
            "{loc}"
        );
        assert!(loc.starts_with("http://abc.example.com:8080/x%E2%80%A8y%3F?q=%0D%0A"));
    }
}
