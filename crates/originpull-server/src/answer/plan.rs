//! Deciding how a request is answered, apart from doing it: plain functions from the request's
//! head, its bucket and what the store and the copy schedule said, to a [`Plan`] that
//! [`super::proxy`] carries out. Each decision is unit-tested here without a socket.
//!
//! Before routing, [`for_challenge`] answers an ACME server validating one of this node's
//! orders, whatever the host. A routed request is then decided in up to three steps (four over
//! plain HTTP), each taken only if the one before asks for it:
//! 0. [`to_https`]: over plain HTTP, the redirect to HTTPS of a bucket with `https_redirect`;
//! 1. [`for_request`]: from the head and the bucket alone: an error, a preflight, a folder's
//!    redirect, or a look-up of a key in the store;
//! 2. [`folder_page`]: a key not stored whose folder's index document might be (`/docs` when
//!    `docs/index.html` is stored): the store is asked for that key, and if it has it the
//!    answer is [`folder_redirect`];
//! 3. [`for_miss`]: a key not in the store: a redirect to the origin (and whether to start a
//!    copy), a mirrored miss, or an error.
//!
//! A `404 NoSuchKey` names the bucket's `website.error_document`, served in its place when it
//! is stored ([`no_such_key`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::{header, HeaderName, Method};
use pingora::http::RequestHeader;

use super::cors::CorsReply;
use super::preflight::is_preflight;
use super::redirect::location;
use super::respond::ErrorCode;
use crate::acme::challenges::{is_challenge_path, Challenges};
use crate::live::bucket::{Bucket, Unaddressed};
use crate::metrics::RequestResult;
use crate::pull::copy::{CopyDecision, CopySource};
use crate::pull::origin::{BucketPull, Origin, PullPolicy};
use originpull_config::PullMode;
use originpull_store::key::{encode_origin_path, safe_query, KeyError, RequestTarget};
use originpull_store::key::{ObjectKey, MAX_KEY_BYTES};

/// `Retry-After` of a 503 while the bucket store is down (it usually returns within seconds).
const STORE_RETRY_AFTER_SECS: &str = "5";

/// How a request is answered.
pub enum Plan<'a> {
    /// An XML error.
    Error(ErrorPlan),
    /// A CORS preflight, answered from the bucket's rules.
    Preflight,
    /// Look the key up in the store; a hit is served, a miss decided by [`for_miss`].
    Lookup {
        key: ObjectKey,
        /// The folder as requested when the key is its index document (`docs/`).
        folder: Option<String>,
    },
    /// A redirect, to the origin or within the bucket.
    Redirect(RedirectPlan<'a>),
    /// A miss fetched from the origin and streamed to the client while it is stored.
    Mirror {
        pull: &'a Arc<BucketPull>,
        policy: &'a PullPolicy,
    },
    /// An ACME HTTP-01 validation: the token's key authorization (RFC 8555 §8.3).
    KeyAuthorization(String),
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPlan {
    pub code: ErrorCode,
    /// Said after the code's message.
    pub detail: Option<Cow<'static, str>>,
    pub result: RequestResult,
    /// A header the answer carries besides the usual ones (`Allow`, `Retry-After`).
    pub extra: Option<(HeaderName, &'static str)>,
    /// Whether the connection is closed after the answer.
    pub close: bool,
    /// The stored object served with the error's status in place of the XML error, when the
    /// store has it (`website.error_document`).
    pub document: Option<ObjectKey>,
}

impl ErrorPlan {
    /// A failure on our side (the store failed otherwise than by being down).
    pub fn internal() -> ErrorPlan {
        ErrorPlan::new(ErrorCode::InternalError, RequestResult::Error)
    }

    pub fn new(code: ErrorCode, result: RequestResult) -> ErrorPlan {
        ErrorPlan {
            code,
            detail: None,
            result,
            extra: None,
            close: false,
            document: None,
        }
    }
}

/// A redirect answer.
pub struct RedirectPlan<'a> {
    pub status: u16,
    pub location: String,
    /// The origin it points at (for the access log); `None` within the bucket.
    pub origin: Option<&'a Arc<Origin>>,
    /// What to do about a copy of the key.
    pub copy: CopyAction,
}

impl fmt::Debug for Plan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plan::Error(e) => f.debug_tuple("Error").field(e).finish(),
            Plan::Preflight => f.write_str("Preflight"),
            Plan::Lookup { key, folder } => f
                .debug_struct("Lookup")
                .field("key", key)
                .field("folder", folder)
                .finish(),
            Plan::Redirect(r) => f.debug_tuple("Redirect").field(r).finish(),
            Plan::Mirror { pull, .. } => write!(f, "Mirror({})", pull.name),
            // The key authorization is a credential of the order: not written out.
            Plan::KeyAuthorization(_) => f.write_str("KeyAuthorization"),
        }
    }
}

