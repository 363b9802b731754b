//! The head of a hit, prepared once per object version: the 200 response header with
//! everything that comes from the object's metadata (length, type, ETag, CRC-64,
//! `Last-Modified`, the origin headers it kept) already turned into header values. The memory
//! tier keeps one beside each object it holds, so a hit from memory formats and validates none
//! of them again: it clones the head and adds the per-request headers
//! ([`crate::respond::PreparedHead`]).

use http::{header, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use pingora::Result;

use super::checksum::CRC64_HEADER;
use super::ObjectMeta;
use crate::respond::{base_header, PreparedHead, Reply};

#[derive(Debug, Clone)]
pub struct ObjectHead {
    /// The 200 header without the per-request headers.
    prepared: PreparedHead,
}

impl ObjectHead {
    /// The head for `meta`. Fails only when the stored content type is no valid header value.
    pub fn of(meta: &ObjectMeta) -> Result<ObjectHead> {
        let mut resp = base_header(StatusCode::OK)?;
        resp.insert_header(header::CONTENT_LENGTH, meta.size)?;
        resp.insert_header(header::CONTENT_TYPE, meta.content_type.as_str())?;
        resp.insert_header(header::ETAG, meta.etag_header())?;
        if let Some(crc64) = meta.crc64 {
            resp.insert_header(CRC64_HEADER, crc64.to_string())?;
        }
        resp.insert_header(
            header::LAST_MODIFIED,
            httpdate::fmt_http_date(meta.last_modified_time()),
        )?;
        // What Pingora's range filter adds to a 200; a request without `Range` skips it.
        resp.insert_header(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"))?;
        for (name, value) in &meta.headers {
            // Stored values came from an origin's valid header; skip rather than fail if one is not.
            if let Ok(value) = HeaderValue::from_str(value) {
                resp.insert_header(name.clone(), value)?;
            }
        }
        Ok(ObjectHead {
            prepared: PreparedHead::new(resp),
        })
    }

    /// The 200 header of one request for the object.
    pub fn response(&self, reply: &Reply) -> Result<ResponseHeader> {
        self.prepared.finish(reply, None)
    }
}
