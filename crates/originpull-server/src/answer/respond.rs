//! Writing responses: the one S3/COS-style XML error builder and the one header policy that
//! every response originpull writes passes through (`Server`, `Date`, request id, the request's
//! CORS headers, `Strict-Transport-Security` over HTTPS where the bucket asks for it, an exact
//! `Content-Length`; a 304 carries none).
//!
//! Responses carry a `Content-Length` because without it Pingora's HTTP/1 writer falls back to
//! chunked encoding and flushes each write, and `respond_error` would turn keep-alive off.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use pingora::Result;
use pingora_proxy::Session;

use crate::answer::cors::CorsReply;
use crate::edge::connection::{Refusal, RefusalResponse};

/// S3/COS error codes originpull answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NoSuchBucket,
    NoSuchKey,
    InvalidUri,
    KeyTooLong,
    MethodNotAllowed,
    PreconditionFailed,
    RequestHeaderSectionTooLarge,
    InternalError,
    /// Mirror mode: the origin failed (5xx, unreachable, TLS, a cut-off answer).
    BadGateway,
    /// Mirror mode: the origin did not answer in time.
    GatewayTimeout,
    BadRequest,
    AccessForbidden,
    /// Mirror mode: the origin refused the object (401 or 403).
    AccessDenied,
    /// The bucket store (S3 backend) failed and origin-pull cannot stand in for it.
    ServiceUnavailable,
    /// A request line with an HTTP major version other than 1.
    HttpVersionNotSupported,
    /// HTTP/2: the connection's certificate does not cover the request's `:authority`.
    MisdirectedRequest,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::NoSuchBucket | ErrorCode::NoSuchKey => StatusCode::NOT_FOUND,
            ErrorCode::InvalidUri | ErrorCode::KeyTooLong | ErrorCode::BadRequest => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::AccessForbidden | ErrorCode::AccessDenied => StatusCode::FORBIDDEN,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ErrorCode::RequestHeaderSectionTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorCode::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::HttpVersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ErrorCode::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::NoSuchBucket => "NoSuchBucket",
            ErrorCode::NoSuchKey => "NoSuchKey",
            ErrorCode::InvalidUri => "InvalidURI",
            ErrorCode::KeyTooLong => "KeyTooLongError",
            ErrorCode::MethodNotAllowed => "MethodNotAllowed",
            ErrorCode::PreconditionFailed => "PreconditionFailed",
            ErrorCode::RequestHeaderSectionTooLarge => "RequestHeaderSectionTooLarge",
            ErrorCode::InternalError => "InternalError",
            ErrorCode::BadGateway => "BadGateway",
            ErrorCode::GatewayTimeout => "GatewayTimeout",
            ErrorCode::BadRequest => "BadRequest",
            ErrorCode::AccessForbidden => "AccessForbidden",
            ErrorCode::AccessDenied => "AccessDenied",
            ErrorCode::ServiceUnavailable => "ServiceUnavailable",
            ErrorCode::HttpVersionNotSupported => "HttpVersionNotSupported",
            ErrorCode::MisdirectedRequest => "MisdirectedRequest",
        }
    }

    fn default_message(self) -> &'static str {
        match self {
            ErrorCode::NoSuchBucket => "The specified bucket does not exist.",
            ErrorCode::NoSuchKey => "The specified key does not exist.",
            ErrorCode::InvalidUri => "Couldn't parse the specified URI.",
            ErrorCode::KeyTooLong => "Your key is too long.",
            ErrorCode::MethodNotAllowed => {
                "The specified method is not allowed against this resource."
            }
            ErrorCode::PreconditionFailed => {
                "At least one of the preconditions you specified did not hold."
            }
            ErrorCode::RequestHeaderSectionTooLarge => {
                "Your request header section exceeds the maximum allowed size."
            }
            ErrorCode::InternalError => "We encountered an internal error. Please try again.",
            ErrorCode::BadGateway => "The origin of this bucket failed to provide the object.",
            ErrorCode::GatewayTimeout => "The origin of this bucket did not answer in time.",
            ErrorCode::BadRequest => "The request is not valid.",
            // S3 words every CORS refusal this way, with the reason after it.
            ErrorCode::AccessForbidden => "CORSResponse:",
            ErrorCode::AccessDenied => "Access Denied.",
            ErrorCode::ServiceUnavailable => "The bucket's store is unavailable. Please try again.",
            ErrorCode::HttpVersionNotSupported => {
                "The HTTP version of the request is not supported."
            }
            ErrorCode::MisdirectedRequest => {
                "This connection's certificate does not cover the requested host; open a new connection for it."
            }
        }
    }
}

