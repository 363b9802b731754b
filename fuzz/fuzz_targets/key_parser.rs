//! Fuzz target: the key parser takes any request path and refuses it or gives a key that
//! round-trips (`originpull_store::properties::key_parser`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use originpull_store::properties::key_parser;

fuzz_target!(|path: &str| {
    if let Err(violation) = key_parser(path, "index.html") {
        panic!("{violation}");
    }
});
