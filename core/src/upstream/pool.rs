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
    /// Takes a live idle connection, discarding ones the upstream closed while idle.
    pub fn checkout(&self, mut on_discard: impl FnMut()) -> Option<UpConn> {
        let mut idle = self.idle.borrow_mut();
        while let Some(c) = idle.pop() {
            // A closed keep-alive connection reads EOF (or unexpected bytes): drop it rather
            // than send a request into it.
            let mut probe = [0u8; 1];
            match c.stream.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(c),
                _ => on_discard(),
            }
        }
        None
    }

    /// Returns a connection for reuse.
    pub fn checkin(&self, mut c: UpConn) {
        c.idle_since = Instant::now();
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
    pub fn clear(&self) -> usize {
        let mut idle = self.idle.borrow_mut();
        let n = idle.len();
        idle.clear();
        n
    }

    /// Number of idle connections.
    pub fn len(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
