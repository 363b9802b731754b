//! The S3 store's link to its endpoint: the deadline of every request, and whether the store
//! is answering at all.
//!
//! Every HTTP request to the store, object_store's own and those sent by hand, goes through
//! [`DeadlineConnector`]: the head of each answer must arrive within `request_timeout_ms` (plus
//! the time to send the request's body at [`MIN_UPLOAD_BYTES_PER_SEC`], so an 8 MiB part on a
//! slow link is not cut off), and a body being read must bring new bytes at least every
//! `request_timeout_ms`. object_store's own options cannot say this: its `timeout` covers a whole
//! body (a GET streamed to a client at the client's pace), and reqwest's read timeout runs from
//! the start of the request, body upload included. Each operation (one object_store call with
//! its retries, or one request sent by hand) runs under [`StoreLink::run`], which bounds the
//! whole operation by the same deadline, so whoever waits on the store (a miss deciding between
//! a hit and a 302) waits about `request_timeout_ms` at most, however the store fails.
//!
//! The answers judge the store's health. [`FAILURES_TO_MARK_DOWN`] failures in a row (no answer
//! in time, no connection, a 5xx or 429) mark the store down for [`DOWN_FOR`]: operations then
//! fail at once without a request, as requests to a down origin do, and clients get their 302
//! or 503 without waiting. Then one operation is let through as a trial (others still fail at
//! once) every [`DOWN_FOR`] until one gets an answer, which marks the store up again.
//! `originpull_store_up` shows the state; one log line is written per change.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService, ReqwestConnector,
};
use object_store::ClientOptions;
use parking_lot::Mutex;

use crate::metrics::STORE_METRICS;

/// Failed requests in a row that mark the store down.
pub const FAILURES_TO_MARK_DOWN: u32 = 3;
/// How long a store marked down is skipped before one request tries it again.
pub const DOWN_FOR: Duration = Duration::from_secs(5);
/// A request body is expected to reach the store at least this fast: its answer's deadline
/// grows by the time its body takes at this rate.
pub const MIN_UPLOAD_BYTES_PER_SEC: u64 = 1024 * 1024;

/// Whether the store answers: failures in a row, and until when it is skipped.
#[derive(Debug, Default)]
struct StoreHealth {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    failures_in_a_row: u32,
    /// Set while the store is marked down: until then operations are skipped; past it one
    /// trial goes through (and moves it on by [`DOWN_FOR`]).
    down_until: Option<Instant>,
}

impl StoreHealth {
    /// Whether an operation may send requests now (see the module documentation).
    fn admit(&self) -> bool {
        let mut state = self.state.lock();
        match state.down_until {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                state.down_until = Some(Instant::now() + DOWN_FOR);
                true
            }
        }
    }

    fn record_answer(&self) {
        let mut state = self.state.lock();
        state.failures_in_a_row = 0;
        if state.down_until.take().is_some() {
            drop(state);
            STORE_METRICS.up.set(1);
            log::warn!("S3 store: answering again; no longer marked down");
        }
    }

    fn record_failure(&self, why: &dyn std::fmt::Display) {
        let mut state = self.state.lock();
        state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
        if state.failures_in_a_row >= FAILURES_TO_MARK_DOWN && state.down_until.is_none() {
            state.down_until = Some(Instant::now() + DOWN_FOR);
            drop(state);
            STORE_METRICS.up.set(0);
            STORE_METRICS.marked_down.inc();
            log::warn!(
                "S3 store: marked down after {FAILURES_TO_MARK_DOWN} failed requests in a row \
                 (last: {why}); requests skip it, and one tries it again every {}s",
                DOWN_FOR.as_secs()
            );
        }
    }
}

/// The deadline and health shared by every client of one store (see the module documentation).
#[derive(Debug)]
pub struct StoreLink {
    request_timeout: Duration,
    health: StoreHealth,
}

impl StoreLink {
    pub fn new(request_timeout: Duration) -> Arc<StoreLink> {
        STORE_METRICS.up.set(1);
        Arc::new(StoreLink {
            request_timeout,
            health: StoreHealth::default(),
        })
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The deadline of an answer's head to a request with `body_bytes` to send.
    pub fn head_deadline(&self, body_bytes: u64) -> Duration {
        self.request_timeout + Duration::from_millis(body_bytes * 1000 / MIN_UPLOAD_BYTES_PER_SEC)
    }

    /// Whether operations may reach the store now; counts one skipped `operation` otherwise.
    pub fn admit(&self, operation: &'static str) -> bool {
        let admitted = self.health.admit();
        if !admitted {
            STORE_METRICS.skipped.with_label_values(&[operation]).inc();
        }
        admitted
    }

    /// Runs one store operation with no request body to speak of: see [`StoreLink::run_within`].
    pub async fn run<T>(
        &self,
        operation: &'static str,
        request: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        self.run_within(operation, self.request_timeout, request)
            .await
    }

    /// Runs one store operation sending `body_bytes`: see [`StoreLink::run_within`].
    pub async fn run_sending<T>(
        &self,
        operation: &'static str,
        body_bytes: u64,
        request: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        self.run_within(operation, self.head_deadline(body_bytes), request)
            .await
    }

    /// Runs one store operation (retries included) within `deadline`, or at once not at all
    /// while the store is marked down; times it, and counts its failure under `operation`.
    async fn run_within<T>(
        &self,
        operation: &'static str,
        deadline: Duration,
        request: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        if !self.admit(operation) {
            return Err(store_marked_down());
        }
        let started = Instant::now();
        let result = match tokio::time::timeout(deadline, request).await {
            Ok(result) => result,
            Err(_) => {
                let error = no_answer_within(deadline);
                self.health.record_failure(&error);
                Err(error)
            }
        };
        STORE_METRICS
            .request_seconds
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            let expected = matches!(
                e,
                object_store::Error::NotFound { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
            );
            if !expected {
                STORE_METRICS.errors.with_label_values(&[operation]).inc();
            }
        }
        result
    }
}

/// The error of an operation skipped because the store is marked down.
pub fn store_marked_down() -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: "the store is marked down after failing repeatedly; not asked".into(),
    }
}

