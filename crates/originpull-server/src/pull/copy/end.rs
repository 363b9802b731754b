//! How a copy ended — or why it never started — in one enum: what a mirror client answers, what
//! a prefetch job reports, what the negative cache remembers and which `outcome` of
//! `originpull_fills_total` counts it ([`CopyEnd::metric_label`]) all come from it.

use super::transfer::{CopyError, MovedTo};

/// How a copy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEnd {
    /// Copied now; the object's size.
    Stored { bytes: u64 },
    /// Found in the bucket when the copy was to start: nothing was asked of the origin.
    AlreadyStored,
    /// Another node sharing the store fetched it meanwhile.
    StoredElsewhere,
    /// The origin's answer was not the object: its status (404, 410, 401, 403, 5xx, a
    /// redirect chain longer than `follow_redirects`...).
    OriginStatus(u16),
    /// The origin redirected to another path: its answer for the key, not the object.
    Moved(MovedTo),
    /// The origin could not be reached or failed mid-answer (refused, TLS, cut off, malformed).
    OriginError(String),
    /// The origin did not answer in time.
    Timeout(String),
    /// Larger than `fill.max_object_bytes`: not stored.
    TooLarge { limit: u64 },
    /// The store is full (its limits, with nothing left to evict): not stored.
    NoRoom,
    /// The origin's answer came from an originpull: a pull loop.
    Loop,
    /// The origin redirected to a host that is not one of the bucket's origins.
    RedirectRefused(String),
    /// The bucket store failed while the object was written.
    StoreFailed(String),
    /// The store could not be asked for the key's fleet-wide claim: nothing was asked of the
    /// origin, so the key is not remembered as failed (it may be stored, and is served once
    /// the store answers again).
    StoreUnavailable(String),
    /// Not started: `fill.concurrency` copies run and `fill.queue` wait.
    Dropped,
    /// Not started: the key's last copy failed within `fill.negative_ttl_secs`.
    RecentlyFailed { negative_ttl_secs: u64 },
    /// The copy's task ended before the copy did (a shutdown, a panic).
    Abandoned,
}

impl CopyEnd {
    /// Whether the object is in the bucket after this copy.
    pub fn is_stored(&self) -> bool {
        matches!(
            self,
            CopyEnd::Stored { .. } | CopyEnd::AlreadyStored | CopyEnd::StoredElsewhere
        )
    }

    /// Whether the origin was asked and the key is not stored: remembered for
    /// `fill.negative_ttl_secs`, so a scanner cannot make the origin answer it again and again.
    pub fn is_remembered(&self) -> bool {
        !self.is_stored()
            && !matches!(
                self,
                CopyEnd::StoreUnavailable(_)
                    | CopyEnd::Dropped
                    | CopyEnd::RecentlyFailed { .. }
                    | CopyEnd::NoRoom
            )
    }

