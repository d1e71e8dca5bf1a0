//! A per-worker, per-host pool of idle upstream HTTP/1.1 connections.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::time::Instant;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Why a connection could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFail {
    /// The connect timeout passed.
    Timeout,
    /// The host refused (or the connect failed otherwise).
    Refused,
}

/// What a request waiting on another request's connection attempt gets: the connection, or
/// why it failed.
pub type Handoff = oneshot::Receiver<Result<UpConn, ConnectFail>>;

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
    /// Connections still being made whose request went away ([`Pool::orphan_started`]).
    orphans: Cell<usize>,
    /// Requests waiting for one of those, oldest first.
    waiters: RefCell<VecDeque<oneshot::Sender<Result<UpConn, ConnectFail>>>>,
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
        // A request waiting for a connection being made takes this one rather than wait on
        // (Envoy gives a pending request the first connection ready). Only a request that
        // found no idle connection while one was being made waits, so this is one load.
        if self.orphans.get() != 0 {
            match self.hand_over(c) {
                None => return Ok(buf),
                Some(back) => c = back,
            }
        }
        c.idle_since = now;
        self.idle.borrow_mut().push(c);
        Ok(buf)
    }

    /// Gives `c` to the oldest request still waiting ([`Pool::wait_for_orphan`]); back when
    /// none is.
    fn hand_over(&self, mut c: UpConn) -> Option<UpConn> {
        let mut waiters = self.waiters.borrow_mut();
        while let Some(w) = waiters.pop_front() {
            match w.send(Ok(c)) {
                Ok(()) => return None,
                // That request went away too: the next one, if any.
                Err(back) => c = back.unwrap_or_else(|_| unreachable!("sent Ok")),
            }
        }
        Some(c)
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

    /// Counts a connection attempt whose request went away and that goes on: until it ends
    /// ([`Pool::orphan_done`]) a request that finds no idle connection waits for it rather
    /// than making its own, as Envoy's pool counts a connection being made as room for a
    /// pending request.
    pub fn orphan_started(&self) {
        self.orphans.set(self.orphans.get() + 1);
    }

    /// A place in line for a connection being made for a request that went away, if one has
    /// room for another request (none when every such attempt already has a request waiting).
    pub fn wait_for_orphan(&self) -> Option<Handoff> {
        if self.orphans.get() == 0 {
            return None;
        }
        let mut waiters = self.waiters.borrow_mut();
        // Requests whose client left meanwhile no longer wait.
        waiters.retain(|w| !w.is_closed());
        if waiters.len() >= self.orphans.get() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        waiters.push_back(tx);
        Some(rx)
    }

    /// Ends an attempt counted by [`Pool::orphan_started`]: a connection goes to the oldest
    /// request waiting, or comes back for the pool when none waits. A failure fails every
    /// waiting request (those counted against other attempts too), as Envoy's pool purges its
    /// pending requests when a connect fails.
    pub fn orphan_done(&self, r: Result<UpConn, ConnectFail>) -> Option<UpConn> {
        self.orphans.set(self.orphans.get() - 1);
        match r {
            Ok(c) => self.hand_over(c),
            Err(fail) => {
                for w in self.waiters.borrow_mut().drain(..) {
                    let _ = w.send(Err(fail));
                }
                None
            }
        }
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

    /// A connection to `l`: our end and the peer's (which the caller keeps open).
    async fn connected(l: &tokio::net::TcpListener) -> (TcpStream, TcpStream) {
        let (a, b) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn pooled_connections_hold_no_read_buffer() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, _peer) = connected(&l).await;
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

    #[tokio::test]
    async fn a_connection_made_for_a_request_that_left_goes_to_the_next_waiting() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, _peer) = connected(&l).await;
        let pool = Pool::default();
        assert!(
            pool.wait_for_orphan().is_none(),
            "nothing being made: connect"
        );

        pool.orphan_started();
        let first = pool.wait_for_orphan().expect("room for one request");
        assert!(pool.wait_for_orphan().is_none(), "one attempt, one request");
        // The first request leaves: its place is free again.
        drop(first);
        let mut second = pool.wait_for_orphan().expect("the place given up");
        assert!(pool.orphan_done(Ok(conn(a, BytesMut::new()))).is_none());
        let got = second.try_recv().expect("handed over");
        assert!(got.is_ok());
        assert!(
            pool.wait_for_orphan().is_none(),
            "nothing being made any more"
        );

        // No request waits (the one that did left): the connection comes back, for the pool.
        pool.orphan_started();
        drop(pool.wait_for_orphan());
        let back = pool.orphan_done(got);
        assert!(back.is_some());

        // A connection another request gives back goes to a request waiting, not the pool.
        let (a, _peer2) = connected(&l).await;
        pool.orphan_started();
        let mut waiting = pool.wait_for_orphan().unwrap();
        let buf = pool.checkin(conn(a, BytesMut::with_capacity(64)), Instant::now());
        assert!(buf.is_ok_and(|b| b.capacity() >= 64));
        assert!(waiting.try_recv().unwrap().is_ok());
        assert!(pool.checkout().is_none());
        // The attempt, once up, finds no one waiting: for the pool.
        assert!(pool.orphan_done(back.ok_or(ConnectFail::Refused)).is_some());

        // A failure fails every waiting request.
        pool.orphan_started();
        pool.orphan_started();
        let (mut w1, mut w2) = (
            pool.wait_for_orphan().unwrap(),
            pool.wait_for_orphan().unwrap(),
        );
        assert!(pool.orphan_done(Err(ConnectFail::Timeout)).is_none());
        assert_eq!(w1.try_recv().unwrap().err(), Some(ConnectFail::Timeout));
        assert_eq!(w2.try_recv().unwrap().err(), Some(ConnectFail::Timeout));
    }
}
