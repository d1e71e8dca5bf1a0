//! HTTP/1.1 wire format: heads ([`head`]), body framing ([`body`]) and the proxy-specific rules
//! for reading a message's framing and writing heads ([`codec`]), and what a request line and
//! `Host` may hold ([`request`]).

pub mod body;
pub mod codec;
pub mod head;
pub mod request;
