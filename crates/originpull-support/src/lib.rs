//! What every layer of originpull uses and none owns: the coarse clock for the per-request
//! checks against limits of seconds ([`clock`]), and log lines for events a client can repeat,
//! summarized instead of written one by one ([`log_summary`]), and the process's logger, which
//! summarizes the libraries' warnings the same way ([`library_log`]).

pub mod clock;
pub mod library_log;
pub mod log_summary;
