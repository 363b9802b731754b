//! Answering a request, from its head to its last byte: originpull's Pingora `ProxyHttp`
//! ([`proxy`]) routes it, decides how it is answered, and carries that out: a hit ([`serve`],
//! with the encoding [`compress`] picks and the head [`object_head`] prepares), a redirect to
//! the origin ([`redirect`]), a mirrored miss ([`mirror`]), a CORS preflight ([`preflight`]) or
//! an error (the XML error, or the bucket's [`error_document`]). [`respond`] writes the headers
//! every response carries and the XML errors, with the CORS headers [`cors`] decides.

pub mod compress;
pub mod compressible;
pub mod cors;
pub mod error_document;
pub mod mirror;
pub mod object_head;
pub mod plan;
pub mod preflight;
pub mod proxy;
pub mod redirect;
pub mod respond;
pub mod serve;

pub use proxy::OriginPull;
