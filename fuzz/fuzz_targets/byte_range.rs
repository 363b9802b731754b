//! Fuzz target: any `Range` header on an object of any size gives a 200, a 206 inside the
//! object or a 416, with headers that say so
//! (`originpull_server::properties::byte_range_matches_its_headers`).
//!
//! Input: the object size in decimal, a newline, then the `Range` header value's bytes, so the
//! seeds are plain text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use originpull_server::properties::byte_range_matches_its_headers;

fuzz_target!(|data: &[u8]| {
    let Some(newline) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let (size, range) = (&data[..newline], &data[newline + 1..]);
    let Some(size) = std::str::from_utf8(size)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return;
    };
    if let Err(violation) = byte_range_matches_its_headers(range, size) {
        panic!("{violation}");
    }
});
