//! The access log: one line per request, in logfmt (`key=value`), to stderr, a file, or nowhere.
//!
//! Each line is written with one `write` call on an append-mode handle, so lines from many
//! threads never interleave and `logrotate`'s `copytruncate` works.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use originpull_config::AccessLogTarget;

pub enum AccessLog {
    Off,
    Stderr,
    File(File),
}

/// The fields of one line.
pub struct AccessRecord<'a> {
    pub time: SystemTime,
    pub client: Option<SocketAddr>,
    pub host: &'a str,
    pub bucket: &'a str,
    pub method: &'a str,
    pub key: &'a str,
    /// `scheme://authority` of the origin a redirect went to, or `-`.
    pub origin: &'a str,
    pub status: u16,
    pub result: &'a str,
    pub bytes: u64,
    pub duration: Duration,
    pub request_id: &'a str,
    /// The TLS version (`1.2`, `1.3`), or `-` over plain HTTP.
    pub tls: &'a str,
    /// `h1` or `h2`.
    pub proto: &'a str,
}

impl AccessLog {
    pub fn open(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        Ok(match target {
            AccessLogTarget::Off => AccessLog::Off,
            AccessLogTarget::Stderr => AccessLog::Stderr,
            AccessLogTarget::File(path) => AccessLog::File(open_append(path)?),
        })
    }

    pub fn is_off(&self) -> bool {
        matches!(self, AccessLog::Off)
    }

    pub fn write(&self, record: &AccessRecord<'_>) {
        let line = match self {
            AccessLog::Off => return,
            _ => format_line(record),
        };
        // A full disk or closed stderr must not fail requests; the metrics still count them.
        let _ = match self {
            AccessLog::Off => Ok(()),
            AccessLog::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
            AccessLog::File(file) => (&*file).write_all(line.as_bytes()),
        };
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

pub fn format_line(r: &AccessRecord<'_>) -> String {
    let mut line = String::with_capacity(256);
    let client = r
        .client
        .map(|c| c.to_string())
        .unwrap_or_else(|| "-".into());
    // Writing to a String cannot fail.
    let _ = write!(
        line,
        "time={} client={} host={} bucket={} method={} key={} status={} result={} origin={} bytes={} duration_ms={:.3} request_id={} tls={} proto={}",
        humantime::format_rfc3339_millis(r.time),
        client,
        quoted(r.host),
        quoted(r.bucket),
        quoted(r.method),
        quoted(r.key),
        r.status,
        r.result,
        r.origin,
        r.bytes,
        r.duration.as_secs_f64() * 1000.0,
        r.request_id,
        r.tls,
        r.proto,
    );
    line.push('\n');
    line
}

/// Quotes a client-controlled value so that it cannot break the line or fake another field.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_every_field_and_escapes_client_input() {
        let line = format_line(&AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            client: Some("127.0.0.1:5000".parse().unwrap()),
            host: "h\"x",
            bucket: "b-1",
            method: "GET",
            key: "a\nb",
            origin: "https://abc.example.com",
            status: 302,
            result: "redirect",
            bytes: 0,
            duration: Duration::from_micros(1500),
            request_id: "r1",
            tls: "1.3",
            proto: "h2",
        });
        assert_eq!(
            line,
            "time=1970-01-01T00:00:00.000Z client=127.0.0.1:5000 host=\"h\\\"x\" bucket=\"b-1\" method=\"GET\" key=\"a\\u{a}b\" status=302 result=redirect origin=https://abc.example.com bytes=0 duration_ms=1.500 request_id=r1 tls=1.3 proto=h2\n"
        );
    }
}
