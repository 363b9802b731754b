//! The properties the configuration loader and the origin parser promise for any input,
//! written once as checks that the property tests (`tests/properties.rs`) and the fuzz target
//! `config_loader` (`fuzz/`) run: an `Err` is a bug in originpull, never in the input.

use crate::{parse_origin_with, Config, Protocol};

/// What a check found broken, with the input that broke it.
pub type Violation = String;

/// The origin parser: `text` is refused, or its authority is visible ASCII without user info,
/// path, query or fragment, and parses back to the same origin.
pub fn origin_round_trips(text: &str, protocol: Protocol) -> Result<(), Violation> {
    let Ok(origin) = parse_origin_with(text, protocol) else {
        return Ok(());
    };
    let authority = &origin.authority;
    if authority.is_empty()
        || authority
            .bytes()
            .any(|b| !b.is_ascii_graphic() || b"/?#@\\".contains(&b))
    {
        return Err(format!("{text:?} gave authority {authority:?}"));
    }
    let again = parse_origin_with(authority, protocol);
    if again.as_ref() != Ok(&origin) {
        return Err(format!(
            "{text:?} is {origin:?}, but its authority parses to {again:?}"
        ));
    }
    Ok(())
}

/// The configuration loader: any text is a configuration or a non-empty list of errors, each
/// with a scope and a message.
pub fn config_text_is_a_config_or_named_errors(text: &str) -> Result<(), Violation> {
    match Config::parse(text) {
        Ok(_) => Ok(()),
        Err(errors) if errors.0.is_empty() => Err(format!("{text:?} refused without an error")),
        Err(errors) => match errors
            .0
            .iter()
            .find(|e| e.scope.is_empty() || e.message.is_empty())
        {
            Some(error) => Err(format!(
                "{text:?}: error without scope or message: {error:?}"
            )),
            None => Ok(()),
        },
    }
}

/// One bucket with origin-pull, one origin and one rule, its fields as given: what the bucket
/// part of the configuration loader is checked with.
#[derive(Debug, Clone)]
pub struct GeneratedBucket<'a> {
    pub name: &'a str,
    pub origin: &'a str,
    pub protocol: &'a str,
    pub weight: u32,
    pub prefix: &'a str,
    pub redirect_code: u16,
}

impl GeneratedBucket<'_> {
    /// A whole configuration file with this bucket; every string field is a YAML double-quoted
    /// scalar, so the file is valid YAML whatever the fields hold.
    pub fn config_text(&self) -> String {
        format!(
            "listen: 127.0.0.1:8080\ndata_dir: ./d\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - name: {}\n    origin_pull:\n      enabled: true\n      origins:\n        - address: {}\n          protocol: {}\n          weight: {}\n      rules:\n        - prefix: {}\n          redirect_code: {}\n",
            yaml_quoted(self.name),
            yaml_quoted(self.origin),
            yaml_quoted(self.protocol),
            self.weight,
            yaml_quoted(self.prefix),
            self.redirect_code,
        )
    }

    /// The file parses to this bucket (its name, a weight of at least 1), or every error names
    /// the bucket: by name, or by position when it has no usable name.
    pub fn parses_or_names_its_bucket(&self) -> Result<(), Violation> {
        let text = self.config_text();
        match Config::parse(&text) {
            Ok(config) => {
                let Some(bucket) = config.buckets.first() else {
                    return Err(format!("{text:?} parsed without its bucket"));
                };
                if bucket.name != self.name {
                    return Err(format!("{text:?} parsed to bucket {:?}", bucket.name));
                }
                match &bucket.origin_pull {
                    Some(pull) if pull.origins.first().is_some_and(|o| o.weight >= 1) => Ok(()),
                    other => Err(format!("{text:?} parsed to origin-pull {other:?}")),
                }
            }
            Err(errors) => match errors
                .0
                .iter()
                .find(|e| !(e.scope.contains(self.name) || e.scope.starts_with("buckets[")))
            {
                Some(error) => Err(format!("{text:?}: error not naming the bucket: {error}")),
                None => Ok(()),
            },
        }
    }
}

/// `text` as a YAML double-quoted scalar: printable ASCII as itself, everything else escaped.
fn yaml_quoted(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            ' '..='~' => quoted.push(c),
            _ => quoted.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_yaml_reads_back_as_the_same_string() {
        for text in [
            "",
            "a'b",
            "a\"b\\c",
            "中\u{7f}\u{0}\n\u{feff}\u{10ffff}",
            "{x: [1]}",
        ] {
            let value: String = serde_yaml::from_str(&yaml_quoted(text)).unwrap();
            assert_eq!(value, text);
        }
    }
}
