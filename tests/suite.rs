//! The integration tests, in one binary: the harness (`common/`) is built once and the tests
//! are linked once, where one binary per file built and linked it eighteen times (about a third
//! of CI's build). Each module is one area of the product, run against the real `originpull`
//! binary and real servers on loopback. `soak.rs` and `properties.rs` stay binaries of their
//! own: the first is a load that would slow every test running beside it, the second uses
//! nothing of the harness.
//!
//! Run one area with `cargo test --release --test suite mirror::`.

// A test that unwraps fails loudly, which is what it should do.
#![allow(clippy::unwrap_used)]

mod common;

mod acme;
mod admin;
mod capacity;
mod compression;
mod conformance;
mod connections;
mod cors;
mod faults;
mod fill;
mod harness_selftest;
mod hostile;
mod https;
mod mirror;
mod operate;
mod origins;
mod prefetch;
mod s3_store;
mod serve;
mod site;
