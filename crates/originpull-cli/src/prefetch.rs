//! `originpull prefetch`: the command-line client of the admin API's prefetch job. It submits a
//! list of keys (or origin URLs) to a running server, follows the job with a progress bar
//! (objects, bytes, rate, ETA; plain lines when stderr is not a terminal) and exits 0 when every
//! key is in the bucket, 1 otherwise, listing the failed keys with their reasons on stderr.
//!
//! The server does the work (through the same scheduler as misses); this client only talks
//! HTTP/1 to the admin listener, so running it again copies only what is still missing.

use std::fmt::Write as FmtWrite;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use serde::Deserialize;

use originpull_config::read_token_file;

/// How often the job is asked for its counters.
const POLL_EVERY: Duration = Duration::from_millis(300);
/// How often a plain progress line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// What the command was asked to do.
pub struct PrefetchArgs {
    /// The admin listener's base URL, e.g. `http://127.0.0.1:9180`.
    pub admin: String,
    pub token_file: PathBuf,
    pub bucket: String,
    /// Copies started per second at most.
    pub rate: Option<u64>,
    /// A file of keys or URLs, one per line; `-` for standard input.
    pub keys: PathBuf,
}

/// The admin API's job, as far as this client reads it.
#[derive(Debug, Deserialize)]
struct JobView {
    id: u64,
    state: String,
    total: u64,
    done: u64,
    stored: u64,
    already_present: u64,
    failed: u64,
    bytes: u64,
    failures: Vec<Failure>,
    failures_count: u64,
}

#[derive(Debug, Deserialize)]
struct Failure {
    key: String,
    reason: String,
}

/// Runs the command; `Ok(true)` when every key is stored.
pub fn run(args: &PrefetchArgs) -> Result<bool, String> {
    let token = read_token_file(&args.token_file)?;
    let keys = read_keys(&args.keys)?;
    let base = args.admin.trim_end_matches('/');
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(300))
        .build();
    let mut url = format!("{base}/v1/buckets/{}/prefetch", args.bucket);
    if let Some(rate) = args.rate {
        url.push_str(&format!("?rate={rate}"));
    }
    let auth = format!("Bearer {token}");
    let submitted = agent
        .post(&url)
        .set("Authorization", &auth)
        .set("Content-Type", "text/plain; charset=utf-8")
        .send_string(&keys);
    let mut job: JobView = parse_answer(submitted)?;
    let job_url = format!("{base}/v1/jobs/{}", job.id);

    let display = Display::new(job.total);
    loop {
        display.show(&job);
        if job.state != "running" {
            break;
        }
        std::thread::sleep(POLL_EVERY);
        job = parse_answer(agent.get(&job_url).set("Authorization", &auth).call())?;
    }
    display.finish(&job);

    for failure in &job.failures {
        eprintln!("failed: {}: {}", failure.key, failure.reason);
    }
    let unlisted = job.failures_count.saturating_sub(job.failures.len() as u64);
    if unlisted > 0 {
        eprintln!("... and {unlisted} more failed keys (see the server's log)");
    }
    eprintln!(
        "prefetch job {} {}: {} keys, {} copied ({}), {} already present, {} failed",
        job.id,
        job.state,
        job.total,
        job.stored,
        indicatif::HumanBytes(job.bytes),
        job.already_present,
        job.failed
    );
    Ok(job.state == "done" && job.failed == 0)
}

fn read_keys(path: &Path) -> Result<String, String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the keys from standard input: {e}"))?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    }
    Ok(text)
}

fn parse_answer(answer: Result<ureq::Response, ureq::Error>) -> Result<JobView, String> {
    match answer {
        Ok(response) => {
            let text = response
                .into_string()
                .map_err(|e| format!("cannot read the admin API's answer: {e}"))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("unexpected answer from the admin API ({e}): {text}"))
        }
        Err(ureq::Error::Status(status, response)) => {
            let text = response.into_string().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            Err(format!("the admin API answered {status}: {message}"))
        }
        Err(e) => Err(format!("cannot reach the admin API: {e}")),
    }
}

