//! Fuzz target: the 302 `Location` holds only the configured origin and the request's path and
//! query, and every accepted origin address round-trips
//! (`originpull_server::properties::{origin_round_trips, location_carries_only_origin_and_request}`).
//!
//! Input: four fields separated by newlines, readable so the seeds are plain text:
//! `http|https`, the origin address (a refused one is replaced by `abc.example.com:8080` for
//! the `Location` part), the request path, and the query (the rest, newlines included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use originpull_config::properties::origin_round_trips;
use originpull_config::{parse_origin_with, Protocol};
use originpull_server::properties::location_carries_only_origin_and_request;

fuzz_target!(|input: &str| {
    let mut fields = input.splitn(4, '\n');
    let (Some(scheme), Some(address), Some(path), Some(query)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return;
    };
    let protocol = if scheme == "https" {
        Protocol::Https
    } else {
        Protocol::Http
    };
    if let Err(violation) = origin_round_trips(address, protocol) {
        panic!("{violation}");
    }
    let Ok(origin) = parse_origin_with(address, protocol)
        .or_else(|_| parse_origin_with("abc.example.com:8080", protocol))
    else {
        return;
    };
    if let Err(violation) = location_carries_only_origin_and_request(&origin, path, query) {
        panic!("{violation}");
    }
});
