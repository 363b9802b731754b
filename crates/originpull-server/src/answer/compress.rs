//! Compressed hits: which objects are compressed, which encoding a request gets, and making each
//! encoded variant once.
//!
//! Copies ask origins for `Accept-Encoding: identity`, so the bucket holds plain bytes. A hit on
//! a text-like object (text/*, JavaScript, JSON, XML, SVG, wasm, uncompressed fonts) of 1 KiB to
//! 10 MiB, stored without a `Content-Encoding` of its own, is served as `br`, `zstd` or `gzip`
//! when the request's `Accept-Encoding` allows one (q-values honoured, `q=0` refuses, br > zstd >
//! gzip on equal q), with `Vary: Accept-Encoding` and the ETag `"<md5>-<encoding>"`. A `Range`
//! request gets the stored bytes.
//!
//! Each variant is made once per object version and kept by the store beside the object (see
//! [`originpull_store`]). A request that finds its variant missing is served the stored bytes at once
//! and starts one background job that compresses on a blocking thread and keeps the result;
//! requests meanwhile are served the stored bytes too, and start nothing (one job per object
//! version and encoding, at most one per CPU at a time). No request waits on a compressor: at
//! the levels used, a large object takes seconds.

use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, RANGE};
use pingora::http::RequestHeader;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::object_head::ObjectHead;
use crate::live::bucket::Bucket;
use originpull_store::key::ObjectKey;
use originpull_store::{BucketStore, ObjectMeta, StoreError, StoredObject};
use originpull_support::log_summary::SummarizedLog;

/// Failures to open or make a variant: each hit of a compressible object can meet one.
static VARIANT_FAILURES: SummarizedLog = SummarizedLog::new(
    log::Level::Warn,
    module_path!(),
    "failures of compressed variants",
);

/// Up to this size the highest levels are used: each variant is made once and served many
/// times. Above it they cost too much (brotli 11 runs at about 0.5 MB/s, 9 at about 7 MB/s, on
/// this project's 2-core test machine), so a few percent of size is traded for time.
const MAX_LEVEL_BYTES: usize = 256 * 1024;
const BROTLI_WINDOW_BITS: i32 = 22;
const GZIP_LEVEL: u32 = 9;

/// (brotli quality, zstd level) for `size` bytes.
fn levels(size: usize) -> (i32, i32) {
    if size <= MAX_LEVEL_BYTES {
        (11, 19)
    } else {
        (9, 12)
    }
}

/// A content coding originpull serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Br,
    Zstd,
    Gzip,
}

impl Encoding {
    /// In order of preference when a client accepts several equally.
    pub const ALL: [Encoding; 3] = [Encoding::Br, Encoding::Zstd, Encoding::Gzip];

    /// The `Content-Encoding` token, also the variant's name in the store and the ETag suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    fn compress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        let (brotli_quality, zstd_level) = levels(data.len());
        match self {
            Encoding::Br => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: brotli_quality,
                    lgwin: BROTLI_WINDOW_BITS,
                    size_hint: data.len(),
                    ..Default::default()
                };
                let mut out = Vec::with_capacity(data.len() / 4);
                brotli::BrotliCompress(&mut &data[..], &mut out, &params)?;
                Ok(out)
            }
            Encoding::Zstd => zstd::bulk::compress(data, zstd_level),
            Encoding::Gzip => {
                let out = Vec::with_capacity(data.len() / 4);
                let mut encoder =
                    flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
                encoder.write_all(data)?;
                encoder.finish()
            }
        }
    }
}

/// The encoding a request prefers among those served, or `None` for the stored bytes.
///
/// Each coding's q-value comes from its own entry, else from `*`; `q=0` refuses it. Among the
/// highest q, br > zstd > gzip. `identity` matters only when listed with a higher q than the
/// best coding (a client that says it would rather have plain bytes gets them).
pub fn negotiate(req: &RequestHeader) -> Option<Encoding> {
    let mut q: [Option<u16>; 3] = [None; 3];
    let mut star = None;
    let mut identity = None;
    for value in req.headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let Some(weight) =
                parts.try_fold(1000, |weight, param| match param.trim().split_once('=') {
                    Some((name, v)) if name.trim().eq_ignore_ascii_case("q") => parse_q(v.trim()),
                    _ => Some(weight),
                })
            else {
                continue; // a malformed q-value: the entry is ignored
            };
            let is = |name: &str| coding.eq_ignore_ascii_case(name);
            let slot = if is("br") {
                &mut q[0]
            } else if is("zstd") {
                &mut q[1]
            } else if is("gzip") || is("x-gzip") {
                &mut q[2]
            } else if coding == "*" {
                &mut star
            } else if is("identity") {
                &mut identity
            } else {
                continue;
            };
            *slot = Some(slot.map_or(weight, |w: u16| w.max(weight)));
        }
    }
    let mut best: Option<(Encoding, u16)> = None;
    for (encoding, weight) in Encoding::ALL.into_iter().zip(q) {
        let weight = weight.or(star).unwrap_or(0);
        if weight > 0 && best.is_none_or(|(_, w)| weight > w) {
            best = Some((encoding, weight));
        }
    }
    let (encoding, weight) = best?;
    match identity {
        Some(identity) if identity > weight => None,
        _ => Some(encoding),
    }
}