/// The XML body of an error, in the shape S3 and COS use.
pub fn error_xml(
    code: ErrorCode,
    detail: Option<&str>,
    resource: &str,
    request_id: &str,
) -> String {
    let message = match detail {
        Some(d) => format!("{} {d}", code.default_message()),
        None => code.default_message().to_string(),
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><Resource>{}</Resource><RequestId>{}</RequestId></Error>\n",
        code.code(),
        xml_escape(&message),
        xml_escape(resource),
        xml_escape(request_id),
    )
}

/// Escapes text for XML content; characters XML 1.0 cannot carry at all are replaced.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

pub use crate::pull::copy::transfer::REQUEST_ID_HEADER;
const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// One request's id: 16 random hex digits, kept as the header value it is sent as, so each
/// response copies a reference instead of formatting it again.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// A new random id, for `x-originpull-request-id` and the access log.
    pub fn new() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = rand::random::<u64>();
        let mut digits = [0u8; 16];
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        // Hex digits are always a valid header value.
        RequestId(
            HeaderValue::from_bytes(&digits)
                .unwrap_or_else(|_| HeaderValue::from_static("0000000000000000")),
        )
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Default for RequestId {
    fn default() -> RequestId {
        RequestId::new()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every response to one request carries besides its own headers: the request id, the
/// CORS headers and HSTS, decided once after routing.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub request_id: RequestId,
    pub cors: CorsReply,
    /// `Strict-Transport-Security` of an HTTPS answer of a bucket with `hsts_max_age_secs`.
    pub hsts: Option<HeaderValue>,
}

impl Reply {
    pub fn new(request_id: RequestId) -> Reply {
        Reply {
            request_id,
            cors: CorsReply::Off,
            hsts: None,
        }
    }

    /// Every response carries `Strict-Transport-Security: max-age=<secs>` (none for 0).
    pub fn set_hsts(&mut self, max_age_secs: u64) {
        // Digits after `max-age=` are always a valid header value.
        self.hsts = (max_age_secs > 0).then(|| {
            HeaderValue::from_str(&format!("max-age={max_age_secs}"))
                .unwrap_or(HeaderValue::from_static("max-age=0"))
        });
    }

    /// The per-request headers after the request id: CORS, then HSTS.
    fn apply(&self, resp: &mut ResponseHeader) -> Result<()> {
        self.cors.apply(resp)?;
        if let Some(hsts) = &self.hsts {
            resp.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
        }
        Ok(())
    }
}

/// The start of every originpull response: its status and `Server`. A head prepared ahead of
/// its requests (an object's, [`super::object_head::ObjectHead`], or a redirect's) starts here and
/// becomes a [`PreparedHead`].
pub fn base_header(status: StatusCode) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(12))?;
    resp.insert_header(header::SERVER, HeaderValue::from_static("originpull"))?;
    Ok(resp)
}

/// Adds what every response carries that differs per request: the request id and the
/// request's CORS headers. (`Date` is added by Pingora's HTTP/1 writer to every response it
/// writes; a response written without it must add its own.)
pub fn finish_header(resp: &mut ResponseHeader, reply: &Reply) -> Result<()> {
    resp.insert_header(REQUEST_ID_HEADER, reply.request_id.0.clone())?;
    reply.apply(resp)
}

/// A response head built ahead of its requests, kept as plain `http` parts: each use clones
/// them and adds its per-request headers straight into the header map, where a Pingora
/// header would clone and grow its header-case map too, and parse and copy each added name.
/// The names go on the wire as Pingora writes them without a case map, the same bytes here:
/// standard names in their usual case, others in lower case as originpull writes them.
#[derive(Debug, Clone)]
pub struct PreparedHead(http::response::Parts);

