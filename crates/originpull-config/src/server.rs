//! `server:`: process-level settings handed to Pingora and to the connection handling in
//! [`crate::connection`]; they take effect only at start.

use super::errors::Errors;
use super::section::Section;

/// The smallest `max_header_bytes` accepted: below it, ordinary browser requests would fail.
pub const MIN_HEADER_BYTES: u64 = 1024;

/// Process-level settings; they take effect only at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period_secs: u64,
    pub graceful_shutdown_timeout_secs: u64,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    /// How long an idle keep-alive connection waits for its next request.
    pub keepalive_timeout_secs: u64,
    /// How long a client has to send a whole request head.
    pub header_timeout_secs: u64,
    /// The largest request head (request line and headers) accepted; 431 beyond it.
    pub max_header_bytes: usize,
    /// Client connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// While writes to a client wait for it, it must take 256 KiB within this long, else the
    /// connection is closed: a client that stops reading cannot hold a file, memory and a
    /// connection forever.
    pub send_timeout_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: 2,
            grace_period_secs: 30,
            graceful_shutdown_timeout_secs: 10,
            pid_file: None,
            upgrade_sock: None,
            keepalive_timeout_secs: 60,
            header_timeout_secs: 15,
            max_header_bytes: 32 * 1024,
            max_connections: 10_000,
            send_timeout_secs: 60,
        }
    }
}

const SERVER_KEYS: &[&str] = &[
    "threads",
    "grace_period_secs",
    "graceful_shutdown_timeout_secs",
    "pid_file",
    "upgrade_sock",
    "keepalive_timeout_secs",
    "header_timeout_secs",
    "max_header_bytes",
    "max_connections",
    "send_timeout_secs",
];

pub(crate) fn parse_server(top: &Section<'_>, errors: &mut Errors) -> ServerSettings {
    let defaults = ServerSettings::default();
    let Some(server) = top.nested("server", SERVER_KEYS, "server.", errors) else {
        return defaults;
    };
    let mut max_header_bytes =
        server.positive("max_header_bytes", defaults.max_header_bytes as u64, errors);
    if max_header_bytes < MIN_HEADER_BYTES {
        errors.push(
            &server.scope,
            &server.field("max_header_bytes"),
            format!("must be at least {MIN_HEADER_BYTES}"),
        );
        max_header_bytes = defaults.max_header_bytes as u64;
    }
    ServerSettings {
        threads: server.positive("threads", defaults.threads as u64, errors) as usize,
        grace_period_secs: server
            .typed("grace_period_secs", errors)
            .unwrap_or(defaults.grace_period_secs),
        graceful_shutdown_timeout_secs: server
            .typed("graceful_shutdown_timeout_secs", errors)
            .unwrap_or(defaults.graceful_shutdown_timeout_secs),
        pid_file: server.typed("pid_file", errors),
        upgrade_sock: server.typed("upgrade_sock", errors),
        keepalive_timeout_secs: server.positive(
            "keepalive_timeout_secs",
            defaults.keepalive_timeout_secs,
            errors,
        ),
        header_timeout_secs: server.positive(
            "header_timeout_secs",
            defaults.header_timeout_secs,
            errors,
        ),
        max_header_bytes: max_header_bytes as usize,
        max_connections: server.positive("max_connections", defaults.max_connections as u64, errors)
            as usize,
        send_timeout_secs: server.positive("send_timeout_secs", defaults.send_timeout_secs, errors),
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, ServerSettings};

    fn with_server(server: &str) -> String {
        format!("listen: 127.0.0.1:8080\ndata_dir: ./data\ndomain_suffix: file.myqcloud.com\nserver:\n{server}buckets: []\n")
    }

    #[test]
    fn connection_settings_default_and_parse() {
        let config = Config::parse(&with_server("  threads: 2\n")).unwrap();
        assert_eq!(config.server, ServerSettings::default());
        assert_eq!(config.server.keepalive_timeout_secs, 60);
        assert_eq!(config.server.header_timeout_secs, 15);
        assert_eq!(config.server.max_header_bytes, 32 * 1024);

        let config = Config::parse(&with_server(
            "  keepalive_timeout_secs: 5\n  header_timeout_secs: 3\n  max_header_bytes: 8192\n  max_connections: 100\n  send_timeout_secs: 7\n",
        ))
        .unwrap();
        assert_eq!(config.server.send_timeout_secs, 7);
        assert_eq!(config.server.keepalive_timeout_secs, 5);
        assert_eq!(config.server.header_timeout_secs, 3);
        assert_eq!(config.server.max_header_bytes, 8192);
        assert_eq!(config.server.max_connections, 100);
    }

    #[test]
    fn connection_settings_errors_name_the_field() {
        let text = Config::parse(&with_server(
            "  keepalive_timeout_secs: 0\n  header_timeout_secs: -1\n  max_header_bytes: 100\n  max_connections: 0\n  send_timeout_secs: 0\n",
        ))
        .unwrap_err()
        .to_string();
        for field in [
            "server.keepalive_timeout_secs: must be greater than 0",
            "server.header_timeout_secs:",
            "server.max_header_bytes: must be at least 1024",
            "server.max_connections: must be greater than 0",
            "server.send_timeout_secs: must be greater than 0",
        ] {
            assert!(text.contains(field), "{field} missing from:\n{text}");
        }
    }
}
