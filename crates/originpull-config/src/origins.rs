//! Origins: the `origins:` list of a bucket or rule (address, protocol, weight, backup), origin
//! addresses (`host[:port]` with a domain, an IPv4 address or a bracketed IPv6 address), and the
//! host-name rules they (and `domain_suffix`) follow.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::errors::Errors;
use super::hostname::is_valid_hostname;
use super::section::Section;

/// The scheme copies and redirects use towards an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Https,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Http => 80,
            Protocol::Https => 443,
        }
    }
}

/// An origin server address: `host[:port]` and the protocol spoken to it; no path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginAddr {
    pub protocol: Protocol,
    /// `host` or `host:port`, the port only when it is not the protocol's default; what the
    /// 302 `Location` and the copy's `Host` carry.
    pub authority: String,
    pub host: OriginHost,
    pub port: u16,
}

impl OriginAddr {
    /// `scheme://authority`: how logs and metrics name the origin.
    pub fn url_base(&self) -> String {
        format!("{}://{}", self.protocol.as_str(), self.authority)
    }

    /// The host as TLS names it (SNI, certificate check): the domain or the IP address.
    pub fn host_text(&self) -> String {
        match &self.host {
            OriginHost::Domain(name) => name.clone(),
            OriginHost::Ipv4(ip) => ip.to_string(),
            OriginHost::Ipv6(ip) => ip.to_string(),
        }
    }
}

impl fmt::Display for OriginAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.protocol.as_str(), self.authority)
    }
}

/// One entry of `origins:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginConfig {
    pub addr: OriginAddr,
    /// Share among the primaries; at least 1.
    pub weight: u32,
    /// Used only while every primary is down.
    pub backup: bool,
}

const ORIGIN_KEYS: &[&str] = &["address", "protocol", "weight", "backup"];

/// The largest `weight`: the weighted table holds one slot per unit of weight.
const MAX_WEIGHT: u64 = 100;

/// Reads an `origins:` list at `field` (e.g. `origin_pull.origins`, `origin_pull.rules[1].origins`).
/// An empty or absent list gives an empty vector; the caller decides whether that is allowed.
pub(crate) fn parse_origins(
    section: &Section<'_>,
    key: &str,
    errors: &mut Errors,
) -> Option<Vec<OriginConfig>> {
    let field = section.field(key);
    let mut origins = Vec::new();
    let shape = (
        "a list of origins, e.g. [{address: abc.example.com, protocol: https}]",
        "a mapping with `address` (and optionally protocol, weight, backup)",
    );
    section.each_mapping(key, ORIGIN_KEYS, shape, errors, |origin, errors| {
        let protocol = match origin.typed::<String>("protocol", errors).as_deref() {
            None | Some("http") => Protocol::Http,
            Some("https") => Protocol::Https,
            Some(other) => {
                errors.push(
                    &origin.scope,
                    &origin.field("protocol"),
                    format!("`{other}` is not a protocol; use http or https"),
                );
                Protocol::Http
            }
        };
        let weight = match origin.typed::<u64>("weight", errors) {
            None => 1,
            Some(w) if (1..=MAX_WEIGHT).contains(&w) => w as u32,
            Some(w) => {
                errors.push(
                    &origin.scope,
                    &origin.field("weight"),
                    format!("{w} is out of range; a weight is 1 to {MAX_WEIGHT}"),
                );
                1
            }
        };
        let backup = origin.typed::<bool>("backup", errors).unwrap_or(false);
        let addr = match origin.typed::<String>("address", errors) {
            None => {
                errors.push(
                    &origin.scope,
                    &origin.field("address"),
                    format!("is required; {HINT}"),
                );
                return;
            }
            Some(text) => match parse_origin_with(&text, protocol) {
                Ok(addr) => addr,
                Err(why) => {
                    errors.push(&origin.scope, &origin.field("address"), why);
                    return;
                }
            },
        };
        origins.push(OriginConfig {
            addr,
            weight,
            backup,
        });
    })?;
    if !origins.is_empty() && origins.iter().all(|o| o.backup) {
        errors.push(
            &section.scope,
            &field,
            "every origin is a backup; at least one must be a primary (backup: false)",
        );
    }
    Some(origins)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OriginHost {
    Domain(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

/// How to write an origin, appended to every origin error.
pub(crate) const HINT: &str = "enter only host[:port], e.g. abc.example.com, abc.example.com:8080, 10.10.10.10:8080 or [::1]:8080";

/// Parses a plain-HTTP origin address (the `origin:` shorthand); see [`parse_origin_with`].
pub fn parse_origin(text: &str) -> Result<OriginAddr, String> {
    parse_origin_with(text, Protocol::Http)
}

/// Parses an origin server address: `host[:port]` with a domain, an IPv4 address or a bracketed
/// IPv6 address; the port defaults to the protocol's. The error text tells the user what to
/// enter instead.
pub fn parse_origin_with(text: &str, protocol: Protocol) -> Result<OriginAddr, String> {
    if text.contains("://") {
        return Err(format!(
            "`{text}` has a scheme; give the scheme as `protocol: http|https` and {HINT}"
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
        None => protocol.default_port(),
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

    let host_part = match &host {
        OriginHost::Domain(name) => name.clone(),
        OriginHost::Ipv4(ip) => ip.to_string(),
        OriginHost::Ipv6(ip) => format!("[{ip}]"),
    };
    let authority = if port == protocol.default_port() {
        host_part
    } else {
        format!("{host_part}:{port}")
    };
    Ok(OriginAddr {
        protocol,
        authority,
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
