//! Client connections, in front of Pingora's HTTP sessions: one [`listener`] socket per worker
//! thread, and the [`connection`] gate that reads each request head (with its limits) and hands
//! it to the answer, then takes the connection back for the next.

pub mod connection;
pub mod listener;