impl fmt::Debug for RedirectPlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedirectPlan")
            .field("status", &self.status)
            .field("location", &self.location)
            .field("origin", &self.origin.map(|o| o.label.as_str()))
            .field("copy", &self.copy)
            .finish()
    }
}

/// What a miss's redirect does about copying the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyAction {
    /// Nothing: not a GET (a HEAD asks about the object without wanting it), or a folder.
    None,
    /// Ask for a copy of the key from the origin.
    Start(CopySource),
    /// A copy would not start (one runs, or one failed lately): count it as asking would.
    NoteBlocked(CopyDecision),
}

/// Before routing: the answer to an ACME server's HTTP-01 validation of one of this node's
/// orders, when the path is one of its pending tokens.
pub fn for_challenge(req: &RequestHeader, challenges: &Challenges) -> Option<Plan<'static>> {
    challenges
        .answer(req.uri.path())
        .map(Plan::KeyAuthorization)
}

/// Step 0, over plain HTTP: a bucket with `https_redirect` sends the request to `https://`, same
/// host, path and query, at `https_port` (written only when not 443); never ACME's HTTP-01 path,
/// which must be answered over plain HTTP. `None` without an HTTPS listener.
pub fn to_https<'a>(
    req: &RequestHeader,
    bucket: &Bucket,
    https_port: Option<u16>,
) -> Option<Plan<'a>> {
    let https_port = https_port?;
    if !bucket.config.domains.https_redirect || is_challenge_path(req.uri.path()) {
        return None;
    }
    let host = req
        .uri
        .authority()
        .map(|a| a.host())
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    let path_and_query = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{path_and_query}")
    } else {
        format!("https://{host}:{https_port}{path_and_query}")
    };
    Some(Plan::Redirect(RedirectPlan {
        status: 301,
        location,
        origin: None,
        copy: CopyAction::None,
    }))
}

/// Step 1: what the request's head decides before the store is asked.
pub fn for_request<'a>(req: &RequestHeader, bucket: &'a Bucket) -> Plan<'a> {
    if is_preflight(req) {
        return Plan::Preflight;
    }
    if req.method != Method::GET && req.method != Method::HEAD {
        return Plan::Error(ErrorPlan {
            extra: Some((header::ALLOW, "GET, HEAD")),
            // Pingora would drain a refused upload to reuse the connection; closing is cheaper.
            close: has_body(req),
            ..ErrorPlan::new(ErrorCode::MethodNotAllowed, RequestResult::MethodNotAllowed)
        });
    }
    let index_document = bucket.config.index_document.as_deref();
    match RequestTarget::parse(req.uri.path(), index_document) {
        Ok(RequestTarget::Object { key, folder }) => Plan::Lookup { key, folder },
        Ok(RequestTarget::Folder { path }) => folder_at_origin(req, bucket, &path),
        Err(e) => {
            let (code, detail) = match e {
                KeyError::Invalid(why) => (ErrorCode::InvalidUri, Cow::Borrowed(why)),
                KeyError::TooLong => (
                    ErrorCode::KeyTooLong,
                    Cow::Owned(format!("Keys are at most {MAX_KEY_BYTES} bytes.")),
                ),
            };
            Plan::Error(ErrorPlan {
                detail: Some(detail),
                ..ErrorPlan::new(code, RequestResult::BadRequest)
            })
        }
    }
}

/// The answer to a request addressed to no bucket.
pub fn for_unaddressed(why: Unaddressed) -> ErrorPlan {
    match why {
        Unaddressed::NoSuchBucket => {
            ErrorPlan::new(ErrorCode::NoSuchBucket, RequestResult::NoSuchBucket)
        }
        Unaddressed::NoHost => ErrorPlan {
            detail: Some(Cow::Borrowed(
                "An HTTP/1.1 request must carry a Host header.",
            )),
            ..ErrorPlan::new(ErrorCode::BadRequest, RequestResult::BadRequest)
        },
    }
}

