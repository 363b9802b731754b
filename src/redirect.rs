//! The answer to a miss with origin-pull on: `302 Found` to the same object at the origin.
//!
//! `Location` is `http://` + the origin exactly as configured (validated to `host[:port]`) + the
//! key's origin path + `?query` when the request had one. The path and query come out of one
//! encoder each ([`crate::key`]), so no CR, LF or byte the request did not carry can appear.

use bytes::Bytes;
use http::{header, StatusCode};
use pingora::proxy::Session;
use pingora::Result;

use crate::config::OriginAddr;
use crate::key::{safe_query, ObjectKey};
use crate::respond::{response_header, write_complete, Reply};

/// The redirect target for `key` at `origin`.
pub fn location(origin: &OriginAddr, key: &ObjectKey, query: Option<&str>) -> String {
    let path = key.origin_path();
    let mut location = String::with_capacity(7 + origin.authority.len() + path.len() + 16);
    location.push_str("http://");
    location.push_str(&origin.authority);
    location.push_str(&path);
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.push_str(&safe_query(query));
    }
    location
}

/// Writes the 302. `no-store` keeps CDNs and browsers from caching the redirect, which would
/// keep sending clients to the origin after the copy has landed in the bucket.
pub async fn write_redirect(
    session: &mut Session,
    origin: &OriginAddr,
    key: &ObjectKey,
    reply: &Reply,
) -> Result<u64> {
    let target = location(origin, key, session.req_header().uri.query());
    let mut resp = response_header(StatusCode::FOUND, reply)?;
    resp.insert_header(header::LOCATION, target)?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    write_complete(session, resp, Bytes::new()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_origin;

    #[test]
    fn seed_example_is_exact() {
        let origin = parse_origin("abc.example.com").unwrap();
        let key = ObjectKey::from_request_path("/1.jpg").unwrap();
        assert_eq!(
            location(&origin, &key, None),
            "http://abc.example.com/1.jpg"
        );
        assert_eq!(
            location(&origin, &key, Some("v=2")),
            "http://abc.example.com/1.jpg?v=2"
        );
    }

    #[test]
    fn port_and_ipv6_origins_are_kept_as_configured() {
        let key = ObjectKey::from_request_path("/a%20b").unwrap();
        let origin = parse_origin("[::1]:8080").unwrap();
        assert_eq!(location(&origin, &key, Some("")), "http://[::1]:8080/a%20b");
    }

    #[test]
    fn no_header_injection_through_path_or_query() {
        let origin = parse_origin("abc.example.com:8080").unwrap();
        let key = ObjectKey::from_request_path("/x%E2%80%A8y%3F").unwrap();
        let loc = location(&origin, &key, Some("q=\r\nLocation: http://evil"));
        assert!(
            !loc.bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii()),
            "{loc}"
        );
        assert!(loc.starts_with("http://abc.example.com:8080/x%E2%80%A8y%3F?q=%0D%0A"));
    }
}