/// A q-value (RFC 9110 §12.4.2: 0 to 1, three decimals at most) in thousandths.
fn parse_q(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// What a hit is served from: the stored object, or one of its encoded variants.
pub struct Representation {
    /// The object, or the variant (its metadata is the object's, with its own size).
    pub object: Box<dyn StoredObject>,
    /// `Some` when `object` is an encoded variant.
    pub encoding: Option<Encoding>,
    /// Whether the answer depends on `Accept-Encoding` (`Vary: Accept-Encoding`).
    pub varies: bool,
}

impl Representation {
    pub fn stored(object: Box<dyn StoredObject>, varies: bool) -> Representation {
        Representation {
            object,
            encoding: None,
            varies,
        }
    }
}

/// One variant being made: bucket, key, the version's ETag, the encoding.
type VariantJob = (String, String, String, Encoding);

/// Picks each hit's representation and makes missing variants, once each.
#[derive(Clone)]
pub struct Compressor {
    store: Arc<dyn BucketStore>,
    in_flight: Arc<Mutex<HashSet<VariantJob>>>,
    /// One compression per CPU at most; more would only slow the hits down.
    permits: Arc<Semaphore>,
}

impl Compressor {
    pub fn new(store: Arc<dyn BucketStore>) -> Compressor {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Compressor {
            store,
            in_flight: Arc::default(),
            permits: Arc::new(Semaphore::new(cpus)),
        }
    }

    /// The representation of `object` to serve for `req`. A variant the store does not have
    /// yet is started in the background and the stored bytes are served meanwhile.
    pub async fn select(
        &self,
        req: &RequestHeader,
        bucket: &Arc<Bucket>,
        key: &ObjectKey,
        object: Box<dyn StoredObject>,
    ) -> Representation {
        let meta = object.meta();
        if !ObjectHead::compressible(object.as_ref()) {
            return Representation::stored(object, false);
        }
        if req.headers.contains_key(RANGE) {
            return Representation::stored(object, true);
        }
        let Some(encoding) = negotiate(req) else {
            return Representation::stored(object, true);
        };
        let name = bucket.config.name.as_str();
        match self
            .store
            .open_variant(name, key, meta, encoding.as_str())
            .await
        {
            // A variant that gained nothing is kept so that it is not made again, but not sent.
            Ok(Some(variant)) if variant.meta().size < meta.size => Representation {
                object: variant,
                encoding: Some(encoding),
                varies: true,
            },
            Ok(Some(_)) => Representation::stored(object, true),
            Ok(None) => {
                self.start(bucket, key, meta, encoding);
                Representation::stored(object, true)
            }
            Err(e) => {
                VARIANT_FAILURES.note(|| {
                    format!(
                        "bucket {name}: variant {} of {:?}: {e}",
                        encoding.as_str(),
                        key.as_str()
                    )
                });
                Representation::stored(object, true)
            }
        }
    }

    /// Starts making `encoding` of this version of `key`, unless it is being made already or
    /// every CPU is compressing (a later request will start it then).
    fn start(&self, bucket: &Arc<Bucket>, key: &ObjectKey, meta: &ObjectMeta, encoding: Encoding) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return;
        };
        let job: VariantJob = (
            bucket.config.name.clone(),
            key.as_str().to_string(),
            meta.etag.clone(),
            encoding,
        );
        let Some(claim) = JobClaim::try_claim(&self.in_flight, job) else {
            return;
        };
        let store = self.store.clone();
        let bucket = bucket.clone();
        let key = key.clone();
        let meta = meta.clone();
        tokio::spawn(async move {
            let _claim = claim;
            let name = bucket.config.name.as_str();
            match make_variant(&*store, name, &key, &meta, encoding, permit).await {
                Ok(true) => bucket.metrics.count_compression(encoding.as_str()),
                Ok(false) => {}
                Err(e) => VARIANT_FAILURES.note(|| {
                    format!(
                        "bucket {name}: making variant {} of {:?}: {e}",
                        encoding.as_str(),
                        key.as_str()
                    )
                }),
            }
        });
    }
}

