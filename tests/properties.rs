//! Issue #13, property tests (proptest): the key parser, the `Location` builder, Range handling
//! and the configuration loader take any input and either give something that round-trips or
//! refuse it with an error; nothing panics.

use http::header;
use originpull::config::{parse_origin, Config};
use originpull::key::{ObjectKey, RequestTarget};
use originpull::redirect::location;
use originpull::serve::byte_range;
use pingora::http::{RequestHeader, ResponseHeader};
use proptest::prelude::*;

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
    fn a_parsed_key_round_trips_through_its_origin_path(path in path_like()) {
        if let Ok(key) = ObjectKey::from_request_path(&path) {
            let again = ObjectKey::from_request_path(&key.origin_path());
            prop_assert_eq!(again.as_ref(), Ok(&key));
            prop_assert!(!key.as_str().chars().any(char::is_control));
            prop_assert!(!key.as_str().split(['/', '\\']).any(|s| s == "." || s == ".."));
            prop_assert!(key.as_str().len() <= originpull::key::MAX_KEY_BYTES);
        }
    }

    #[test]
    fn any_string_is_a_key_or_an_error(path in any::<String>()) {
        let _ = ObjectKey::from_request_path(&path);
        let _ = RequestTarget::parse(&path, Some("index.html"));
    }

    #[test]
    fn folders_and_index_documents_agree(path in path_like()) {
        match RequestTarget::parse(&path, Some("index.html")) {
            Ok(RequestTarget::Object { key, folder: Some(folder) }) => {
                prop_assert_eq!(key.as_str(), format!("{folder}index.html"));
                prop_assert!(folder.is_empty() || folder.ends_with('/'));
            }
            Ok(RequestTarget::Object { key, folder: None }) => {
                prop_assert!(!key.as_str().ends_with('/'));
            }
            Ok(RequestTarget::Folder { .. }) => prop_assert!(false, "folder with an index document"),
            Err(_) => {}
        }
    }

    #[test]
    fn a_location_holds_only_visible_ascii_and_the_configured_origin(
        path in path_like(),
        query in any::<String>(),
    ) {
        let origin = parse_origin("abc.example.com:8080").unwrap();
        if let Ok(key) = ObjectKey::from_request_path(&path) {
            let target = location(&origin, &key.origin_path(), Some(&query));
            prop_assert!(target.starts_with("http://abc.example.com:8080/"));
            prop_assert!(!target.bytes().any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii()));
            let (without_query, _) = target.split_once('?').unwrap_or((&target, ""));
            let origin_path = key.origin_path();
            prop_assert_eq!(
                &without_query["http://abc.example.com:8080".len()..],
                origin_path.as_str()
            );
            prop_assert!(http::HeaderValue::from_str(&target).is_ok());
        }
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
        let mut req = RequestHeader::build("GET", b"/k", None).unwrap();
        if req.insert_header(header::RANGE, spec.as_str()).is_err() {
            return Ok(());
        }
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header(header::CONTENT_LENGTH, size).unwrap();
        let range = byte_range(&req, &mut resp, size).unwrap();
        let content_range = resp
            .headers
            .get(header::CONTENT_RANGE)
            .map(|v| v.to_str().unwrap().to_string());
        match resp.status.as_u16() {
            200 => prop_assert_eq!(range, 0..size),
            206 => {
                prop_assert!(!range.is_empty() && range.end <= size, "{:?} of {}", range, size);
                prop_assert_eq!(
                    content_range,
                    Some(format!("bytes {}-{}/{size}", range.start, range.end - 1))
                );
            }
            416 => {
                prop_assert!(range.is_empty());
                prop_assert_eq!(content_range, Some(format!("bytes */{size}")));
            }
            other => prop_assert!(false, "status {}", other),
        }
    }

    #[test]
    fn any_configuration_text_is_a_config_or_named_errors(text in any::<String>()) {
        if let Err(errors) = Config::parse(&text) {
            prop_assert!(!errors.0.is_empty());
        }
    }

    #[test]
    fn generated_bucket_configurations_parse_or_name_their_bucket(
        name in "[a-z0-9-]{0,70}",
        origin in "[a-z0-9.:\\[\\]-]{0,30}",
        protocol in prop::sample::select(vec!["http", "https", "ftp", ""]),
        weight in 0u32..200,
        prefix in "[a-z/]{0,5}",
        code in prop::sample::select(vec![200u16, 301, 302, 303, 307, 308]),
    ) {
        let text = format!(
            "listen: 127.0.0.1:8080\ndata_dir: ./d\ndomain_suffix: file.myqcloud.com\nbuckets:\n  - name: '{name}'\n    origin_pull:\n      enabled: true\n      origins:\n        - address: '{origin}'\n          protocol: '{protocol}'\n          weight: {weight}\n      rules:\n        - prefix: '{prefix}'\n          redirect_code: {code}\n"
        );
        match Config::parse(&text) {
            Ok(config) => {
                prop_assert_eq!(&config.buckets[0].name, &name);
                let pull = config.buckets[0].origin_pull.as_ref().unwrap();
                prop_assert!(pull.origins[0].weight >= 1);
            }
            Err(errors) => {
                for error in &errors.0 {
                    prop_assert!(
                        error.scope.contains(&name) || error.scope.starts_with("buckets[") ,
                        "{}", error
                    );
                }
            }
        }
    }
}