fn no_answer_within(deadline: Duration) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: format!(
            "no answer from the store within {} ms (store.s3.request_timeout_ms)",
            deadline.as_millis()
        )
        .into(),
    }
}

fn timed_out(what: &str, deadline: Duration) -> HttpError {
    HttpError::new(
        HttpErrorKind::Timeout,
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} within {} ms", deadline.as_millis()),
        ),
    )
}

/// object_store's HTTP client (reqwest) with the link's deadlines on every request.
#[derive(Debug)]
pub struct DeadlineConnector {
    pub link: Arc<StoreLink>,
}

impl HttpConnector for DeadlineConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(DeadlineService {
            inner,
            link: self.link.clone(),
        }))
    }
}

#[derive(Debug)]
struct DeadlineService {
    inner: HttpClient,
    link: Arc<StoreLink>,
}

#[async_trait]
impl HttpService for DeadlineService {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let deadline = self
            .link
            .head_deadline(request.body().content_length() as u64);
        let health = &self.link.health;
        let response = match tokio::time::timeout(deadline, self.inner.execute(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                health.record_failure(&e);
                return Err(e);
            }
            Err(_) => {
                let e = timed_out("no answer", deadline);
                health.record_failure(&e);
                return Err(e);
            }
        };
        let status = response.status();
        if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
            health.record_failure(&status);
        } else {
            health.record_answer();
        }
        let (parts, body) = response.into_parts();
        let body = IdleTimeoutBody {
            inner: body,
            idle: self.link.request_timeout,
            timer: Box::pin(tokio::time::sleep(self.link.request_timeout)),
            waiting: false,
            link: self.link.clone(),
        };
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// A response body that fails when its reader has waited `idle` for bytes: a store that stops
/// mid-body does not hold its reader for ever. Only waiting counts: a reader that reads
/// slowly (a slow client downstream) is not cut off.
struct IdleTimeoutBody {
    inner: HttpResponseBody,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Whether the reader is waiting now (the timer then runs from when it began).
    waiting: bool,
    link: Arc<StoreLink>,
}

impl Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let e = timed_out("no body bytes", this.idle);
                        this.link.health.record_failure(&e);
                        Poll::Ready(Some(Err(e)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_mark_down_and_one_trial_goes_through_after_a_while() {
        let health = StoreHealth::default();
        for _ in 1..FAILURES_TO_MARK_DOWN {
            health.record_failure(&"timeout");
            assert!(health.admit());
        }
        health.record_answer();
        for _ in 1..FAILURES_TO_MARK_DOWN {
            health.record_failure(&"timeout");
        }
        assert!(health.admit(), "an answer resets the count");
        health.record_failure(&"timeout");
        assert!(!health.admit(), "marked down");
        // Past the down time one trial is admitted, the next caller is not.
        health.state.lock().down_until = Some(Instant::now() - Duration::from_millis(1));
        assert!(health.admit());
        assert!(!health.admit());
        health.record_answer();
        assert!(health.admit());
    }

    /// A body whose bytes never come.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = HttpError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_after_the_idle_time_counted_from_when_the_reader_waits() {
        let idle = Duration::from_millis(100);
        let link = StoreLink::new(idle);
        let mut body = IdleTimeoutBody {
            inner: HttpResponseBody::new(Silent),
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            link: link.clone(),
        };
        // A reader that comes late (a slow client downstream) is given the whole idle time.
        tokio::time::sleep(idle * 2).await;
        let started = Instant::now();
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let waited = started.elapsed();
        let error = frame.expect("an end").expect_err("a timeout");
        assert_eq!(error.kind(), HttpErrorKind::Timeout);
        assert!(waited >= idle && waited < idle * 5, "{waited:?}");
        assert_eq!(link.health.state.lock().failures_in_a_row, 1);
    }

    #[test]
    fn a_body_to_send_lengthens_the_head_deadline() {
        let link = StoreLink::new(Duration::from_millis(500));
        assert_eq!(link.head_deadline(0), Duration::from_millis(500));
        assert_eq!(
            link.head_deadline(8 * MIN_UPLOAD_BYTES_PER_SEC),
            Duration::from_millis(8500)
        );
    }
}
