//! originpull: an origin-pull edge server on Pingora. A bucket is served from disk at its
//! accelerated domain; a miss is answered with 302 to the bucket's origin while the object is
//! copied from the origin into the bucket in the background, so the next request is a hit.
//!
//! The request's path through the modules: [`config`] → [`route`] → [`key`] → [`serve`] (hit)
//! ([`compress`] picks its encoding) or [`redirect`] (miss) / [`mirror`] (miss in mirror mode) →
//! [`fill`] (copy) → [`store`]; [`origin_choice`] decides, for redirects and copies alike, which
//! origin and path a key is pulled from; [`proxy`] ties them into Pingora, [`respond`] writes
//! errors and the common headers (with [`cors`]'s), [`metrics`] and [`access_log`]
//! record what happened, [`reload`] swaps configurations, [`server`] starts it all, with one
//! [`listener`] per worker thread and a [`connection`] gate in front of each request. [`admin`]
//! is the separate admin API for finishing a migration (purge, prefetch jobs, progress);
//! `prefetch` in the binary is its command-line client. [`properties`] states what the parsers
//! promise for any input, for the property tests and the fuzz targets.

pub mod access_log;
pub mod admin;
pub mod clock;
pub mod compress;
pub mod config;
pub mod connection;
pub mod cors;
pub mod demo;
pub mod fill;
pub mod key;
pub mod listener;
pub mod log_summary;
pub mod metrics;
pub mod mirror;
pub mod origin_choice;
pub mod prefetch;
pub mod properties;
pub mod proxy;
pub mod redirect;
pub mod reload;
pub mod respond;
pub mod route;
pub mod serve;
pub mod server;
pub mod store;
