//! Serving a hit from the bucket: GET and HEAD with the object's stored headers, single byte
//! ranges (206/416), and conditional requests (304 for If-None-Match / If-Modified-Since, 412 for
//! If-Match / If-Unmodified-Since), streamed in fixed-size chunks so memory does not grow with
//! object size. The representation served (stored bytes or an encoded variant) was picked by
//! [`crate::answer::compress`]; validators are the representation's own.

use std::time::SystemTime;

use http::{header, HeaderValue, Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::conditional_filter::{
    not_modified_filter, req_header_as_http_date, to_304,
};
use pingora::{Error, ErrorType, Result};
use pingora_proxy::{range_header_filter, RangeType, Session};

use crate::answer::compress::Representation;
use crate::answer::object_head::ObjectHead;
use crate::answer::respond::{write_error, ErrorCode, Reply};
use crate::edge::connection::send_each_write;
use originpull_store::checksum::CRC64_HEADER;
use originpull_store::StoredObject;

/// Bytes read from the store and written to the client per step.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// How a hit was answered, for the access log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitOutcome {
    /// 200 or 206 (and 416: the object exists, the range does not).
    Served,
    NotModified,
    PreconditionFailed,
}

/// Answers the request from `hit`; returns the outcome and the body bytes written.
pub async fn serve_hit(
    session: &mut Session,
    hit: Representation,
    reply: &Reply,
) -> Result<(HitOutcome, u64)> {
    let Representation {
        mut object,
        encoding,
        varies,
    } = hit;
    let meta = object.meta();
    let (size, last_modified) = (meta.size, meta.last_modified_time());
    let mut resp = ObjectHead::of_object(object.as_ref())?.response(reply)?;
    if let Some(encoding) = encoding {
        // A distinct strong ETag per encoding: each variant's bytes are fixed for the object's
        // version (kept, never remade while kept) and never served in ranges.
        resp.insert_header(header::ETAG, meta.variant_etag_header(encoding.as_str()))?;
        resp.insert_header(header::CONTENT_ENCODING, encoding.as_str())?;
        // The CRC is the stored bytes'; a COS SDK would check it against these other bytes.
        resp.remove_header(CRC64_HEADER);
    }
    if varies {
        resp.append_header("Vary", HeaderValue::from_static("Accept-Encoding"))?;
    }
    let req = session.req_header();

    if precondition_fails(req, &resp, last_modified) {
        let written = write_error(session, ErrorCode::PreconditionFailed, None, reply, &[]).await?;
        return Ok((HitOutcome::PreconditionFailed, written));
    }
    if not_modified_filter(req, &resp) {
        to_304(&mut resp);
        session.write_response_header(Box::new(resp), true).await?;
        return Ok((HitOutcome::NotModified, 0));
    }

    let range = byte_range(req, &mut resp, size)?;

    if encoding.is_some() {
        // Ranges are cut from the stored bytes only (a Range request is never given a variant),
        // so an encoded answer must not invite one.
        resp.remove_header(&header::ACCEPT_RANGES);
    }

    let is_head = req.method == Method::HEAD;
    if is_head || range.is_empty() {
        session.write_response_header(Box::new(resp), true).await?;
        return Ok((HitOutcome::Served, 0));
    }
    if object.is_remote() {
        // Pieces that may keep the client waiting: each goes out as it arrives. A local
        // object's pieces are read at once; its head leaves with the first piece (one send).
        send_each_write(session);
    }
    session.write_response_header(Box::new(resp), false).await?;
    let written = stream_range(session, object.as_mut(), range).await?;
    Ok((HitOutcome::Served, written))
}

/// The bytes of an object of `size` that a request's `Range` asks for, with `resp` turned into
/// the matching 206 or 416 (or left a 200 for the whole object). An empty range means no body.
/// `resp` is the object's head ([`super::object_head::ObjectHead`]), which offers ranges already.
pub fn byte_range(
    req: &RequestHeader,
    resp: &mut ResponseHeader,
    size: u64,
) -> Result<std::ops::Range<u64>> {
    // Pingora's range filter mishandles an empty body; an empty object has no ranges to serve.
    // Allowing at most one range: a multi-range request gets the whole object, as RFC 9110 permits.
    Ok(if size == 0 {
        0..0
    } else if !req.headers.contains_key(header::RANGE) {
        // The filter would only add `Accept-Ranges: bytes`, which an object's head has.
        0..size
    } else {
        match range_header_filter(req, resp, Some(2)) {
            // `bytes=-0` asks for the last zero bytes: Pingora makes it an empty 206, but no
            // byte of it exists, so it is unsatisfiable (RFC 9110 §14.1.2).
            RangeType::Single(r) if r.is_empty() => {
                make_unsatisfiable(resp, size)?;
                0..0
            }
            RangeType::Single(r) => r.start as u64..r.end as u64,
            RangeType::Invalid => 0..0,
            // Unreachable with a limit of 2: Pingora answers several ranges with `None`.
            RangeType::None | RangeType::Multi(_) => 0..size,
        }
    })
}

/// Turns `resp` into the 416 Pingora's range filter writes for an unsatisfiable range: no body,
/// `Content-Range: bytes */SIZE`, and none of the body's headers.
fn make_unsatisfiable(resp: &mut ResponseHeader, size: u64) -> Result<()> {
    resp.set_status(StatusCode::RANGE_NOT_SATISFIABLE)?;
    resp.insert_header(header::CONTENT_LENGTH, 0)?;
    resp.insert_header(header::CONTENT_RANGE, format!("bytes */{size}"))?;
    for name in [
        header::ACCEPT_RANGES,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
    ] {
        resp.remove_header(&name);
    }
    Ok(())
}

/// If-Match (strong comparison with the ETag of `resp`, the representation served) and
/// If-Unmodified-Since, evaluated as RFC 9110 §13.2.2 orders.
fn precondition_fails(
    req: &RequestHeader,
    resp: &ResponseHeader,
    last_modified: SystemTime,
) -> bool {
    let mut if_match = req.headers.get_all(header::IF_MATCH).iter().peekable();
    if if_match.peek().is_some() {
        let etag = resp.headers.get(header::ETAG).and_then(|v| v.to_str().ok());
        let matched = if_match.any(|value| {
            value.to_str().is_ok_and(|list| {
                list.split(',')
                    .map(str::trim)
                    .any(|tag| tag == "*" || Some(tag) == etag)
            })
        });
        return !matched;
    }
    if let Ok(Some(since)) = req_header_as_http_date(req, &header::IF_UNMODIFIED_SINCE) {
        return last_modified > SystemTime::from(since);
    }
    false
}

/// Streams `range` of the object. A short read (the file shrank underneath us) is an error, so
/// the connection is closed instead of a truncated body passing for a whole one.
pub async fn stream_range(
    session: &mut Session,
    object: &mut dyn StoredObject,
    range: std::ops::Range<u64>,
) -> Result<u64> {
    let mut offset = range.start;
    while offset < range.end {
        let want = (range.end - offset).min(CHUNK_BYTES as u64) as usize;
        let chunk = object
            .read_at(offset, want)
            .await
            .map_err(|e| Error::because(ErrorType::InternalError, "reading object", e))?;
        if chunk.is_empty() {
            return Error::e_explain(ErrorType::InternalError, "object ended early");
        }
        offset += chunk.len() as u64;
        session
            .write_response_body(Some(chunk), offset >= range.end)
            .await?;
    }
    Ok(range.end - range.start)
}
