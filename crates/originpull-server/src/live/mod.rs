//! The configuration in force: each generation's buckets by host ([`bucket`]), swapped whole on
//! a reload ([`reload`]), the background probes of the origins it names ([`probes`]), and the
//! disk store's limits it sets ([`capacity`]).

pub mod bucket;
pub mod capacity;
pub mod probes;
pub mod reload;
