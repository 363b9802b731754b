//! CORS as S3 and COS do it: a request's `Origin` (and, for a preflight, its
//! `Access-Control-Request-Method` and `-Headers`) is matched against the bucket's rules in
//! order, and the first rule that matches decides the headers.
//!
//! [`CorsReply::for_request`] is computed once per routed request and carried in the
//! [`Reply`](crate::answer::respond::Reply) that every response of the request is built from
//! ([`crate::answer::respond::response_header`]), so hits, 304s, 302s and errors all get the same headers
//! from one place. [`super::preflight`] answers `OPTIONS`.
//!
//! A bucket without rules costs one emptiness check per request; a bucket with rules but a
//! request without `Origin` adds one static `Vary` value. Neither allocates.

use http::header::ORIGIN;
use http::{HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

use originpull_config::{CorsRule, WildcardPattern};

/// What CORS adds to every response of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsReply {
    /// The bucket has no CORS rules (or the host matched no bucket): nothing.
    #[default]
    Off,
    /// The bucket has rules, none of which allows this request: `Vary: Origin` only.
    VaryOnly,
    /// A rule allows the request.
    Allowed(Allowed),
}

/// The headers of a rule that allowed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The request's `Origin`, or `*` for a rule that allows every origin.
    allow_origin: HeaderValue,
    expose_headers: Option<HeaderValue>,
}

impl CorsReply {
    /// The CORS headers for a request that is not a preflight: its `Origin` and its own method
    /// must match a rule.
    pub fn for_request(rules: &[CorsRule], req: &RequestHeader) -> CorsReply {
        if rules.is_empty() {
            return CorsReply::Off;
        }
        let Some(origin) = req.headers.get(ORIGIN) else {
            return CorsReply::VaryOnly;
        };
        match first_match(rules, origin.as_bytes(), &req.method, &[]) {
            Some((rule, any_origin)) => CorsReply::Allowed(Allowed::new(rule, origin, any_origin)),
            None => CorsReply::VaryOnly,
        }
    }

    /// Whether a miss of `req` answered with a redirect to the origin would fail in a browser
    /// where an answer from the bucket itself works (`origin_pull.cors_misses`):
    /// - a CORS-mode request (a font, `fetch()`, a module script) from the bucket's own page,
    ///   or from a site the bucket's rules allow: the browser applies CORS to the origin's
    ///   answer, and a plain origin sends no `Access-Control-Allow-Origin` nor answers a
    ///   preflight; a worker's script (mode `same-origin`) may not be redirected at all;
    /// - a stylesheet: redirected, its relative URLs (its fonts) resolve at the origin, where
    ///   they become CORS requests to the origin.
    ///
    /// Over HTTPS a browser says what a request is for in its `Sec-Fetch-*` headers. Over
    /// plain HTTP it sends none: a stylesheet is known by its `Accept: text/css`, a font or a
    /// cross-site `fetch()` by its `Origin`, and a same-origin `fetch()` only by coming from the
    /// bucket's own page (`Referer`) and accepting anything, as scripts do too (those are
    /// mirrored as well, which costs the edge the first body but breaks nothing).
    pub fn redirect_would_fail(&self, req: &RequestHeader) -> bool {
        let header = |name: &str| req.headers.get(name).map(|v| v.as_bytes());
        if let Some(mode) = header("sec-fetch-mode") {
            let same_origin = header("sec-fetch-site") == Some(b"same-origin");
            return match mode {
                b"cors" | b"same-origin" if same_origin => true,
                _ if header("sec-fetch-dest") == Some(b"style") => true,
                _ => matches!(self, CorsReply::Allowed(_)),
            };
        }
        if matches!(self, CorsReply::Allowed(_)) {
            return true;
        }
        let accept = header("accept").unwrap_or_default();
        if accept.starts_with(b"text/css") {
            return true;
        }
        // A same-origin `fetch()`: no `Origin`, no hint but where it comes from. A `Range`
        // request (media) is left to the redirect: mirrored, it would wait for the whole copy.
        accept == b"*/*"
            && !req.headers.contains_key(http::header::RANGE)
            && header("referer").is_some_and(|referer| same_host(referer, header("host")))
    }

    /// Adds the headers to a response. Names are given as static strings: Pingora keeps the
    /// wire case of each name, and copies names it does not know into a new buffer otherwise.
    ///
    /// `Vary: Origin` goes on every response of a bucket with rules, matched or not: a shared
    /// cache (a CDN in front of the bucket) that stored an answer to a request without `Origin`
    /// would otherwise hand it, without `Access-Control-Allow-Origin`, to a browser's CORS
    /// request, or hand one origin's answer to another. S3 sends it only when a rule matched,
    /// which is the known cause of exactly that failure behind CloudFront.
    pub fn apply(&self, resp: &mut ResponseHeader) -> Result<()> {
        match self {
            CorsReply::Off => Ok(()),
            CorsReply::VaryOnly => {
                resp.append_header("Vary", HeaderValue::from_static("Origin"))?;
                Ok(())
            }
            CorsReply::Allowed(allowed) => {
                resp.insert_header("Access-Control-Allow-Origin", allowed.allow_origin.clone())?;
                if allowed.allow_origin != "*" {
                    // As S3 does: a named origin may send cookies; `*` forbids it by definition.
                    resp.insert_header(
                        "Access-Control-Allow-Credentials",
                        HeaderValue::from_static("true"),
                    )?;
                }
                if let Some(expose) = &allowed.expose_headers {
                    resp.insert_header("Access-Control-Expose-Headers", expose.clone())?;
                }
                resp.append_header("Vary", HeaderValue::from_static("Origin"))?;
                Ok(())
            }
        }
    }
}