/// A folder without an index document (`/`, `/docs/`): redirected to the same path at the
/// origin and never copied, so an origin's directory listing never becomes an object.
fn folder_at_origin<'a>(req: &RequestHeader, bucket: &'a Bucket, path: &str) -> Plan<'a> {
    let policy = bucket.pull.as_ref().map(|pull| pull.policy_for(path));
    let chosen = policy
        .filter(|p| p.enabled)
        .and_then(|p| Some((p, p.origins.first_choice(path)?)));
    let Some((policy, origin)) = chosen else {
        return Plan::Error(no_such_key(bucket));
    };
    Plan::Redirect(RedirectPlan {
        status: policy.redirect_code,
        location: location(origin.addr(), &policy.origin_path(path), req.uri.query()),
        origin: Some(origin),
        copy: CopyAction::None,
    })
}

/// Step 2: the key of the folder page to look for when `key` is not stored: `<key>/<index>`
/// for a key requested without its slash in a bucket with an index document, while the store
/// answers.
pub fn folder_page(
    bucket: &Bucket,
    key: &ObjectKey,
    folder: Option<&str>,
    store_failed: bool,
) -> Option<ObjectKey> {
    let index = bucket.config.index_document.as_deref()?;
    if folder.is_some() || store_failed {
        return None;
    }
    key.in_folder(index)
}

/// The redirect to a folder's URL (`/docs` → `/docs/`, the query kept) when its page is
/// stored, as S3 and COS static websites answer, so the page's relative links resolve.
pub fn folder_redirect<'a>(req: &RequestHeader, key: &ObjectKey) -> Plan<'a> {
    let mut location = encode_origin_path(&format!("{}/", key.as_str()));
    if let Some(query) = req.uri.query() {
        location.push('?');
        location.push_str(&safe_query(query));
    }
    Plan::Redirect(RedirectPlan {
        status: 302,
        location,
        origin: None,
        copy: CopyAction::None,
    })
}

/// Step 3: a key the store does not have (or could not say, `store_failed`).
/// `copy_blocked` is why a copy of the key would not start now, if it would not; `cors` the
/// request's CORS answer.
pub fn for_miss<'a>(
    req: &RequestHeader,
    bucket: &'a Bucket,
    key: &ObjectKey,
    folder: Option<String>,
    store_failed: bool,
    copy_blocked: Option<CopyDecision>,
    cors: &CorsReply,
) -> Plan<'a> {
    let pulled = bucket
        .pull
        .as_ref()
        .map(|pull| (pull, pull.policy_for(key.as_str())))
        .filter(|(_, policy)| policy.enabled);
    let Some((pull, policy)) = pulled else {
        if store_failed {
            return Plan::Error(ErrorPlan {
                extra: Some((header::RETRY_AFTER, STORE_RETRY_AFTER_SECS)),
                ..ErrorPlan::new(ErrorCode::ServiceUnavailable, RequestResult::Error)
            });
        }
        return Plan::Error(no_such_key(bucket));
    };
    // A browser would fail through the redirect (fonts, fetch(), stylesheets of the bucket's
    // pages): the miss is mirrored instead.
    let browser_needs_it = policy.cors_misses == PullMode::Mirror && cors.redirect_would_fail(req);
    if policy.mode == PullMode::Mirror || browser_needs_it {
        return Plan::Mirror { pull, policy };
    }
    let Some(origin) = policy.origins.first_choice(key.as_str()) else {
        return Plan::Error(no_such_key(bucket));
    };
    let query = req.uri.query();
    let copy = match copy_blocked {
        _ if req.method != Method::GET => CopyAction::None,
        Some(blocked) => CopyAction::NoteBlocked(blocked),
        None => CopyAction::Start(CopySource {
            query: query.map(str::to_string),
            revalidate: None,
            folder: folder.clone(),
        }),
    };
    let source = folder.as_deref().unwrap_or(key.as_str());
    Plan::Redirect(RedirectPlan {
        status: policy.redirect_code,
        location: location(origin.addr(), &policy.origin_path(source), query),
        origin: Some(origin),
        copy,
    })
}

/// `404 NoSuchKey`, with the bucket's error document when it has one.
pub fn no_such_key(bucket: &Bucket) -> ErrorPlan {
    let document = bucket.config.error_document.as_deref();
    ErrorPlan {
        document: document.and_then(|key| ObjectKey::from_stored(key).ok()),
        ..ErrorPlan::new(ErrorCode::NoSuchKey, RequestResult::NotFound)
    }
}

fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::bucket::Routes;
    use originpull_config::Config;

    fn routes(buckets: &str) -> Routes {
        let text = format!(
            "listen: 127.0.0.1:8080\ndata_dir: d\ndomain_suffix: file.myqcloud.com\nbuckets:\n{buckets}"
        );
        Routes::new(&Config::parse(&text).unwrap()).unwrap()
    }

    fn pulling(extra: &str) -> Routes {
        routes(&format!(
            "  - name: b-1\n    origin_pull:\n      enabled: true\n      origin: o.example\n{extra}"
        ))
    }

    fn bucket(routes: &Routes) -> &Arc<Bucket> {
        routes.buckets().next().unwrap()
    }

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        for (name, value) in headers {
            req.insert_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn key(k: &str) -> ObjectKey {
        ObjectKey::from_request_path(&format!("/{k}")).unwrap()
    }

    fn error_code(plan: &Plan<'_>) -> Option<ErrorCode> {
        match plan {
            Plan::Error(e) => Some(e.code),
            _ => None,
        }
    }

    #[test]
    fn the_head_decides_methods_preflights_bad_keys_and_folders() {
        let r = pulling("");
        let b = bucket(&r);
        let put = for_request(&request("PUT", "/a", &[("content-length", "3")]), b);
        match &put {
            Plan::Error(e) => {
                assert_eq!(e.code, ErrorCode::MethodNotAllowed);
                assert_eq!(e.extra, Some((header::ALLOW, "GET, HEAD")));
                assert!(e.close, "an upload is not drained");
            }
            other => panic!("{other:?}"),
        }
        let options = request("OPTIONS", "/a", &[("origin", "https://a.example")]);
        assert!(matches!(for_request(&options, b), Plan::Preflight));
        let bad = for_request(&request("GET", "/a/../b", &[]), b);
        assert_eq!(error_code(&bad), Some(ErrorCode::InvalidUri));
        let long = format!("/{}", "k".repeat(MAX_KEY_BYTES + 1));
        assert_eq!(
            error_code(&for_request(&request("GET", &long, &[]), b)),
            Some(ErrorCode::KeyTooLong)
        );
        match for_request(&request("GET", "/docs/?x=1", &[]), b) {
            Plan::Redirect(r) => {
                assert_eq!(r.status, 302);
                assert_eq!(r.location, "http://o.example/docs/?x=1");
                assert_eq!(r.copy, CopyAction::None, "a folder is never copied");
            }
            other => panic!("{other:?}"),
        }
        match for_request(&request("HEAD", "/a%20b", &[]), b) {
            Plan::Lookup { key, folder } => {
                assert_eq!(key.as_str(), "a b");
                assert_eq!(folder, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_miss_is_redirected_and_copied_once_and_a_head_is_not_copied() {
        let r = pulling("");
        let b = bucket(&r);
        let get = request("GET", "/a.jpg?v=2", &[]);
        match for_miss(&get, b, &key("a.jpg"), None, false, None, &CorsReply::Off) {
            Plan::Redirect(r) => {
                assert_eq!(r.location, "http://o.example/a.jpg?v=2");
                match r.copy {
                    CopyAction::Start(source) => assert_eq!(source.query.as_deref(), Some("v=2")),
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        let blocked = Some(CopyDecision::RecentlyFailed);
        match for_miss(
            &get,
            b,
            &key("a.jpg"),
            None,
            false,
            blocked,
            &CorsReply::Off,
        ) {
            Plan::Redirect(r) => assert_eq!(
                r.copy,
                CopyAction::NoteBlocked(CopyDecision::RecentlyFailed)
            ),
            other => panic!("{other:?}"),
        }
        let head = request("HEAD", "/a.jpg", &[]);
        match for_miss(&head, b, &key("a.jpg"), None, false, None, &CorsReply::Off) {
            Plan::Redirect(r) => assert_eq!(r.copy, CopyAction::None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_origin_pull_a_miss_is_404_or_503_while_the_store_fails() {
        let r = routes("  - name: b-1\n");
        let b = bucket(&r);
        let get = request("GET", "/a", &[]);
        let miss = for_miss(&get, b, &key("a"), None, false, None, &CorsReply::Off);
        assert_eq!(error_code(&miss), Some(ErrorCode::NoSuchKey));
        match for_miss(&get, b, &key("a"), None, true, None, &CorsReply::Off) {
            Plan::Error(e) => {
                assert_eq!(e.code, ErrorCode::ServiceUnavailable);
                assert_eq!(e.extra, Some((header::RETRY_AFTER, "5")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stylesheet_or_font_of_the_buckets_page_is_mirrored_unless_told_not_to() {
        let host = "b-1.file.myqcloud.com";
        let css = request(
            "GET",
            "/site.css",
            &[("host", host), ("accept", "text/css,*/*;q=0.1")],
        );
        let image = request("GET", "/a.png", &[("host", host), ("accept", "image/png")]);
        let r = pulling("");
        let b = bucket(&r);
        let plan = |req| for_miss(req, b, &key("k"), None, false, None, &CorsReply::Off);
        assert!(matches!(plan(&css), Plan::Mirror { .. }));
        assert!(matches!(plan(&image), Plan::Redirect(_)));
        let r = pulling("      cors_misses: redirect\n");
        let b = bucket(&r);
        let plan = for_miss(&css, b, &key("k"), None, false, None, &CorsReply::Off);
        assert!(matches!(plan, Plan::Redirect(_)));
        let r = pulling("      mode: mirror\n");
        let b = bucket(&r);
        let plan = for_miss(&image, b, &key("k"), None, false, None, &CorsReply::Off);
        assert!(matches!(plan, Plan::Mirror { .. }));
    }

    #[test]
    fn a_key_without_its_slash_looks_for_its_folder_page() {
        let r = routes("  - name: b-1\n    website:\n      index_document: index.html\n");
        let b = bucket(&r);
        let page = folder_page(b, &key("docs"), None, false).unwrap();
        assert_eq!(page.as_str(), "docs/index.html");
        assert_eq!(folder_page(b, &key("docs"), Some("docs/"), false), None);
        assert_eq!(folder_page(b, &key("docs"), None, true), None);
        match folder_redirect(&request("GET", "/docs?lang=en", &[]), &key("docs")) {
            Plan::Redirect(r) => {
                assert_eq!((r.status, r.location.as_str()), (302, "/docs/?lang=en"));
                assert!(r.origin.is_none());
            }
            other => panic!("{other:?}"),
        }
        let r = routes("  - name: b-1\n");
        assert_eq!(folder_page(bucket(&r), &key("docs"), None, false), None);
    }

    #[test]
    fn plain_http_goes_to_https_where_the_bucket_asks_but_never_an_acme_challenge() {
        let text = "listen: 127.0.0.1:8080\ndata_dir: d\ndomain_suffix: file.myqcloud.com\nhttps:\n  listen: 127.0.0.1:8443\n  certificates:\n    - {cert_file: c.pem, key_file: c.key}\nbuckets:\n  - name: b-1\n    domains: [static.shop.example]\n    https_redirect: true\n";
        let r = Routes::new(&Config::parse(text).unwrap()).unwrap();
        let b = bucket(&r);
        let get = request("GET", "/a.txt?x=1", &[("host", "static.shop.example:8080")]);
        let location = |port| match to_https(&get, b, Some(port)) {
            Some(Plan::Redirect(r)) => (r.status, r.location),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            location(8443),
            (
                301,
                "https://static.shop.example:8443/a.txt?x=1".to_string()
            )
        );
        assert_eq!(
            location(443),
            (301, "https://static.shop.example/a.txt?x=1".to_string())
        );
        let challenge = request("GET", "/.well-known/acme-challenge/t", &[("host", "h")]);
        assert!(to_https(&challenge, b, Some(8443)).is_none());
        assert!(to_https(&get, b, None).is_none());
        assert!(to_https(&get, bucket(&pulling("")), Some(8443)).is_none());
    }

    #[test]
    fn a_missing_key_names_the_error_document_of_its_bucket() {
        let r = routes("  - name: b-1\n    website:\n      error_document: errors/404.html\n");
        let get = request("GET", "/a", &[]);
        match for_miss(
            &get,
            bucket(&r),
            &key("a"),
            None,
            false,
            None,
            &CorsReply::Off,
        ) {
            Plan::Error(e) => {
                assert_eq!(e.code, ErrorCode::NoSuchKey);
                let document = e.document.as_ref().map(ObjectKey::as_str);
                assert_eq!(document, Some("errors/404.html"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(no_such_key(bucket(&pulling(""))).document, None);
    }

    #[test]
    fn no_host_is_400_and_an_unknown_host_404() {
        assert_eq!(
            for_unaddressed(Unaddressed::NoHost).code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            for_unaddressed(Unaddressed::NoSuchBucket).result,
            RequestResult::NoSuchBucket
        );
    }
}
