//! Writing an error [`ErrorPlan`]: the XML error, or, where the plan names the bucket's
//! `website.error_document` (as COS and S3 static websites have it, for `404 NoSuchKey`) and
//! the store has it, that object with the error's status and its own Content-Type. Without one
//! (or while it is not stored) the XML error stands.

use http::{header, Method};
use pingora::Result;
use pingora_proxy::Session;

use super::object_head::ObjectHead;
use super::plan::ErrorPlan;
use super::respond::{write_error, Reply};
use super::serve::stream_range;
use crate::metrics::RequestResult;
use originpull_store::checksum::CRC64_HEADER;
use originpull_store::key::ObjectKey;
use originpull_store::BucketStore;

/// Writes `error` for a request to `bucket` (`""` when it was routed to none); returns its
/// result and the body bytes written.
pub async fn write_error_plan(
    session: &mut Session,
    store: &dyn BucketStore,
    bucket: &str,
    error: &ErrorPlan,
    reply: &Reply,
) -> Result<(RequestResult, u64)> {
    if error.close {
        session.set_keepalive(None);
    }
    if let Some(document) = &error.document {
        if let Some(written) =
            serve_document(session, store, bucket, document, error, reply).await?
        {
            return Ok((error.result, written));
        }
    }
    let extra: &[(http::HeaderName, &str)] = match &error.extra {
        Some(header) => std::slice::from_ref(header),
        None => &[],
    };
    let detail = error.detail.as_deref();
    let written = write_error(session, error.code, detail, reply, extra).await?;
    Ok((error.result, written))
}

/// The stored `document` with the status of `error`; `None` when it is not stored (or cannot
/// be read).
async fn serve_document(
    session: &mut Session,
    store: &dyn BucketStore,
    bucket: &str,
    document: &ObjectKey,
    error: &ErrorPlan,
    reply: &Reply,
) -> Result<Option<u64>> {
    let object = match store.open_in_memory(bucket, document) {
        Some(object) => Some(object),
        None => store.open(bucket, document).await.ok().flatten(),
    };
    let Some(mut object) = object else {
        return Ok(None);
    };
    let size = object.meta().size;
    let mut resp = ObjectHead::of_object(object.as_ref())?.response(reply)?;
    resp.set_status(error.code.status())?;
    // The document stands for a missing object: no validators or ranges of its own.
    for name in [header::ETAG, header::LAST_MODIFIED, header::ACCEPT_RANGES] {
        resp.remove_header(&name);
    }
    resp.remove_header(CRC64_HEADER);
    if session.req_header().method == Method::HEAD || size == 0 {
        session.write_response_header(Box::new(resp), true).await?;
        return Ok(Some(0));
    }
    session.write_response_header(Box::new(resp), false).await?;
    let written = stream_range(session, object.as_mut(), 0..size).await?;
    Ok(Some(written))
}
