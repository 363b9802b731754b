//! What every layer of originpull uses and none owns: the coarse clock for the per-request
//! checks against limits of seconds ([`clock`]), and log lines for events a client can repeat,
//! summarized instead of written one by one ([`log_summary`]).

pub mod clock;
pub mod log_summary;