/// A progress bar on a terminal, plain lines otherwise.
enum Display {
    Bar {
        bar: ProgressBar,
        /// What the bar shows beside its position, set before the one redraw of each poll.
        counts: Arc<Mutex<Counts>>,
    },
    Plain {
        last: std::cell::Cell<Option<Instant>>,
    },
}

/// A job's counters beside the objects done, as the bar shows them.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    stored: u64,
    bytes: u64,
    already_present: u64,
    failed: u64,
}

impl Counts {
    fn of(job: &JobView) -> Counts {
        Counts {
            stored: job.stored,
            bytes: job.bytes,
            already_present: job.already_present,
            failed: job.failed,
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} copied ({})",
            self.stored,
            indicatif::HumanBytes(self.bytes)
        )?;
        if self.already_present > 0 {
            write!(f, ", {} already present", self.already_present)?;
        }
        if self.failed > 0 {
            write!(f, ", {} failed", self.failed)?;
        }
        Ok(())
    }
}

/// Objects per second as a person reads it: whole numbers from 10 up, one decimal below
/// (`89/s`, `2.5/s`), instead of indicatif's four decimals.
fn rate_text(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "0/s".to_string()
    } else if per_sec >= 9.95 {
        format!("{per_sec:.0}/s")
    } else {
        format!("{per_sec:.1}/s")
    }
}

impl Display {
    fn new(total: u64) -> Display {
        if !std::io::stderr().is_terminal() {
            return Display::Plain {
                last: std::cell::Cell::new(None),
            };
        }
        let counts = Arc::new(Mutex::new(Counts::default()));
        let shown = counts.clone();
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{bar:30} {pos}/{len} objects  {counts}  {rate}  ETA {eta}",
        )
        .map(|style| {
            style
                .with_key("counts", move |_: &ProgressState, w: &mut dyn FmtWrite| {
                    let counts = *shown.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = write!(w, "{counts}");
                })
                .with_key("rate", |state: &ProgressState, w: &mut dyn FmtWrite| {
                    let _ = w.write_str(&rate_text(state.per_sec()));
                })
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Display::Bar { bar, counts }
    }

    fn show(&self, job: &JobView) {
        match self {
            Display::Bar { bar, counts } => {
                // The counts first, then one redraw with the position: setting the position
                // and the message one after the other drew a frame with the new object count
                // and the old bytes ("27/500 objects 0 B copied").
                *counts.lock().unwrap_or_else(|p| p.into_inner()) = Counts::of(job);
                bar.update(|state| {
                    state.set_len(job.total);
                    state.set_pos(job.done);
                });
            }
            Display::Plain { last } => {
                if last.get().is_none_or(|at| at.elapsed() >= PLAIN_EVERY) {
                    last.set(Some(Instant::now()));
                    eprintln!(
                        "prefetch job {}: {}/{} done, {} copied ({}), {} already present, {} failed",
                        job.id,
                        job.done,
                        job.total,
                        job.stored,
                        indicatif::HumanBytes(job.bytes),
                        job.already_present,
                        job.failed
                    );
                }
            }
        }
    }

    fn finish(&self, job: &JobView) {
        if let Display::Bar { bar, counts } = self {
            *counts.lock().unwrap_or_else(|p| p.into_inner()) = Counts::of(job);
            bar.update(|state| state.set_pos(job.done));
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_rounded_for_reading() {
        assert_eq!(rate_text(89.3963), "89/s");
        assert_eq!(rate_text(1321.4), "1321/s");
        assert_eq!(rate_text(9.96), "10/s");
        assert_eq!(rate_text(2.54), "2.5/s");
        assert_eq!(rate_text(0.0), "0/s");
        assert_eq!(rate_text(f64::NAN), "0/s");
    }
}
