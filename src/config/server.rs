//! `server:`: process-level settings handed to Pingora; they take effect only at start.

use super::errors::Errors;
use super::section::Section;

/// Process-level settings handed to Pingora; they take effect only at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period_secs: u64,
    pub graceful_shutdown_timeout_secs: u64,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: 2,
            grace_period_secs: 30,
            graceful_shutdown_timeout_secs: 10,
            pid_file: None,
            upgrade_sock: None,
        }
    }
}

const SERVER_KEYS: &[&str] = &[
    "threads",
    "grace_period_secs",
    "graceful_shutdown_timeout_secs",
    "pid_file",
    "upgrade_sock",
];

pub(crate) fn parse_server(top: &Section<'_>, errors: &mut Errors) -> ServerSettings {
    let defaults = ServerSettings::default();
    let Some(server) = top.nested("server", SERVER_KEYS, "server.", errors) else {
        return defaults;
    };
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
    }
}
