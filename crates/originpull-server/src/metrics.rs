//! Prometheus metrics, registered on the default registry so Pingora's Prometheus service
//! exports them beside process metrics. Names and labels here are the operators' contract.
//!
//! `bucket` label values come only from the configuration; requests for unknown hosts share the
//! one `bucket=""` request series so a scanner cannot create new series.

use std::sync::LazyLock;

use prometheus::{
    register_gauge, register_gauge_vec, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Gauge, GaugeVec,
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// The `encoding` label values of `originpull_compressions_total`, exported from zero: the
/// encodings the compressor makes (its tests check the two lists agree).
pub const ENCODINGS: [&str; 3] = ["br", "zstd", "gzip"];

/// How a request was answered: the `result` label of `originpull_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    Hit,
    NotModified,
    Redirect,
    NotFound,
    NoSuchBucket,
    BadRequest,
    MethodNotAllowed,
    Error,
    /// A miss answered in mirror mode: from the origin while it is copied, or after its copy.
    Mirror,
    /// An `OPTIONS` preflight a CORS rule allowed.
    Preflight,
    /// An `OPTIONS` preflight no CORS rule allowed (403).
    CorsForbidden,
}

impl RequestResult {
    pub const ALL: [RequestResult; 11] = [
        RequestResult::Hit,
        RequestResult::NotModified,
        RequestResult::Redirect,
        RequestResult::NotFound,
        RequestResult::NoSuchBucket,
        RequestResult::BadRequest,
        RequestResult::MethodNotAllowed,
        RequestResult::Error,
        RequestResult::Mirror,
        RequestResult::Preflight,
        RequestResult::CorsForbidden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestResult::Hit => "hit",
            RequestResult::NotModified => "not_modified",
            RequestResult::Redirect => "redirect",
            RequestResult::NotFound => "not_found",
            RequestResult::NoSuchBucket => "no_such_bucket",
            RequestResult::BadRequest => "bad_request",
            RequestResult::MethodNotAllowed => "method_not_allowed",
            RequestResult::Error => "error",
            RequestResult::Mirror => "mirror",
            RequestResult::Preflight => "preflight",
            RequestResult::CorsForbidden => "cors_forbidden",
        }
    }
}

/// The `outcome` label values of `originpull_fills_total` and `originpull_origin_fills_total`,
/// exported from zero: how a copy ended, as `pull::copy::CopyEnd::metric_label` names it (its
/// tests check every end's label is one of these).
pub const COPY_OUTCOMES: [&str; 12] = [
    "stored",
    "origin_status",
    "origin_error",
    "timeout",
    "too_large",
    "no_room",
    "dropped",
    "negative_cached",
    "store_error",
    "loop",
    "redirect_refused",
    "stored_elsewhere",
];

pub struct Metrics {
    pub requests: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub fills: IntCounterVec,
    pub fill_bytes: IntCounterVec,
    pub fill_duration: HistogramVec,
    pub fills_in_flight: IntGauge,
    pub fill_queue_depth: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_successful: Gauge,
    pub origin_up: IntGaugeVec,
    pub origin_fills: IntCounterVec,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounter,
    pub compressions: IntCounterVec,
    pub revalidations: IntCounterVec,
    pub origin_breaker_open: IntGaugeVec,
    pub certificate_expiry: GaugeVec,
    pub acme_orders: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    pub library_log_lines: IntCounterVec,
}

