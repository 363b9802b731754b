//! The head of a hit, prepared once per object version where the store keeps the object between
//! requests: the 200 response header with everything that comes from the object's metadata
//! (length, type, ETag, CRC-64, `Last-Modified`, the origin headers it kept) already turned into
//! header values, and whether its compressed variants may be served. The memory tier keeps it in
//! the object's derived slot ([`originpull_store::Derived`]), so a hit from memory formats and
//! validates none of it again: it clones the head and adds the per-request headers
//! ([`super::respond::PreparedHead`]).

use std::borrow::Cow;

use http::{header, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use pingora::Result;

use super::compressible::is_compressible;
use super::respond::{base_header, PreparedHead, Reply};
use originpull_store::checksum::CRC64_HEADER;
use originpull_store::{ObjectMeta, StoredObject};

#[derive(Debug, Clone)]
pub struct ObjectHead {
    /// The 200 header without the per-request headers.
    prepared: PreparedHead,
    /// [`is_compressible`] of the object.
    compressible: bool,
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
            compressible: is_compressible(meta),
        })
    }

    /// The head of `object`'s hits: kept in the store's slot for this version when it has one
    /// (the memory tier, a file the disk store keeps open), else made now.
    pub fn of_object(object: &dyn StoredObject) -> Result<Cow<'_, ObjectHead>> {
        let meta = object.meta();
        let kept = object
            .derived()
            .and_then(|slot| slot.get_or_init(|| ObjectHead::of(meta).ok()))
            .and_then(Option::as_ref);
        match kept {
            Some(head) => Ok(Cow::Borrowed(head)),
            // Not kept, or not valid (then each hit fails as it would from the store).
            None => ObjectHead::of(meta).map(Cow::Owned),
        }
    }

    /// The 200 header of one request for the object.
    pub fn response(&self, reply: &Reply) -> Result<ResponseHeader> {
        self.prepared.finish(reply, None)
    }

    /// Whether compressed variants of `object` may be served: the kept head's answer where
    /// the store keeps one (a hit from memory matches no content type), else the rule itself.
    pub fn compressible(object: &dyn StoredObject) -> bool {
        let meta = object.meta();
        match object.derived() {
            Some(slot) => slot
                .get_or_init(|| ObjectHead::of(meta).ok())
                .and_then(Option::as_ref)
                .map_or_else(|| is_compressible(meta), |head| head.compressible),
            None => is_compressible(meta),
        }
    }
}
