//! What a host name is (RFC 1123), for every field that names one: origins, `domain_suffix`.

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
