//! Reading one YAML mapping of the configuration: typed values, nested sections, unknown-key
//! detection, with every error reported under the section's scope and key prefix.

use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::errors::Errors;
use super::hostname::is_valid_hostname;

/// A YAML mapping being read, with the scope and key prefix its errors are reported under.
pub(crate) struct Section<'a> {
    pub(crate) scope: String,
    prefix: &'a str,
    map: &'a Mapping,
}

impl<'a> Section<'a> {
    /// Reports keys that are not in `known` (typos) right away.
    pub(crate) fn new(
        scope: impl Into<String>,
        prefix: &'a str,
        map: &'a Mapping,
        known: &[&str],
        errors: &mut Errors,
    ) -> Section<'a> {
        let section = Section {
            scope: scope.into(),
            prefix,
            map,
        };
        for key in map.keys() {
            match key.as_str() {
                Some(k) if known.contains(&k) => {}
                Some(k) => errors.push(
                    &section.scope,
                    &section.field(k),
                    format!("unknown key; expected one of: {}", known.join(", ")),
                ),
                None => errors.push(&section.scope, prefix, "keys must be strings"),
            }
        }
        section
    }

    pub(crate) fn field(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn typed<T: DeserializeOwned>(&self, key: &str, errors: &mut Errors) -> Option<T> {
        let value = self.get(key)?;
        match serde_yaml::from_value::<T>(value.clone()) {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(
                    &self.scope,
                    &self.field(key),
                    format!("invalid value: {}", strip_yaml_location(&e.to_string())),
                );
                None
            }
        }
    }

    /// Reads `key` as a list of mappings, calling `each` with every item as a section whose
    /// fields are named `<key>[<index>].<field>`. A value that is no list, or an item that is no
    /// mapping, is reported with `list` or `item`, which say what was expected. Returns the number
    /// of items, or `None` when the key is absent.
    pub(crate) fn each_mapping(
        &self,
        key: &str,
        known: &[&str],
        (list, item): (&str, &str),
        errors: &mut Errors,
        mut each: impl FnMut(&Section<'_>, &mut Errors),
    ) -> Option<usize> {
        let field = self.field(key);
        let Some(items) = self.get(key)?.as_sequence() else {
            errors.push(&self.scope, &field, format!("expected {list}"));
            return Some(0);
        };
        for (index, value) in items.iter().enumerate() {
            let Some(map) = value.as_mapping() else {
                errors.push(
                    &self.scope,
                    &format!("{field}[{index}]"),
                    format!("expected {item}"),
                );
                continue;
            };
            let prefix = format!("{field}[{index}].");
            let section = Section::new(self.scope.clone(), &prefix, map, known, errors);
            each(&section, errors);
        }
        Some(items.len())
    }

    pub(crate) fn nested(
        &self,
        key: &str,
        known: &[&str],
        prefix: &'a str,
        errors: &mut Errors,
    ) -> Option<Section<'a>> {
        let value = self.get(key)?;
        match value.as_mapping() {
            Some(map) => Some(Section::new(self.scope.clone(), prefix, map, known, errors)),
            None => {
                errors.push(&self.scope, &self.field(key), "expected a mapping of keys");
                None
            }
        }
    }

    pub(crate) fn socket_addr(
        &self,
        key: &str,
        errors: &mut Errors,
        required: bool,
    ) -> Option<SocketAddr> {
        if self.get(key).is_none() {
            if required {
                errors.push(
                    &self.scope,
                    &self.field(key),
                    "is required, e.g. 127.0.0.1:8080",
                );
            }
            return None;
        }
        let text = self.typed::<String>(key, errors)?;
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                errors.push(
                    &self.scope,
                    &self.field(key),
                    format!("`{text}` is not an IP:port address, e.g. 127.0.0.1:8080 or [::]:8080"),
                );
                None
            }
        }
    }

    pub(crate) fn domain_suffix(&self, errors: &mut Errors) -> Option<String> {
        if self.get("domain_suffix").is_none() {
            errors.push(
                &self.scope,
                "domain_suffix",
                "is required, e.g. file.myqcloud.com (buckets are served at <name>.<domain_suffix>)",
            );
            return None;
        }
        let raw = self.typed::<String>("domain_suffix", errors)?;
        let suffix = raw.trim_matches('.').to_ascii_lowercase();
        if !is_valid_hostname(&suffix) {
            errors.push(
                &self.scope,
                "domain_suffix",
                format!("`{raw}` is not a valid domain name"),
            );
            return None;
        }
        Some(suffix)
    }

    pub(crate) fn at_most(&self, key: &str, max: u64, errors: &mut Errors) -> Option<u64> {
        let value = self.typed::<u64>(key, errors)?;
        if value > max {
            errors.push(
                &self.scope,
                &self.field(key),
                format!("must be at most {max}"),
            );
            return None;
        }
        Some(value)
    }

    pub(crate) fn positive(&self, key: &str, default: u64, errors: &mut Errors) -> u64 {
        match self.typed::<u64>(key, errors) {
            Some(0) => {
                errors.push(&self.scope, &self.field(key), "must be greater than 0");
                default
            }
            Some(v) => v,
            None => default,
        }
    }
}

/// serde_yaml appends "at line L column C" relative to a detached value, which would mislead.
pub(crate) fn strip_yaml_location(message: &str) -> &str {
    message.split(" at line ").next().unwrap_or(message)
}
