//! Issue #13, property tests (proptest): the key parser, the `Location` builder, Range handling
//! and the configuration loader take any input and either give something that round-trips or
//! refuse it with an error; nothing panics. The properties themselves are
//! the `properties` modules of the store, config and server crates, which the fuzz targets
//! (`fuzz/`) check too; an input fuzzing finds
//! becomes a test at the end of this file, with its exact bytes.

// A test (or benchmark) that unwraps fails loudly, which is what it should do.
#![allow(clippy::unwrap_used)]

use originpull_config::properties::{
    config_text_is_a_config_or_named_errors, origin_round_trips, GeneratedBucket,
};
use originpull_config::{parse_origin, Protocol};
use originpull_server::properties::{
    byte_range_matches_its_headers, location_carries_only_origin_and_request,
};
use originpull_store::properties::key_parser;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Paths made of the bytes that matter to the parser: separators, dots, escapes (valid and
/// not), controls, and non-ASCII.
fn path_like() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "/",
        "a",
        "Z",
        "0",
        ".",
        "..",
        "%",
        "%2e",
        "%2F",
        "%00",
        "%0d%0a",
        "%zz",
        "%E4%B8%AD",
        "%ff",
        "\\",
        "?",
        "#",
        " ",
        "中",
        "\u{7f}",
        "~",
        "-",
        "_",
        "index.html",
        "%20",
    ]);
    prop::collection::vec(pieces, 0..24).prop_map(|parts| format!("/{}", parts.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_parsed_key_round_trips_and_folders_name_their_index(path in path_like()) {
        key_parser(&path, "index.html").map_err(TestCaseError::fail)?;
    }

    #[test]
    fn any_string_is_a_key_or_an_error(path in any::<String>()) {
        key_parser(&path, "index.html").map_err(TestCaseError::fail)?;
    }

    #[test]
    fn an_accepted_origin_round_trips(
        text in "[a-zA-Z0-9.:\\[\\]@/-]{0,30}",
        https in any::<bool>(),
    ) {
        let protocol = if https { Protocol::Https } else { Protocol::Http };
        origin_round_trips(&text, protocol).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn a_location_holds_only_the_configured_origin_and_the_request(
        path in path_like(),
        query in any::<String>(),
    ) {
        let origin = parse_origin("abc.example.com:8080").unwrap();
        location_carries_only_origin_and_request(&origin, &path, &query)
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn a_range_is_within_the_object_and_its_headers_say_so(
        spec in prop_oneof![
            any::<String>(),
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| format!("bytes={a}-{b}")),
            any::<u16>().prop_map(|a| format!("bytes={a}-")),
            any::<u16>().prop_map(|a| format!("bytes=-{a}")),
            (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, c)| format!("bytes={a}-{b},{c}-")),
        ],
        size in 0u64..70_000,
    ) {
        byte_range_matches_its_headers(spec.as_bytes(), size).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn any_configuration_text_is_a_config_or_named_errors(text in any::<String>()) {
        config_text_is_a_config_or_named_errors(&text).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn generated_bucket_configurations_parse_or_name_their_bucket(
        name in "[a-z0-9-]{0,70}",
        origin in "[a-z0-9.:\\[\\]-]{0,30}",
        protocol in prop::sample::select(vec!["http", "https", "ftp", ""]),
        weight in 0u32..200,
        prefix in "[a-z/]{0,5}",
        redirect_code in prop::sample::select(vec![200u16, 301, 302, 303, 307, 308]),
    ) {
        GeneratedBucket { name: &name, origin: &origin, protocol, weight, prefix: &prefix, redirect_code }
            .parses_or_names_its_bucket()
            .map_err(TestCaseError::fail)?;
    }
}