// The macros only fail on a duplicate or malformed name, which is a bug caught by any test run.
#[allow(clippy::expect_used)]
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        requests: register_int_counter_vec!(
            "originpull_requests_total",
            "Requests answered, by bucket and how they were answered.",
            &["bucket", "result"]
        )
        .expect("register originpull_requests_total"),
        response_bytes: register_int_counter_vec!(
            "originpull_response_bytes_total",
            "Response body bytes sent to clients.",
            &["bucket"]
        )
        .expect("register originpull_response_bytes_total"),
        fills: register_int_counter_vec!(
            "originpull_fills_total",
            "Copies from the origin into the bucket, by how they ended.",
            &["bucket", "outcome"]
        )
        .expect("register originpull_fills_total"),
        fill_bytes: register_int_counter_vec!(
            "originpull_fill_bytes_total",
            "Bytes copied from origins into buckets (stored copies only).",
            &["bucket"]
        )
        .expect("register originpull_fill_bytes_total"),
        fill_duration: register_histogram_vec!(
            "originpull_fill_duration_seconds",
            "Time from the start of a copy to its end, whatever the outcome.",
            &["bucket"],
            vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]
        )
        .expect("register originpull_fill_duration_seconds"),
        fills_in_flight: register_int_gauge!(
            "originpull_fills_in_flight",
            "Copies talking to an origin now."
        )
        .expect("register originpull_fills_in_flight"),
        fill_queue_depth: register_int_gauge!(
            "originpull_fill_queue_depth",
            "Copies waiting for a free slot."
        )
        .expect("register originpull_fill_queue_depth"),
        config_reloads: register_int_counter_vec!(
            "originpull_config_reloads_total",
            "Configuration reloads, by outcome.",
            &["outcome"]
        )
        .expect("register originpull_config_reloads_total"),
        config_last_reload_successful: register_gauge!(
            "originpull_config_last_reload_successful",
            "1 if the last configuration reload succeeded, 0 if it failed."
        )
        .expect("register originpull_config_last_reload_successful"),
        origin_up: register_int_gauge_vec!(
            "originpull_origin_up",
            "1 while copies and redirects use the origin, 0 while it is marked down.",
            &["bucket", "origin"]
        )
        .expect("register originpull_origin_up"),
        origin_fills: register_int_counter_vec!(
            "originpull_origin_fills_total",
            "Copies by the origin that answered them (or the last one tried) and how they ended.",
            &["bucket", "origin", "outcome"]
        )
        .expect("register originpull_origin_fills_total"),
        connections_open: register_int_gauge!(
            "originpull_connections_open",
            "Client connections open now."
        )
        .expect("register originpull_connections_open"),
        connections_refused: register_int_counter!(
            "originpull_connections_refused_total",
            "Client connections closed at once because server.max_connections were open."
        )
        .expect("register originpull_connections_refused_total"),
        compressions: register_int_counter_vec!(
            "originpull_compressions_total",
            "Compressed variants made and kept, by bucket and encoding.",
            &["bucket", "encoding"]
        )
        .expect("register originpull_compressions_total"),
        revalidations: register_int_counter_vec!(
            "originpull_revalidations_total",
            "Conditional GETs of stored objects to their origin, by outcome (not_modified, replaced, origin_missing, failed, skipped).",
            &["bucket", "outcome"]
        )
        .expect("register originpull_revalidations_total"),
        origin_breaker_open: register_int_gauge_vec!(
            "originpull_origin_breaker_open",
            "1 while the origin's breaker is open (copies to it pause), else 0.",
            &["bucket", "origin"]
        )
        .expect("register originpull_origin_breaker_open"),
        certificate_expiry: register_gauge_vec!(
            "originpull_certificate_expiry_timestamp_seconds",
            "When each certificate the HTTPS listener serves expires (notAfter, Unix seconds), by its first DNS name.",
            &["name"]
        )
        .expect("register originpull_certificate_expiry_timestamp_seconds"),
        acme_orders: register_int_counter_vec!(
            "originpull_acme_orders_total",
            "ACME orders by outcome (issued, renewed, failed).",
            &["outcome"]
        )
        .expect("register originpull_acme_orders_total"),
        tls_handshake_failures: register_int_counter_vec!(
            "originpull_tls_handshake_failures_total",
            "TLS handshakes on the HTTPS listener that failed (error) or did not finish within server.header_timeout_secs (timeout).",
            &["reason"]
        )
        .expect("register originpull_tls_handshake_failures_total"),
        library_log_lines: register_int_counter_vec!(
            "originpull_library_log_lines_total",
            "WARN and ERROR lines from the libraries originpull runs on (Pingora, rustls...), by level; past the first of a burst they are summarized in the log, not written one by one.",
            &["level"]
        )
        .expect("register originpull_library_log_lines_total"),
    };
    m.config_last_reload_successful.set(1.0);
    // Both outcomes exported from zero, so an alert on `increase(...{outcome="error"})` works
    // before the first reload.
    for outcome in ["ok", "error"] {
        m.config_reloads.with_label_values(&[outcome]);
    }
    for outcome in ["issued", "renewed", "failed"] {
        m.acme_orders.with_label_values(&[outcome]);
    }
    for reason in ["error", "timeout"] {
        m.tls_handshake_failures.with_label_values(&[reason]);
    }
    for level in [log::Level::Error, log::Level::Warn] {
        m.library_log_lines.with_label_values(&[level.as_str()]);
    }
    m
});

