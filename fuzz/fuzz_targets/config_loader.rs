//! Fuzz target: the configuration loader. An input starting with a NUL byte is a generated
//! bucket (its fields from the rest, `GeneratedBucket::parses_or_names_its_bucket`); any other
//! input is the text of a configuration file (`config_text_is_a_config_or_named_errors`), as
//! `Config::load` reads it (UTF-8 only).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use originpull_config::properties::{config_text_is_a_config_or_named_errors, GeneratedBucket};

#[derive(Debug, Arbitrary)]
struct Bucket<'a> {
    name: &'a str,
    origin: &'a str,
    protocol: &'a str,
    weight: u32,
    prefix: &'a str,
    redirect_code: u16,
}

fuzz_target!(|data: &[u8]| {
    let result = match data.split_first() {
        Some((0, fields)) => {
            let Ok(bucket) = Bucket::arbitrary_take_rest(Unstructured::new(fields)) else {
                return;
            };
            GeneratedBucket {
                name: bucket.name,
                origin: bucket.origin,
                protocol: bucket.protocol,
                weight: bucket.weight,
                prefix: bucket.prefix,
                redirect_code: bucket.redirect_code,
            }
            .parses_or_names_its_bucket()
        }
        _ => match std::str::from_utf8(data) {
            Ok(text) => config_text_is_a_config_or_named_errors(text),
            Err(_) => return,
        },
    };
    if let Err(violation) = result {
        panic!("{violation}");
    }
});
