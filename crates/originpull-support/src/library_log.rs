//! The process's logger, around the one that formats and filters (env_logger in the binary):
//! WARN and ERROR lines from the libraries originpull runs on (Pingora, rustls, h2...) are
//! summarized per module and level, as [`SummarizedLog`] does for originpull's own events,
//! because a client can make some of them happen on every request (Pingora's connection pool
//! writes an ERROR when two copies race for one pooled connection). Every such line is counted
//! for a metric, written or not. originpull's own lines, and the libraries' INFO and below,
//! pass through unchanged.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use log::{Level, Log, Metadata, Record};

use crate::log_summary::{writing_summarized_line, SummarizedLog};

/// Modules and levels given a summary of their own at most; lines from any further ones share
/// one summary per level (the libraries have far fewer modules that warn than this).
const MAX_SUMMARIZED_SOURCES: usize = 64;

/// The logger to install: `inner` formats, filters and writes; `count_line` is called once per
/// library WARN or ERROR line that `inner` would write (for the metric).
pub struct SummarizingLogger {
    inner: Box<dyn Log>,
    count_line: fn(Level),
}

impl SummarizingLogger {
    pub fn new(inner: Box<dyn Log>, count_line: fn(Level)) -> SummarizingLogger {
        SummarizingLogger { inner, count_line }
    }
}

impl Log for SummarizingLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if record.level() > Level::Warn
            || is_originpulls(record.target())
            || writing_summarized_line()
        {
            return self.inner.log(record);
        }
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        (self.count_line)(record.level());
        match summary_for(record.target(), record.level()) {
            Some(summary) => summary.note(|| record.args().to_string()),
            None => other_sources(record.level())
                .note(|| format!("{}: {}", record.target(), record.args())),
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// originpull's crates (`originpull_server::...`) and its binary (`originpull`).
fn is_originpulls(target: &str) -> bool {
    target
        .strip_prefix("originpull")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::") || rest.starts_with('_'))
}

/// The summary of `target`'s lines at `level`, made on its first line; `None` once
/// [`MAX_SUMMARIZED_SOURCES`] exist. Each is leaked: they live as long as the process, as the
/// static ones do, and there are a bounded number of them.
fn summary_for(target: &str, level: Level) -> Option<&'static SummarizedLog> {
    /// Per level (ERROR, WARN), the summaries by module.
    type Summaries = [HashMap<String, &'static SummarizedLog>; 2];
    static SUMMARIES: LazyLock<Mutex<Summaries>> = LazyLock::new(Default::default);
    let mut summaries = SUMMARIES.lock().unwrap_or_else(|p| p.into_inner());
    let made: usize = summaries.iter().map(HashMap::len).sum();
    let of_level = &mut summaries[usize::from(level != Level::Error)];
    if let Some(summary) = of_level.get(target) {
        return Some(summary);
    }
    if made >= MAX_SUMMARIZED_SOURCES {
        return None;
    }
    let target: &'static str = Box::leak(target.to_owned().into_boxed_str());
    let what: &'static str = Box::leak(format!("{level} lines from {target}").into_boxed_str());
    let summary: &'static SummarizedLog =
        Box::leak(Box::new(SummarizedLog::new(level, target, what)));
    of_level.insert(target.to_owned(), summary);
    Some(summary)
}

fn other_sources(level: Level) -> &'static SummarizedLog {
    static ERRORS: SummarizedLog =
        SummarizedLog::new(Level::Error, module_path!(), "ERROR lines from libraries");
    static WARNINGS: SummarizedLog =
        SummarizedLog::new(Level::Warn, module_path!(), "WARN lines from libraries");
    match level {
        Level::Error => &ERRORS,
        _ => &WARNINGS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_summary::write_all_summaries;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// What the inner logger was given: (level, target, text).
    static WRITTEN: Mutex<Vec<(Level, String, String)>> = Mutex::new(Vec::new());
    static COUNTED: AtomicU64 = AtomicU64::new(0);

    struct Recorder;

    impl Log for Recorder {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.level() <= Level::Info
        }
        fn log(&self, record: &Record<'_>) {
            if self.enabled(record.metadata()) {
                WRITTEN.lock().unwrap().push((
                    record.level(),
                    record.target().to_owned(),
                    record.args().to_string(),
                ));
            }
        }
        fn flush(&self) {}
    }

    fn written_from(target: &str) -> Vec<(Level, String)> {
        WRITTEN
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t, _)| t == target)
            .map(|(level, _, text)| (*level, text.clone()))
            .collect()
    }

    // The only test that installs the process's logger (once per test binary).
    #[test]
    fn a_library_flooding_errors_writes_one_line_and_then_a_summary_and_counts_them_all() {
        log::set_boxed_logger(Box::new(SummarizingLogger::new(Box::new(Recorder), |_| {
            COUNTED.fetch_add(1, Ordering::Relaxed);
        })))
        .unwrap();
        log::set_max_level(log::LevelFilter::Trace);

        for i in 0..1000 {
            log::error!(target: "pingora_core::connectors", "failed to acquire reusable stream {i}");
        }
        log::info!(target: "pingora_core::server", "bootstrap");
        log::debug!(target: "pingora_core::server", "not written by the inner logger");
        for i in 0..3 {
            log::warn!(target: "originpull_server::pull::copy", "our own line {i}");
        }
        log::warn!(target: "originpull", "the binary's line");

        let pool = written_from("pingora_core::connectors");
        assert_eq!(
            pool,
            vec![(
                Level::Error,
                "failed to acquire reusable stream 0".to_owned()
            )],
            "only the first of the flood is written at once"
        );
        assert_eq!(
            COUNTED.load(Ordering::Relaxed),
            1000,
            "every line is counted"
        );
        assert_eq!(
            written_from("pingora_core::server"),
            vec![(Level::Info, "bootstrap".to_owned())],
            "a library's INFO passes through"
        );
        assert_eq!(written_from("originpull_server::pull::copy").len(), 3);
        assert_eq!(written_from("originpull").len(), 1);

        write_all_summaries();
        let pool = written_from("pingora_core::connectors");
        assert_eq!(pool.len(), 2, "{pool:?}");
        let (level, summary) = &pool[1];
        assert_eq!(*level, Level::Error);
        assert!(
            summary.starts_with("999 more ERROR lines from pingora_core::connectors in the last")
                && summary.contains("e.g. failed to acquire reusable stream 1 |"),
            "{summary}"
        );

        // Past the bound on sources (one made above), lines share one summary per level,
        // naming their module.
        for source in 1..MAX_SUMMARIZED_SOURCES {
            log::warn!(target: &format!("some_crate::m{source}"), "w");
        }
        assert_eq!(
            written_from("some_crate::m63"),
            vec![(Level::Warn, "w".to_owned())]
        );
        assert!(written_from("originpull_support::library_log").is_empty());
        log::warn!(target: "one_more_crate", "late");
        assert_eq!(
            written_from("originpull_support::library_log"),
            vec![(Level::Warn, "one_more_crate: late".to_owned())]
        );
    }
}
