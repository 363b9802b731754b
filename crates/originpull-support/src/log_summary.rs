//! Log lines for events a client can make happen again and again (a copy failing, the copy
//! queue full, the store failing a request): the first event of a quiet spell is written as it
//! is, and the ones that follow within [`SUMMARY_EVERY`] are counted and written as one summary
//! line with a few examples, so a scanner or an outage cannot fill the disk with log lines.
//! Each kind of event is a [`SummarizedLog`] static; the metrics count every event.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::clock::coarse_seconds;

/// At most one line per kind of event this often.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(5);
/// Examples kept for a summary line.
const EXAMPLES: usize = 3;

/// One kind of event whose log lines are summarized.
pub struct SummarizedLog {
    level: log::Level,
    /// The module the events come from, as its own log lines name it.
    target: &'static str,
    /// What the events are, for the summary line ("copy failures").
    what: &'static str,
    /// Events since the last line written.
    unwritten: AtomicU64,
    /// When the last line was written, in the coarse clock's seconds; 0: never.
    last_written: AtomicU64,
    examples: Mutex<Vec<String>>,
    registered: AtomicBool,
}

impl SummarizedLog {
    /// Events of `what` ("copy failures"), logged at `level` under `target` (the caller's
    /// `module_path!()`).
    pub const fn new(level: log::Level, target: &'static str, what: &'static str) -> SummarizedLog {
        SummarizedLog {
            level,
            target,
            what,
            unwritten: AtomicU64::new(0),
            last_written: AtomicU64::new(0),
            examples: Mutex::new(Vec::new()),
            registered: AtomicBool::new(false),
        }
    }

    /// Records one event; `message` is called only if its text is written or kept as an
    /// example.
    pub fn note(&'static self, message: impl FnOnce() -> String) {
        if !log::log_enabled!(target: self.target, self.level) {
            return;
        }
        self.register();
        let now = now_secs();
        let last = self.last_written.load(Ordering::Relaxed);
        let quiet = last == 0 || now >= last + SUMMARY_EVERY.as_secs();
        if quiet
            && self
                .last_written
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.write_summary();
            write_line(self.target, self.level, format_args!("{}", message()));
            return;
        }
        if self.unwritten.fetch_add(1, Ordering::Relaxed) < EXAMPLES as u64 {
            let mut examples = self.examples.lock().unwrap_or_else(|p| p.into_inner());
            if examples.len() < EXAMPLES {
                examples.push(message());
            }
        }
    }

    /// Writes the summary of the events counted since the last line, if any.
    fn write_summary(&self) {
        let count = self.unwritten.swap(0, Ordering::Relaxed);
        let examples =
            std::mem::take(&mut *self.examples.lock().unwrap_or_else(|p| p.into_inner()));
        if count == 0 {
            return;
        }
        write_line(
            self.target,
            self.level,
            format_args!(
                "{count} more {} in the last {}s (not logged one by one), e.g. {}",
                self.what,
                SUMMARY_EVERY.as_secs(),
                examples.join(" | ")
            ),
        );
    }

    /// Writes the summary if the last line is old enough (the ticker's call).
    fn write_summary_if_due(&self) {
        let now = now_secs();
        let last = self.last_written.load(Ordering::Relaxed);
        if self.unwritten.load(Ordering::Relaxed) > 0
            && now >= last + SUMMARY_EVERY.as_secs()
            && self
                .last_written
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.write_summary();
        }
    }

    /// Adds this log to the ticker's list on its first event, so counted events are written
    /// even when no later event comes.
    fn register(&'static self) {
        if self.registered.load(Ordering::Relaxed) || self.registered.swap(true, Ordering::AcqRel) {
            return;
        }
        let ticker = TICKER.get_or_init(|| {
            std::thread::Builder::new()
                .name("log-summary".into())
                .spawn(|| loop {
                    std::thread::sleep(SUMMARY_EVERY);
                    for log in logs_with_events() {
                        log.write_summary_if_due();
                    }
                })
                .map_err(|e| log::warn!("cannot start the log summary thread: {e}"))
                .ok();
            Mutex::new(Vec::new())
        });
        ticker.lock().unwrap_or_else(|p| p.into_inner()).push(self);
    }
}

thread_local! {
    /// Set while this thread writes a summarized log's line, so the process's logger
    /// ([`crate::library_log`]) passes it on instead of summarizing it again.
    static WRITING: Cell<bool> = const { Cell::new(false) };
}

fn write_line(target: &str, level: log::Level, line: std::fmt::Arguments<'_>) {
    WRITING.with(|writing| writing.set(true));
    log::log!(target: target, level, "{line}");
    WRITING.with(|writing| writing.set(false));
}

/// Whether the line being logged on this thread is a summarized log's own.
pub(crate) fn writing_summarized_line() -> bool {
    WRITING.with(Cell::get)
}

/// Writes every summary due now, whatever the time (tests).
#[cfg(test)]
pub(crate) fn write_all_summaries() {
    for log in logs_with_events() {
        log.write_summary();
    }
}

/// The logs with events, for the thread that writes their summaries.
static TICKER: OnceLock<Mutex<Vec<&'static SummarizedLog>>> = OnceLock::new();

fn logs_with_events() -> Vec<&'static SummarizedLog> {
    TICKER
        .get()
        .map(|logs| logs.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .unwrap_or_default()
}

/// The coarse monotonic clock in whole seconds, never 0 (0 means "never written").
fn now_secs() -> u64 {
    coarse_seconds() + 1
}
