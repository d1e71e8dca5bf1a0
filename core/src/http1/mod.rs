//! HTTP/1.1 wire format: heads ([`head`]), body framing ([`body`]) and the proxy-specific rules
//! for reading a message's framing and writing heads ([`codec`]), what a request line and
//! `Host` may hold ([`request`]), and the connection manager's path rules ([`path`]).

pub mod body;
pub mod codec;
pub mod head;
pub mod path;
pub mod request;