/// Compresses version `meta` of `key` and keeps the result; `Ok(false)` when there was nothing
/// to do (the variant was made meanwhile, or the object changed or went away).
async fn make_variant(
    store: &dyn BucketStore,
    bucket: &str,
    key: &ObjectKey,
    meta: &ObjectMeta,
    encoding: Encoding,
    permit: OwnedSemaphorePermit,
) -> Result<bool, StoreError> {
    // A job that finished between this request's look-up and its claim made it already.
    if store
        .open_variant(bucket, key, meta, encoding.as_str())
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let Some(mut object) = store.open(bucket, key).await? else {
        return Ok(false);
    };
    if object.meta() != meta {
        return Ok(false);
    }
    let body = object.read_whole().await?;
    let compressed = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        encoding.compress(&body)
    })
    .await
    .map_err(|e| StoreError::Io(io::Error::other(e)))??;
    store
        .put_variant(
            bucket,
            key,
            meta,
            encoding.as_str(),
            Bytes::from(compressed),
        )
        .await?;
    Ok(true)
}

/// The right to make one variant; released when dropped.
struct JobClaim {
    in_flight: Arc<Mutex<HashSet<VariantJob>>>,
    job: VariantJob,
}

impl JobClaim {
    fn try_claim(in_flight: &Arc<Mutex<HashSet<VariantJob>>>, job: VariantJob) -> Option<JobClaim> {
        let mut set = in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        set.insert(job.clone()).then(|| JobClaim {
            in_flight: in_flight.clone(),
            job,
        })
    }
}

impl Drop for JobClaim {
    fn drop(&mut self) {
        let mut set = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        set.remove(&self.job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(accept_encoding: &[&str]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/a.js", None).unwrap();
        for value in accept_encoding {
            req.append_header(ACCEPT_ENCODING, *value).unwrap();
        }
        req
    }

    fn chosen(accept_encoding: &[&str]) -> Option<&'static str> {
        negotiate(&request(accept_encoding)).map(Encoding::as_str)
    }

    #[test]
    fn negotiation_honours_q_values_and_prefers_br_zstd_gzip() {
        assert_eq!(chosen(&[]), None);
        assert_eq!(chosen(&["gzip, deflate, br, zstd"]), Some("br"));
        assert_eq!(chosen(&["gzip", "zstd"]), Some("zstd"));
        assert_eq!(chosen(&["br;q=0.5, gzip;q=0.8"]), Some("gzip"));
        assert_eq!(chosen(&["br;q=0, gzip"]), Some("gzip"));
        assert_eq!(chosen(&["br;q=0, gzip;q=0"]), None);
        assert_eq!(chosen(&["*"]), Some("br"));
        assert_eq!(chosen(&["*;q=0.5, br;q=0, zstd;q=0.4"]), Some("gzip"));
        assert_eq!(chosen(&["*;q=0"]), None);
        assert_eq!(chosen(&["identity"]), None);
        assert_eq!(chosen(&["GZIP; Q=1.000"]), Some("gzip"));
        assert_eq!(chosen(&["gzip;q=0.5, identity;q=1"]), None);
        assert_eq!(chosen(&["gzip;q=0.5, identity;q=0.1"]), Some("gzip"));
        // Malformed q-values drop their entry only.
        assert_eq!(
            chosen(&["br;q=2, gzip;q=0.1234, zstd;q=x, gzip"]),
            Some("gzip")
        );
    }

    #[test]
    fn the_metrics_label_every_encoding() {
        let names: Vec<&str> = Encoding::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(names, crate::metrics::ENCODINGS);
    }

    #[test]
    fn every_encoding_round_trips() {
        let data = b"function f(){return 1}\n".repeat(200);
        for encoding in Encoding::ALL {
            let packed = encoding.compress(&data).unwrap();
            assert!(packed.len() < data.len() / 10, "{encoding:?}");
            let mut unpacked = Vec::new();
            match encoding {
                Encoding::Br => {
                    brotli::BrotliDecompress(&mut &packed[..], &mut unpacked).unwrap();
                }
                Encoding::Zstd => unpacked = zstd::decode_all(&packed[..]).unwrap(),
                Encoding::Gzip => {
                    use std::io::Read;
                    flate2::read::GzDecoder::new(&packed[..])
                        .read_to_end(&mut unpacked)
                        .unwrap();
                }
            }
            assert_eq!(unpacked, data, "{encoding:?}");
        }
    }
}
