//! originpull's server: an origin-pull edge server on Pingora. A bucket is served from its store
//! at its accelerated domain; a miss is answered with 302 to the bucket's origin while the
//! object is copied from the origin into the bucket in the background (or, in mirror mode,
//! streamed to the client while it is stored), so the next request is a hit.
//!
//! Its layers, each importing only from those below it (`docs/architecture.md`):
//! - [`server`] starts it all: the listeners, the background services, the store's tiers;
//! - [`admin`]: the admin API for finishing a migration (purge, prefetch jobs, progress);
//! - [`answer`]: each request, from its head to its last byte (Pingora's `ProxyHttp`): a plan
//!   (hit, redirect, mirror, preflight, error, an ACME validation) and its execution;
//! - [`acme`]: certificates for bucket domains from an ACME server (orders, renewals, the
//!   HTTP-01 challenges, their state);
//! - [`edge`]: client connections in front of Pingora's sessions (listeners, TLS and HTTP/2,
//!   the connection gate: limits, framing, the write path);
//! - [`live`]: the configuration in force (hot reload) and its buckets, by host;
//! - [`pull`]: where a miss is pulled from ([`pull::origin`]) and the copies from origins into
//!   the bucket ([`pull::copy`]);
//! - [`metrics`] and [`access_log`]: what happened.
//!
//! Below the server: `originpull_config` (the file), `originpull_store` (the bucket store and
//! object keys) and `originpull_support` (the coarse clock, summarized logs).

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod answer;
pub mod edge;
pub mod live;
pub mod metrics;
#[cfg(feature = "properties")]
pub mod properties;
pub mod pull;
pub mod server;
