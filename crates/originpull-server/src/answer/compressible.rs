//! Which objects are served compressed: a text-like type, a size worth it (1 KiB to 10 MiB),
//! no `Content-Encoding` of its own and no `Cache-Control: no-transform` from its origin. Hits
//! ask it through their [`super::object_head`]; a mirrored miss asks it of the head its origin
//! sent.

use originpull_store::ObjectMeta;

/// Smaller objects gain too little to be worth a variant (headers and framing eat the gain).
pub const MIN_BYTES: u64 = 1024;
/// Larger objects are served as stored: a variant is compressed whole, in memory.
pub const MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Whether hits on this object are compressed: a text-like type, a size worth it, no
/// `Content-Encoding` of its own, and no `Cache-Control: no-transform` from its origin.
pub fn is_compressible(meta: &ObjectMeta) -> bool {
    is_compressible_object(Some(meta.size), &meta.content_type, &meta.headers)
}

/// [`is_compressible`] for an object described by its parts, its size maybe not yet known
/// (a body streamed from its origin): then only its type and headers decide.
pub fn is_compressible_object(
    size: Option<u64>,
    content_type: &str,
    headers: &[(String, String)],
) -> bool {
    size.is_none_or(|size| (MIN_BYTES..=MAX_BYTES).contains(&size))
        && is_compressible_type(content_type)
        && !headers.iter().any(|(name, value)| {
            name == "content-encoding"
                || (name == "cache-control"
                    && value
                        .as_bytes()
                        .windows(b"no-transform".len())
                        .any(|w| w.eq_ignore_ascii_case(b"no-transform")))
        })
}

/// Text-like media types. Formats that are compressed already (images but SVG, woff/woff2,
/// archives, media) gain nothing.
fn is_compressible_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((top, sub)) = essence.split_once('/') else {
        return false;
    };
    let is = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    // Bytes, not str slices: a type from an origin may hold non-ASCII text.
    let ends = |suffix: &str| {
        let (sub, suffix) = (sub.as_bytes(), suffix.as_bytes());
        sub.len() > suffix.len() && sub[sub.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    if is(top, "text") {
        return true;
    }
    if is(top, "application") {
        return [
            "javascript",
            "x-javascript",
            "ecmascript",
            "json",
            "xml",
            "wasm",
        ]
        .iter()
        .chain(["x-font-ttf", "x-font-otf", "font-sfnt", "vnd.ms-fontobject"].iter())
        .any(|t| is(sub, t))
            || ends("+json")
            || ends("+xml");
    }
    if is(top, "image") {
        return ["svg+xml", "x-icon", "vnd.microsoft.icon", "bmp"]
            .iter()
            .any(|t| is(sub, t));
    }
    if is(top, "font") {
        return ["ttf", "otf", "collection", "sfnt"]
            .iter()
            .any(|t| is(sub, t));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_like_types_are_compressible_and_packed_ones_are_not() {
        for t in [
            "text/html; charset=utf-8",
            "application/javascript",
            "application/json",
            "application/ld+json",
            "image/svg+xml",
            "application/wasm",
            "font/ttf",
            "TEXT/CSS",
            "application/vnd.é+json",
        ] {
            assert!(is_compressible_type(t), "{t}");
        }
        for t in [
            "image/png",
            "font/woff2",
            "application/octet-stream",
            "application/zip",
            "video/mp4",
            "+json",
            "",
            // Would cut a character in two if compared as str slices.
            "application/éaé",
        ] {
            assert!(!is_compressible_type(t), "{t}");
        }
    }

    #[test]
    fn size_own_encoding_and_no_transform_decide_too() {
        let meta = |size: u64, headers: &[(&str, &str)]| ObjectMeta {
            key: "a.js".into(),
            size,
            content_type: "application/javascript".into(),
            etag: "0".into(),
            last_modified: 0,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            origin_etag: None,
            origin_last_modified: None,
            crc64: None,
            checked_at: 0,
        };
        assert!(is_compressible(&meta(MIN_BYTES, &[])));
        assert!(!is_compressible(&meta(MIN_BYTES - 1, &[])));
        assert!(!is_compressible(&meta(MAX_BYTES + 1, &[])));
        assert!(!is_compressible(&meta(
            4096,
            &[("content-encoding", "gzip")]
        )));
        assert!(!is_compressible(&meta(
            4096,
            &[("cache-control", "public, No-Transform")]
        )));
    }
}
