//! `admin_listen` and `admin_token_file`: where the admin API listens and the file holding the
//! bearer token it requires. The token file is read at start, by `-t`, and again on every reload;
//! it must exist, hold a non-empty first line, and not be readable by everyone.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::errors::Errors;
use super::section::Section;

/// The admin API's settings; absent when `admin_listen` is not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token_file: PathBuf,
}

impl AdminSettings {
    /// The token, checked as `-t` checks it.
    pub fn read_token(&self) -> Result<String, String> {
        read_token_file(&self.token_file)
    }
}

pub(crate) fn parse_admin(top: &Section<'_>, errors: &mut Errors) -> Option<AdminSettings> {
    let listen = top.socket_addr("admin_listen", errors, false);
    let token_file = top.typed::<String>("admin_token_file", errors);
    match (listen, token_file) {
        (Some(listen), Some(file)) if !file.trim().is_empty() => Some(AdminSettings {
            listen,
            token_file: PathBuf::from(file),
        }),
        (Some(_), _) => {
            errors.push(
                &top.scope,
                "admin_token_file",
                "is required with admin_listen: a file holding the admin API's bearer token on one line",
            );
            None
        }
        (None, Some(_)) => {
            errors.push(
                &top.scope,
                "admin_token_file",
                "has no effect without admin_listen; set both or neither",
            );
            None
        }
        (None, None) => None,
    }
}

/// Reads the token: the file's first line, trimmed. Refuses a missing or empty file, and one
/// that every user of the machine could read (the token would not be a secret).
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(format!(
            "{shown}: is readable by every user; restrict it (chmod 600 or 640)"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!(
            "{shown}: is empty; put the token on its first line"
        ));
    }
    Ok(token.to_string())
}