/// Counts one WARN or ERROR line from a library (the process logger's hook).
pub fn count_library_log_line(level: log::Level) {
    METRICS
        .library_log_lines
        .with_label_values(&[level.as_str()])
        .inc();
}

/// Registers everything once at start, so every series family is visible before traffic.
/// (Process metrics come with the `prometheus` crate's `process` feature, on the default
/// registry already.)
pub fn init() {
    LazyLock::force(&METRICS);
}

/// The request series of one `bucket` label value.
pub struct RequestMetrics {
    requests: Vec<IntCounter>,
    response_bytes: IntCounter,
}

impl RequestMetrics {
    fn new(bucket: &str) -> RequestMetrics {
        let m = &*METRICS;
        RequestMetrics {
            // Created up front: every series is exported from zero, so rates work from the start.
            requests: RequestResult::ALL
                .iter()
                .map(|r| m.requests.with_label_values(&[bucket, r.as_str()]))
                .collect(),
            response_bytes: m.response_bytes.with_label_values(&[bucket]),
        }
    }

    pub fn count_request(&self, result: RequestResult, body_bytes: u64) {
        self.requests[result as usize].inc();
        if body_bytes > 0 {
            self.response_bytes.inc_by(body_bytes);
        }
    }
}

/// One bucket's series, resolved once per configuration generation so that a request does
/// not hash label values and take the registry's lock.
pub struct BucketMetrics {
    requests: RequestMetrics,
    fills: Vec<IntCounter>,
    pub fill_bytes: IntCounter,
    pub fill_duration: Histogram,
    compressions: Vec<IntCounter>,
}

impl BucketMetrics {
    pub fn new(bucket: &str) -> BucketMetrics {
        let m = &*METRICS;
        BucketMetrics {
            requests: RequestMetrics::new(bucket),
            fills: COPY_OUTCOMES
                .iter()
                .map(|o| m.fills.with_label_values(&[bucket, o]))
                .collect(),
            fill_bytes: m.fill_bytes.with_label_values(&[bucket]),
            fill_duration: m.fill_duration.with_label_values(&[bucket]),
            compressions: ENCODINGS
                .iter()
                .map(|e| m.compressions.with_label_values(&[bucket, e]))
                .collect(),
        }
    }

    /// The series for requests whose host matched no bucket: one `bucket=""` for all of them.
    /// Request series only: copies always belong to a bucket.
    pub fn unrouted() -> &'static RequestMetrics {
        static UNROUTED: LazyLock<RequestMetrics> = LazyLock::new(|| RequestMetrics::new(""));
        &UNROUTED
    }

    pub fn count_request(&self, result: RequestResult, body_bytes: u64) {
        self.requests.count_request(result, body_bytes);
    }

    /// Counts a copy that ended as `outcome`, one of [`COPY_OUTCOMES`].
    pub fn count_copy(&self, outcome: &str) {
        if let Some(i) = COPY_OUTCOMES.iter().position(|o| *o == outcome) {
            self.fills[i].inc();
        }
    }

    /// `encoding` is one of [`ENCODINGS`] (the compressor's own names for them).
    pub fn count_compression(&self, encoding: &str) {
        if let Some(i) = ENCODINGS.iter().position(|e| *e == encoding) {
            self.compressions[i].inc();
        }
    }
}
