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
    /// The read buffer while a request is under way; empty (no allocation) while pooled.
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
    /// Takes a live idle connection, discarding ones the upstream closed while idle (or that
    /// have unexpected bytes to read). It comes without a read buffer.
    pub fn checkout(&self) -> Option<UpConn> {
        let mut idle = self.idle.borrow_mut();
        while let Some(mut c) = idle.pop() {
            // A closed keep-alive connection reads EOF (or unexpected bytes): drop it rather
            // than send a request into it.
            if still_open(&c) {
                return Some(c);
            }
            c.guard.remote = true;
        }
        None
    }

    /// Returns a connection for reuse. Only a connection at a clean message boundary (no
    /// bytes read past the last response) may come back; anything else is handed back, to be
    /// closed. `now` is the time the exchange ended (the caller has read the clock already).
    ///
    /// A pooled connection keeps no read buffer: the emptied one is handed back, for the
    /// worker's buffer pool. Kept, it was up to 64 KiB per idle upstream connection (dhat;
    /// 200 pooled connections held 12.5 MiB).
    pub fn checkin(&self, mut c: UpConn, now: Instant) -> Result<BytesMut, UpConn> {
        if !c.rbuf.is_empty() {
            return Err(c);
        }
        let buf = std::mem::take(&mut c.rbuf);
        c.idle_since = now;
        self.idle.borrow_mut().push(c);
        Ok(buf)
    }

    /// Closes connections idle for longer than `max_idle` (`None`: no limit), returning how
    /// many, and drops those the upstream has closed meanwhile (Envoy sees that at once; here
    /// it waits for the next sweep or checkout, not for the idle timeout, so no socket lingers
    /// half-closed for an hour).
    pub fn sweep(&self, now: Instant, max_idle: Option<std::time::Duration>) -> usize {
        let mut idle = self.idle.borrow_mut();
        let mut expired = 0;
        idle.retain_mut(|c| {
            if max_idle.is_some_and(|m| now.duration_since(c.idle_since) >= m) {
                expired += 1;
                return false;
            }
            let open = still_open(c);
            c.guard.remote = !open;
            open
        });
        expired
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }
}

/// Whether an idle connection has nothing to read: a closed one reads EOF (or an error), a
/// broken one unexpected bytes. No syscall unless the socket was reported readable.
fn still_open(c: &UpConn) -> bool {
    let mut probe = [0u8; 1];
    matches!(c.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn conn(stream: TcpStream, rbuf: BytesMut) -> UpConn {
        UpConn {
            stream,
            rbuf,
            requests: 1,
            idle_since: Instant::now(),
            guard: super::super::CxGuard::new(Arc::default(), Arc::default()),
        }
    }

    #[tokio::test]
    async fn pooled_connections_hold_no_read_buffer() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (a, _peer) = (a.unwrap(), b.unwrap());
        let pool = Pool::default();

        // A clean connection goes in, and its buffer comes back to the caller, not kept.
        let buf = pool.checkin(conn(a, BytesMut::with_capacity(16 * 1024)), Instant::now());
        assert!(buf.is_ok_and(|b| b.is_empty() && b.capacity() >= 16 * 1024));
        let c = pool.checkout().expect("the pooled connection");
        assert_eq!(c.rbuf.capacity(), 0);

        // One with bytes past the response is closed, never pooled.
        let mut dirty = BytesMut::with_capacity(64);
        dirty.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let refused = pool.checkin(conn(c.stream, dirty), Instant::now());
        assert!(refused.is_err_and(|c| c.rbuf.len() == 17));
        assert!(pool.checkout().is_none());
    }
}