    /// Whether the origin said the key does not exist (404, 410).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CopyEnd::OriginStatus(404 | 410))
    }

    /// The `outcome` of `originpull_fills_total` that counts this end (one of
    /// [`crate::metrics::COPY_OUTCOMES`]); `None` for an end that is not a copy's (the object
    /// was there, the task was dropped).
    pub fn metric_label(&self) -> Option<&'static str> {
        Some(match self {
            CopyEnd::Stored { .. } => "stored",
            CopyEnd::AlreadyStored | CopyEnd::Abandoned => return None,
            CopyEnd::StoredElsewhere => "stored_elsewhere",
            CopyEnd::OriginStatus(_) | CopyEnd::Moved(_) => "origin_status",
            CopyEnd::OriginError(_) => "origin_error",
            CopyEnd::Timeout(_) => "timeout",
            CopyEnd::TooLarge { .. } => "too_large",
            CopyEnd::NoRoom => "no_room",
            CopyEnd::Loop => "loop",
            CopyEnd::RedirectRefused(_) => "redirect_refused",
            CopyEnd::StoreFailed(_) | CopyEnd::StoreUnavailable(_) => "store_error",
            CopyEnd::Dropped => "dropped",
            CopyEnd::RecentlyFailed { .. } => "negative_cached",
        })
    }

    /// Why the object is not in the bucket after this copy (empty if it is), for a prefetch
    /// job's report and the log.
    pub fn reason(&self) -> String {
        match self {
            CopyEnd::Stored { .. } | CopyEnd::AlreadyStored | CopyEnd::StoredElsewhere => {
                String::new()
            }
            CopyEnd::OriginStatus(status) => format!("origin answered {status}"),
            CopyEnd::Moved(to) => CopyError::Moved(to.clone()).to_string(),
            CopyEnd::OriginError(why) => format!("origin error: {why}"),
            CopyEnd::Timeout(why) => format!("origin timed out: {why}"),
            CopyEnd::TooLarge { limit } => {
                format!("object larger than max_object_bytes ({limit})")
            }
            CopyEnd::NoRoom => CopyError::NoRoom.to_string(),
            CopyEnd::Loop => CopyError::Loop.to_string(),
            CopyEnd::RedirectRefused(to) => CopyError::RedirectRefused(to.clone()).to_string(),
            CopyEnd::StoreFailed(why) => format!("store error: {why}"),
            CopyEnd::StoreUnavailable(why) => format!("claiming the copy: {why}"),
            CopyEnd::Dropped => "the copy queue is full (fill.queue)".into(),
            CopyEnd::RecentlyFailed { negative_ttl_secs } => format!(
                "failed within the last {negative_ttl_secs}s (fill.negative_ttl_secs); try again later"
            ),
            CopyEnd::Abandoned => "the copy stopped unexpectedly (shutting down)".into(),
        }
    }
}

impl From<CopyError> for CopyEnd {
    fn from(error: CopyError) -> CopyEnd {
        match error {
            CopyError::OriginStatus(status) => CopyEnd::OriginStatus(status),
            CopyError::Moved(to) => CopyEnd::Moved(to),
            CopyError::Timeout(why)
            | CopyError::Unreachable {
                why,
                timed_out: true,
            } => CopyEnd::Timeout(why),
            CopyError::Unreachable { why, .. } => {
                CopyEnd::OriginError(format!("cannot reach the origin: {why}"))
            }
            CopyError::Origin(why) => CopyEnd::OriginError(why),
            CopyError::TooLarge { limit } => CopyEnd::TooLarge { limit },
            CopyError::NoRoom => CopyEnd::NoRoom,
            CopyError::Store(e) => CopyEnd::StoreFailed(e.to_string()),
            CopyError::Loop => CopyEnd::Loop,
            CopyError::RedirectRefused(to) => CopyEnd::RedirectRefused(to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::COPY_OUTCOMES;

    #[test]
    fn every_label_is_a_series_of_the_metric() {
        let ends = [
            CopyEnd::Stored { bytes: 1 },
            CopyEnd::StoredElsewhere,
            CopyEnd::OriginStatus(404),
            CopyEnd::OriginError(String::new()),
            CopyEnd::Timeout(String::new()),
            CopyEnd::TooLarge { limit: 1 },
            CopyEnd::NoRoom,
            CopyEnd::Loop,
            CopyEnd::RedirectRefused(String::new()),
            CopyEnd::StoreFailed(String::new()),
            CopyEnd::Dropped,
            CopyEnd::RecentlyFailed {
                negative_ttl_secs: 1,
            },
        ];
        let labels: Vec<&str> = ends.iter().filter_map(CopyEnd::metric_label).collect();
        for outcome in COPY_OUTCOMES {
            assert!(labels.contains(&outcome), "{outcome} is never counted");
        }
        assert!(labels.iter().all(|l| COPY_OUTCOMES.contains(l)));
    }

    #[test]
    fn only_what_the_origin_answered_is_remembered() {
        assert!(CopyEnd::OriginStatus(404).is_remembered());
        assert!(CopyEnd::Timeout(String::new()).is_remembered());
        assert!(!CopyEnd::StoreUnavailable(String::new()).is_remembered());
        assert!(!CopyEnd::Dropped.is_remembered());
        assert!(!CopyEnd::Stored { bytes: 0 }.is_remembered());
    }
}
