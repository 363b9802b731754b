//! A CORS preflight (`OPTIONS` with `Origin`) answered from the bucket's rules ([`super::cors`]
//! matches them), as S3 and COS answer it.

use http::header::{ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN};
use http::{Method, StatusCode};
use pingora::http::RequestHeader;
use pingora::Result;
use pingora_proxy::Session;

use super::cors::{first_match, Allowed, CorsReply};
use super::respond::{response_header, write_complete, write_error, ErrorCode, Reply};
use crate::metrics::RequestResult;
use originpull_config::CorsRule;

/// An `OPTIONS` with an `Origin`: a browser's preflight. An `OPTIONS` without one is no CORS
/// request and gets the 405 of any other method.
pub fn is_preflight(req: &RequestHeader) -> bool {
    req.method == Method::OPTIONS && req.headers.contains_key(ORIGIN)
}

/// Answers a preflight ([`is_preflight`]): `200` with the rule's methods, the requested headers
/// and its max age and no body when a rule allows it; `403 AccessForbidden` (S3's
/// CORSResponse) when none does or the bucket has no rules; `400 BadRequest` without a valid
/// `Access-Control-Request-Method`, as S3 answers.
pub async fn answer_preflight(
    session: &mut Session,
    rules: &[CorsRule],
    reply: &mut Reply,
) -> Result<(RequestResult, u64)> {
    let req = session.req_header();
    let origin = req.headers.get(ORIGIN).cloned();
    let method = req
        .headers
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let (Some(origin), Some(method)) = (origin, method) else {
        let detail =
            "Insufficient information. Access-Control-Request-Method request header needed.";
        let n = write_error(session, ErrorCode::BadRequest, Some(detail), reply, &[]).await?;
        return Ok((RequestResult::BadRequest, n));
    };
    let requested: Vec<String> = req
        .headers
        .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();

    let matched = first_match(rules, origin.as_bytes(), &method, &requested);
    let Some((rule, any_origin)) = matched else {
        let detail = if rules.is_empty() {
            "CORS is not enabled for this bucket."
        } else {
            "This CORS request is not allowed. This is usually because the evaluation of Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers are not allowed by the resource's CORS spec."
        };
        let n = write_error(
            session,
            ErrorCode::AccessForbidden,
            Some(detail),
            reply,
            &[],
        )
        .await?;
        return Ok((RequestResult::CorsForbidden, n));
    };

    reply.cors = CorsReply::Allowed(Allowed::new(rule, &origin, any_origin));
    let mut resp = response_header(StatusCode::OK, reply)?;
    resp.insert_header(
        "Access-Control-Allow-Methods",
        rule.allow_methods_value.clone(),
    )?;
    if !requested.is_empty() {
        resp.insert_header("Access-Control-Allow-Headers", requested.join(", "))?;
    }
    if let Some(max_age) = &rule.max_age_value {
        resp.insert_header("Access-Control-Max-Age", max_age.clone())?;
    }
    // The answer also depends on what the preflight asked for.
    resp.append_header(
        "Vary",
        "Access-Control-Request-Method, Access-Control-Request-Headers",
    )?;
    let n = write_complete(session, resp, bytes::Bytes::new()).await?;
    Ok((RequestResult::Preflight, n))
}
