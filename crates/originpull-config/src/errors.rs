//! Configuration errors: each names its scope (the bucket, rule or section), the field and what
//! is wrong; [`Errors`] is the one place that collects them while a file is read, so a single
//! typo never hides the other errors.

use std::fmt;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: `bucket "example-1250000000"`, `fill`, or `top level`.
    pub scope: String,
    /// The key, e.g. `origin_pull.origin`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.scope, self.field, self.message)
    }
}

/// Every error found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<ConfigError>);

impl Errors {
    pub(crate) fn push(&mut self, scope: &str, field: &str, message: impl Into<String>) {
        self.0.push(ConfigError {
            scope: scope.to_string(),
            field: field.to_string(),
            message: message.into(),
        });
    }
}
