//! Client connections, in front of Pingora's HTTP sessions: one [`listener`] socket per worker
//! thread, and the [`connection`] gate that reads each request head (with its limits) and hands
//! it to the answer, then takes the connection back for the next. On the HTTPS listener the gate
//! runs the [`tls`] handshake first (certificates by SNI), and serves HTTP/2 connections stream
//! by stream.

pub mod connection;
pub mod listener;
pub mod tls;
