//! A per-worker, per-host pool of idle upstream HTTP/1.1 connections.

use std::cell::RefCell;
use std::io;
use std::time::Instant;

use bytes::BytesMut;
use tokio::net::TcpStream;

/// An upstream connection between requests.
pub struct UpConn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read past the end of the last response (normally empty).
    pub rbuf: BytesMut,
    /// Requests sent on this connection so far.
    pub requests: u32,
    /// When it was last returned to the pool.
    pub idle_since: Instant,
    /// Keeps `upstream_cx_active` right however the connection ends.
    pub guard: super::CxGuard,
}

/// Idle connections, most recently used last (reused first: warm, least likely to have been
/// closed by the upstream's idle timer).
#[derive(Default)]
pub struct Pool {
    idle: RefCell<Vec<UpConn>>,
}

impl Pool {
    /// Takes a live idle connection, discarding ones the upstream closed while idle or that
    /// hold unread bytes (never reused: they would be read as the next response).
    pub fn checkout(&self) -> Option<UpConn> {
        let mut idle = self.idle.borrow_mut();
        while let Some(c) = idle.pop() {
            if !c.rbuf.is_empty() {
                continue;
            }
            // A closed keep-alive connection reads EOF (or unexpected bytes): drop it rather
            // than send a request into it.
            let mut probe = [0u8; 1];
            if let Err(e) = c.stream.try_read(&mut probe) {
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Some(c);
                }
            }
        }
        None
    }

    /// Returns a connection for reuse. Only a connection at a clean message boundary (no
    /// bytes read past the last response) may come back; anything else is closed.
    /// `now` is the time the exchange ended (the caller has read the clock already).
    pub fn checkin(&self, mut c: UpConn, now: Instant) {
        if !c.rbuf.is_empty() {
            return;
        }
        c.idle_since = now;
        self.idle.borrow_mut().push(c);
    }

    /// Closes connections idle for longer than `max_idle`, returning how many were closed.
    pub fn sweep(&self, now: Instant, max_idle: std::time::Duration) -> usize {
        let mut idle = self.idle.borrow_mut();
        let before = idle.len();
        idle.retain(|c| now.duration_since(c.idle_since) < max_idle);
        before - idle.len()
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }
}
