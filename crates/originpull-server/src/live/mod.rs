//! The configuration in force: each generation's buckets by host ([`bucket`]), swapped whole on
//! a reload ([`reload`]), and the background probes of the origins it names ([`probes`]).

pub mod bucket;
pub mod probes;
pub mod reload;
