//! Where a request head ends in the bytes read from a client: where Pingora's parser will end
//! it, so the gate hands Pingora exactly one request at a time.

use std::mem::MaybeUninit;

/// Headers per request, as Pingora's parser allows (more is a 400 from Pingora).
const MAX_HEADERS: usize = 256;

/// The length of the request head at the start of `buf`, if it is all there. A head that
/// `httparse` refuses is framed as Pingora frames it: when the request line has characters
/// Pingora escapes and parses again, the head ends at the first blank line; any other error
/// gives Pingora everything read, so it answers 400 and closes.
pub(super) fn head_length(buf: &[u8]) -> Option<usize> {
    if buf.is_empty() {
        return None;
    }
    if let Some(len) = crlf_head_length(buf) {
        return Some(len);
    }
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => Some(len),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::Token | httparse::Error::Version) => buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|end| end + 4),
        Err(_) => Some(buf.len()),
    }
}

/// The usual head, found without parsing it (Pingora parses it next): lines that all end in
/// CRLF, up to the first blank line. That is where `httparse` ends such a head, and where the
/// framing above ends one it refuses; a head it refuses for other reasons is answered 400 and
/// the connection closed either way. Anything else (a bare LF, leading blank lines, an
/// unfinished head) is left to `httparse`.
fn crlf_head_length(buf: &[u8]) -> Option<usize> {
    if matches!(buf.first(), Some(b'\r' | b'\n')) {
        return None;
    }
    let mut line_start = 0;
    for lf in memchr::memchr_iter(b'\n', buf) {
        if lf == 0 || buf[lf - 1] != b'\r' {
            return None;
        }
        if lf - 1 == line_start {
            return Some(lf + 1);
        }
        line_start = lf + 1;
    }
    None
}

/// The method and the request target of the head at the start of `buf`, for the access log
/// and the error's `<Resource>` (each empty if not yet readable). The target runs to the last
/// space before the version, so a target with a raw space in it is shown whole.
pub(super) fn request_line(buf: &[u8]) -> (String, String) {
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (method, rest) = match memchr::memchr(b' ', line) {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &[][..]),
    };
    let target = match memchr::memrchr(b' ', rest) {
        Some(space) if rest[space + 1..].starts_with(b"HTTP/") => &rest[..space],
        _ => rest,
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (text(method), text(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_one_head_among_pipelined_requests() {
        let one = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut two = one.to_vec();
        two.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(head_length(one), Some(one.len()));
        assert_eq!(head_length(&two), Some(one.len()));
        assert_eq!(head_length(b"GET /a HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_length(b""), None);
        let bare_lf = b"GET /a HTTP/1.1\nHost: x\n\n";
        let mut then_more = bare_lf.to_vec();
        then_more.extend_from_slice(b"GET");
        assert_eq!(head_length(&then_more), Some(bare_lf.len()));
        // A bare LF before the first CRLF CRLF: httparse's end, not the scan's.
        let mixed = b"GET /a HTTP/1.1\nHost: x\n\nGET /b HTTP/1.1\r\nHost: y\r\n\r\n";
        assert_eq!(
            head_length(mixed),
            Some(b"GET /a HTTP/1.1\nHost: x\n\n".len())
        );
    }

    #[test]
    fn the_crlf_scan_ends_a_head_where_httparse_does() {
        let heads: [&[u8]; 4] = [
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HEAD /b?c=d HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nX: \r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nOrigin: http://a\r\n\r\n",
        ];
        for head in heads {
            let mut pipelined = head.to_vec();
            pipelined.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let parsed = httparse::Request::new(&mut headers).parse(&pipelined);
            assert_eq!(parsed.ok(), Some(httparse::Status::Complete(head.len())));
            assert_eq!(crlf_head_length(&pipelined), Some(head.len()));
        }
        // Leading blank lines, which httparse skips, are left to it.
        let leading = b"\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(crlf_head_length(leading), None);
        assert_eq!(head_length(leading), Some(leading.len()));
    }

    #[test]
    fn frames_refused_heads_as_pingora_does() {
        // A request line with a byte Pingora escapes: the head ends at the first blank line.
        let escaped = b"GET /a?q=\x7f HTTP/1.1\r\nHost: x\r\n\r\nGET /b";
        assert_eq!(head_length(escaped), Some(escaped.len() - 6));
        assert_eq!(head_length(b"GET /a?q=\x7f HTTP/1.1\r\nHost: x\r\n"), None);
        // Anything else malformed goes to Pingora whole, to be answered 400.
        let bad = b"GET /a HTTP/1.1\r\nHo st: x\r\n\r\n";
        assert_eq!(head_length(bad), Some(bad.len()));
    }

    #[test]
    fn reads_the_method_and_target_for_the_log_and_the_error_resource() {
        assert_eq!(
            request_line(b"GET /a?b HTTP/1.1\r\nX: y"),
            ("GET".to_string(), "/a?b".to_string())
        );
        assert_eq!(request_line(b"GET"), ("GET".to_string(), String::new()));
        assert_eq!(
            request_line(b"GET /a b HTTP/1.1\r\n"),
            ("GET".to_string(), "/a b".to_string())
        );
        assert_eq!(
            request_line(b"GET /aaaa"),
            ("GET".to_string(), "/aaaa".to_string())
        );
    }
}