impl PreparedHead {
    pub fn new(resp: ResponseHeader) -> PreparedHead {
        PreparedHead(resp.into())
    }

    /// The head for one request: the request id, then `extra` (a redirect's `Location`), then
    /// the request's CORS headers, as [`finish_header`] adds them to a header built per request.
    pub fn finish(
        &self,
        reply: &Reply,
        extra: Option<(HeaderName, HeaderValue)>,
    ) -> Result<ResponseHeader> {
        let mut parts = self.0.clone();
        parts
            .headers
            .insert(REQUEST_ID_NAME, reply.request_id.0.clone());
        if let Some((name, value)) = extra {
            parts.headers.insert(name, value);
        }
        let mut resp = ResponseHeader::from(parts);
        reply.apply(&mut resp)?;
        Ok(resp)
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }
}

/// A response header with the headers every originpull response carries.
pub fn response_header(status: StatusCode, reply: &Reply) -> Result<ResponseHeader> {
    let mut resp = base_header(status)?;
    finish_header(&mut resp, reply)?;
    Ok(resp)
}

/// Writes a complete response with a small in-memory body (or none for HEAD). Returns the
/// number of body bytes written.
pub async fn write_complete(
    session: &mut Session,
    mut resp: ResponseHeader,
    body: Bytes,
) -> Result<u64> {
    let is_head = session.req_header().method == http::Method::HEAD;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    if is_head || body.is_empty() {
        session.write_response_header(Box::new(resp), true).await?;
        return Ok(0);
    }
    let len = body.len() as u64;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(len)
}

/// Writes an XML error response. `extra` headers (e.g. `Allow`) are added after the policy's.
pub async fn write_error(
    session: &mut Session,
    code: ErrorCode,
    detail: Option<&str>,
    reply: &Reply,
    extra: &[(http::HeaderName, &str)],
) -> Result<u64> {
    let resource = session.req_header().uri.path().to_string();
    let mut resp = response_header(code.status(), reply)?;
    resp.insert_header(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    )?;
    for (name, value) in extra {
        resp.insert_header(name.clone(), *value)?;
    }
    let body = error_xml(code, detail, &resource, reply.request_id.as_str());
    write_complete(session, resp, Bytes::from(body)).await
}

/// The response to a request the connection gate refused before it was parsed: the XML error
/// and the common headers (no bucket is known: no CORS); the gate adds the framing headers.
pub fn refusal_response(refusal: Refusal, resource: &str) -> RefusalResponse {
    let (code, detail) = match refusal {
        Refusal::HeadTooLarge => (ErrorCode::RequestHeaderSectionTooLarge, None),
        Refusal::UnsupportedVersion => (
            ErrorCode::HttpVersionNotSupported,
            Some("Only HTTP/1.0 and HTTP/1.1 are served over HTTP/1."),
        ),
        Refusal::SpaceInTarget => (
            ErrorCode::InvalidUri,
            Some("The request target holds a space; send it as %20."),
        ),
        Refusal::Misdirected => (ErrorCode::MisdirectedRequest, None),
    };
    let request_id = RequestId::new();
    let body = error_xml(code, detail, resource, request_id.as_str());
    RefusalResponse {
        status: code.status(),
        headers: vec![
            ("Server", HeaderValue::from_static("originpull")),
            (REQUEST_ID_HEADER, request_id.0.clone()),
            ("Content-Type", HeaderValue::from_static("application/xml")),
        ],
        body: Bytes::from(body),
        request_id: request_id.as_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_xml_has_s3_shape_and_escapes() {
        let xml = error_xml(ErrorCode::NoSuchKey, None, "/a<b>&\u{1}", "rid");
        assert!(xml.starts_with(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>"
        ));
        assert!(xml.contains("<Resource>/a&lt;b&gt;&amp;\u{fffd}</Resource>"));
        assert!(xml.contains("<RequestId>rid</RequestId>"));
    }
}
