//! Origin addresses: `host[:port]` with a domain, an IPv4 address or a bracketed IPv6 address,
//! and the host-name rules they (and `domain_suffix`) follow.

use std::net::{Ipv4Addr, Ipv6Addr};

/// An origin server address as the user wrote it: `host[:port]`, no scheme, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginAddr {
    /// Exactly as configured; this is what the 302 `Location` and the copy's `Host` carry.
    pub authority: String,
    pub host: OriginHost,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginHost {
    Domain(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

/// How to write an origin, appended to every origin error.
pub(crate) const HINT: &str = "enter only host[:port], e.g. abc.example.com, abc.example.com:8080, 10.10.10.10:8080 or [::1]:8080";

/// Parses an origin server address: `host[:port]` with a domain, an IPv4 address or a bracketed
/// IPv6 address. The error text tells the user what to enter instead.
pub fn parse_origin(text: &str) -> Result<OriginAddr, String> {
    if text.contains("://") {
        return Err(format!(
            "`{text}` has a scheme; origin-pull always uses http, {HINT}"
        ));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!("`{}` contains spaces; {HINT}", text.escape_debug()));
    }
    if text.contains('@') {
        return Err(format!("`{text}` contains user info (`@`); {HINT}"));
    }
    if text.contains(['/', '?', '#', '\\']) {
        return Err(format!("`{text}` contains a path or query; {HINT}"));
    }
    if text.bytes().any(|b| b.is_ascii_control() || !b.is_ascii()) {
        return Err(format!(
            "`{}` contains control or non-ASCII characters (use the punycode form of an international domain); {HINT}",
            text.escape_debug()
        ));
    }

    let (host_text, port_text) = if let Some(rest) = text.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!("`{text}` opens `[` without closing `]`; {HINT}"));
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(format!("`{text}` has characters after `]`; {HINT}")),
            },
        };
        (inside, port)
    } else {
        match text.matches(':').count() {
            0 => (text, None),
            1 => {
                let (h, p) = text.split_once(':').unwrap_or((text, ""));
                (h, Some(p))
            }
            _ => {
                return Err(format!(
                    "`{text}` looks like an IPv6 address: write it in brackets, e.g. [::1]:8080"
                ))
            }
        }
    };

    let port = match port_text {
        None => 80,
        Some(p) => {
            parse_port(p).map_err(|why| format!("`{text}` has a bad port: {why}; {HINT}"))?
        }
    };

    let host = if text.starts_with('[') {
        match host_text.parse::<Ipv6Addr>() {
            Ok(ip) => OriginHost::Ipv6(ip),
            Err(_) => return Err(format!("`{host_text}` is not a valid IPv6 address; {HINT}")),
        }
    } else if let Ok(ip) = host_text.parse::<Ipv4Addr>() {
        OriginHost::Ipv4(ip)
    } else if host_text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("`{host_text}` is not a valid IPv4 address; {HINT}"));
    } else if is_valid_hostname(host_text.trim_end_matches('.')) {
        OriginHost::Domain(host_text.trim_end_matches('.').to_ascii_lowercase())
    } else {
        return Err(format!("`{host_text}` is not a valid host name; {HINT}"));
    };

    Ok(OriginAddr {
        authority: text.to_string(),
        host,
        port,
    })
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err("empty port after `:`".into());
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a number"));
    }
    match text.parse::<u32>() {
        Ok(0) => Err("port 0 is not a port".into()),
        Ok(p) if p <= 65_535 => Ok(p as u16),
        _ => Err(format!("`{text}` is above 65535")),
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens; the last label
/// is not all digits (that would be a mistyped IPv4 address).
pub fn is_valid_hostname(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    let last_label_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_label_numeric
}
