//! What a host name is (RFC 1123), for every field that names one: origins, `domain_suffix`,
//! a bucket's `domains`; and how two names are compared (a request's host, a certificate's).

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

/// A DNS name as names are compared (a bucket's domains, a certificate's names, a TLS client's
/// SNI, a request's `:authority`): lower-case, without one trailing dot.
pub fn normalize_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_lower_case_without_one_trailing_dot() {
        assert_eq!(
            normalize_name("A-1.File.MyQcloud.com."),
            "a-1.file.myqcloud.com"
        );
        assert_eq!(normalize_name("a.example.."), "a.example.");
    }
}
