//! What the gate settles in a request head before Pingora parses it, where Pingora would
//! otherwise refuse with a bare 400 (no XML body) or accept what must be refused:
//! - the version: `HTTP/1.x` with x above 1 is served as HTTP/1.1 (RFC 9110 §2.5: a recipient
//!   of a higher minor version answers in the highest it speaks); any other major version is
//!   `505`, as nginx answers;
//! - a raw space inside the request target is `400` (RFC 9112 §3: an invalid request line);
//!   Pingora would percent-encode it and serve a key with a space in it;
//! - an absolute-form target (`GET http://host/key HTTP/1.1`) names the host, and the `Host`
//!   header is ignored (RFC 9112 §3.2.2): its value is replaced by the target's authority,
//!   because Pingora refuses a `Host` that differs from it.
//!
//! A head that is not well formed in other ways is left as it is, for Pingora to refuse.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};

use super::Refusal;

/// Headers per request, as Pingora's parser allows.
const MAX_HEADERS: usize = 256;

/// Checks the request line of `head` (one whole head) and adjusts the head where it is served
/// differently from how it was sent; `Err` when it is answered with an error instead.
pub(super) fn prepare_head(head: &mut BytesMut) -> Result<(), Refusal> {
    let Some(line) = RequestLine::find(head) else {
        return Ok(());
    };
    match line.version {
        Version::One { minor_at } => {
            if head[minor_at] > b'1' {
                head[minor_at] = b'1';
            }
        }
        Version::OtherMajor => return Err(Refusal::UnsupportedVersion),
    }
    let target = &head[line.target.0..line.target.1];
    if memchr::memchr(b' ', target).is_some() {
        return Err(Refusal::SpaceInTarget);
    }
    if !target.starts_with(b"/") {
        use_target_authority_as_host(head, line.target);
    }
    Ok(())
}

/// The parts of a request line that matter here, as offsets into the head.
struct RequestLine {
    /// Between the method and the version (spaces inside it included).
    target: (usize, usize),
    version: Version,
}

enum Version {
    /// `HTTP/1.x`; the offset of x.
    One { minor_at: usize },
    /// `HTTP/D.D` with D other than 1.
    OtherMajor,
}

impl RequestLine {
    /// `None` for a line that has no target and `HTTP/D.D` version: left to Pingora.
    fn find(head: &[u8]) -> Option<RequestLine> {
        // httparse skips empty lines before the request line.
        let start = head.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
        let end = start + memchr::memchr(b'\n', &head[start..])?;
        let line_end = if end > start && head[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        let line = &head[start..line_end];
        let method_end = start + memchr::memchr(b' ', line)?;
        let version_start = start + memchr::memrchr(b' ', line)? + 1;
        if version_start <= method_end + 1 {
            return None;
        }
        let version = match &head[version_start..line_end] {
            [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
                if major.is_ascii_digit() && minor.is_ascii_digit() =>
            {
                if *major == b'1' {
                    Version::One {
                        minor_at: version_start + 7,
                    }
                } else {
                    Version::OtherMajor
                }
            }
            _ => return None,
        };
        Some(RequestLine {
            target: (method_end + 1, version_start - 1),
            version,
        })
    }
}

/// Replaces the value of the head's one `Host` header with the absolute-form target's
/// authority, when the target has a valid `http(s)` authority (Pingora's own classifier, so
/// both agree on where it ends) and the head has exactly one `Host`. Otherwise the head is
/// left for Pingora: it refuses two `Host`s and ambiguous authorities, and a request without
/// `Host` is routed by the target (or, in HTTP/1.1, refused).
fn use_target_authority_as_host(head: &mut BytesMut, target: (usize, usize)) {
    let authority = match raw_target_authority(&head[target.0..target.1]) {
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } if (scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https"))
            && !authority.contains(&b'@')
            && http::uri::Authority::try_from(authority).is_ok() =>
        {
            authority.to_vec()
        }
        _ => return,
    };
    let Some((value_start, value_end)) = single_host_value(head) else {
        return;
    };
    if head[value_start..value_end] == authority[..] {
        return;
    }
    let mut rewritten = BytesMut::with_capacity(head.len() + authority.len());
    rewritten.extend_from_slice(&head[..value_start]);
    rewritten.extend_from_slice(&authority);
    rewritten.extend_from_slice(&head[value_end..]);
    *head = rewritten;
}

/// Where the value of the head's `Host` header lies, if it has exactly one.
fn single_host_value(head: &[u8]) -> Option<(usize, usize)> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    request
        .parse_with_uninit_headers(head, &mut headers)
        .ok()?
        .is_complete()
        .then_some(())?;
    let mut hosts = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = hosts.next()?;
    if hosts.next().is_some() {
        return None;
    }
    // The value is a slice of `head`: its place is its distance from the head's start.
    let start = (host.value.as_ptr() as usize).checked_sub(head.as_ptr() as usize)?;
    let end = start + host.value.len();
    (end <= head.len()).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(head: &str) -> Result<String, Refusal> {
        let mut bytes = BytesMut::from(head);
        prepare_head(&mut bytes).map(|()| String::from_utf8_lossy(&bytes).into_owned())
    }

    #[test]
    fn a_higher_minor_version_is_served_as_http_1_1() {
        let head = "GET /a HTTP/1.2\r\nHost: x\r\n\r\n";
        assert_eq!(
            prepared(head).unwrap(),
            "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        for same in [
            "GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a HTTP/1.0\r\n\r\n",
            "\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a HTTP/1.1\nHost: x\n\n",
            // Not `HTTP/D.D`: Pingora refuses these.
            "GET /a HTTP/1.10\r\n\r\n",
            "GET /a\r\n\r\n",
            "GET\r\n\r\n",
        ] {
            assert_eq!(prepared(same).unwrap(), same);
        }
    }

    #[test]
    fn another_major_version_is_505_and_a_space_inside_the_target_400() {
        for (head, refusal) in [
            (
                "GET /a HTTP/2.0\r\nHost: x\r\n\r\n",
                Refusal::UnsupportedVersion,
            ),
            ("GET /a HTTP/3.0\r\n\r\n", Refusal::UnsupportedVersion),
            ("GET /a HTTP/0.9\r\n\r\n", Refusal::UnsupportedVersion),
            (
                "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
                Refusal::SpaceInTarget,
            ),
            (
                "GET /a  HTTP/1.1\r\nHost: x\r\n\r\n",
                Refusal::SpaceInTarget,
            ),
            ("GET /a?q=1 2 HTTP/1.0\r\n\r\n", Refusal::SpaceInTarget),
        ] {
            assert_eq!(prepared(head), Err(refusal), "{head}");
        }
        assert!(prepared("GET /a%20b HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
    }

    #[test]
    fn an_absolute_form_target_names_the_host() {
        assert_eq!(
            prepared("GET http://b.example/k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX: y\r\n\r\n")
                .unwrap(),
            "GET http://b.example/k HTTP/1.1\r\nHost: b.example\r\nX: y\r\n\r\n"
        );
        for same in [
            // Already the same, or no `Host` at all.
            "GET http://b.example:80/k HTTP/1.1\r\nHost: b.example:80\r\n\r\n",
            "GET http://b.example/k HTTP/1.0\r\n\r\n",
            // Left for Pingora to refuse: two `Host`s, userinfo, another scheme.
            "GET http://b.example/k HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET http://u@b.example/k HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET ftp://b.example/k HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http:/\\b.example/k HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(prepared(same).unwrap(), same);
        }
    }
}