impl Allowed {
    pub(crate) fn new(rule: &CorsRule, origin: &HeaderValue, any_origin: bool) -> Allowed {
        Allowed {
            allow_origin: if any_origin {
                HeaderValue::from_static("*")
            } else {
                origin.clone()
            },
            expose_headers: rule.expose_headers_value.clone(),
        }
    }
}

/// The first rule allowing `origin`, `method` and every one of `headers` (lower-case), and
/// whether it allowed the origin through a `*` pattern alone.
pub(crate) fn first_match<'r>(
    rules: &'r [CorsRule],
    origin: &[u8],
    method: &Method,
    headers: &[String],
) -> Option<(&'r CorsRule, bool)> {
    rules.iter().find_map(|rule| {
        let pattern = rule
            .allowed_origins
            .iter()
            .find(|p| wildcard_match(p, origin))?;
        let allowed = rule.allowed_methods.contains(method)
            && headers.iter().all(|h| {
                rule.allowed_headers
                    .iter()
                    .any(|p| wildcard_match(p, h.as_bytes()))
            });
        allowed.then_some((rule, pattern.is_any()))
    })
}

/// Case-insensitive match of `text` against a pattern with at most one `*`.
fn wildcard_match(pattern: &WildcardPattern, text: &[u8]) -> bool {
    let prefix = pattern.prefix.as_bytes();
    match &pattern.suffix {
        None => text.eq_ignore_ascii_case(prefix),
        Some(suffix) => {
            let suffix = suffix.as_bytes();
            text.len() >= prefix.len() + suffix.len()
                && text[..prefix.len()].eq_ignore_ascii_case(prefix)
                && text[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// Whether the URL `referer` is at `host` (the request's `Host`, compared as written, ASCII
/// case aside).
fn same_host(referer: &[u8], host: Option<&[u8]>) -> bool {
    let Some(host) = host else { return false };
    let rest = referer
        .strip_prefix(b"http://")
        .or_else(|| referer.strip_prefix(b"https://"));
    let Some(rest) = rest else { return false };
    let authority_end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    rest[..authority_end].eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use originpull_config::Config;

    fn rules(cors: &str) -> Vec<CorsRule> {
        let text = format!(
            "listen: 127.0.0.1:8080\ndata_dir: d\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - name: example-1250000000\n    cors:\n{cors}"
        );
        Config::parse(&text).unwrap().buckets.remove(0).cors
    }

    fn request(method: &str, origin: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/a.js", None).unwrap();
        if let Some(origin) = origin {
            req.insert_header(ORIGIN, origin).unwrap();
        }
        req
    }

    #[test]
    fn one_wildcard_matches_any_run_but_not_across_the_fixed_parts() {
        let r = rules("      - allowed_origins: [\"https://*.example.com\"]\n        allowed_methods: [GET]\n");
        let p = &r[0].allowed_origins[0];
        assert!(wildcard_match(p, b"https://a.example.com"));
        assert!(wildcard_match(p, b"https://a.b.EXAMPLE.com"));
        assert!(!wildcard_match(p, b"https://example.com"));
        assert!(!wildcard_match(p, b"http://a.example.com"));
        assert!(!wildcard_match(p, b"https://a.example.com.evil"));
    }

    #[test]
    fn first_matching_rule_decides_and_method_must_be_allowed() {
        let r = rules(
            "      - allowed_origins: [\"https://a.example.com\"]\n        allowed_methods: [HEAD]\n      - allowed_origins: [\"*\"]\n        allowed_methods: [GET]\n        expose_headers: [ETag]\n",
        );
        let got = CorsReply::for_request(&r, &request("GET", Some("https://a.example.com")));
        let CorsReply::Allowed(allowed) = got else {
            panic!("{got:?}")
        };
        assert_eq!(allowed.allow_origin, "*");
        let got = CorsReply::for_request(&r, &request("HEAD", Some("https://a.example.com")));
        let CorsReply::Allowed(allowed) = got else {
            panic!("{got:?}")
        };
        assert_eq!(allowed.allow_origin, "https://a.example.com");
        assert_eq!(
            CorsReply::for_request(&r, &request("GET", None)),
            CorsReply::VaryOnly
        );
        assert_eq!(
            CorsReply::for_request(&[], &request("GET", Some("https://a.example.com"))),
            CorsReply::Off
        );
    }

    #[test]
    fn preflight_headers_must_all_be_allowed() {
        let r = rules("      - allowed_origins: [\"*\"]\n        allowed_methods: [GET]\n        allowed_headers: [\"x-amz-*\", range]\n");
        let ok = ["range".to_string(), "x-amz-date".to_string()];
        assert!(first_match(&r, b"https://x", &Method::GET, &ok).is_some());
        let bad = ["range".to_string(), "authorization".to_string()];
        assert!(first_match(&r, b"https://x", &Method::GET, &bad).is_none());
        assert!(first_match(&r, b"https://x", &Method::PUT, &[]).is_none());
    }
}
