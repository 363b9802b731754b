//! The `originpull` command's tools besides the server: [`prefetch`], a client of a running
//! server's admin API that copies a list of keys into a bucket with a progress bar, and the
//! [`demo`]'s files and embedded origin.

pub mod demo;
pub mod prefetch;
