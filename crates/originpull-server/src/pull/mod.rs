//! Origin pull: where a miss of a key is pulled from ([`origin`]: rules, origins by weight and
//! health, TLS trust, guardrails) and the copies of objects from their origin into the bucket
//! ([`copy`]: which run, wait or are skipped; one copy's transfer).

pub mod copy;
pub mod origin;
