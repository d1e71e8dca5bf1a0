//! A per-worker, per-host pool of idle upstream HTTP/1.1 connections.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::breaker::Breakers;

/// Why a connection could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFail {
    /// The connect timeout passed.
    Timeout,
    /// The host refused (or the connect failed otherwise).
    Refused,
}

/// What a request waiting for a connection is woken with.
pub enum Wake {
    /// A connection for it: one another request gave back, or one being made that its
    /// request no longer needs.
    Conn(UpConn),
    /// The connection being made failed (every request waiting then fails, as Envoy's pool
    /// purges its pending requests).
    Failed(ConnectFail),
    /// A connection of this pool closed, or the pool has room again: decide again whether to
    /// make one.
    Retry,
}

/// A place in line for a connection.
pub type Handoff = oneshot::Receiver<Wake>;

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
    /// Its pool's drain count when it was made: one made before a drain is not taken back.
    pub epoch: u32,
    /// Keeps `upstream_cx_active` right however the connection ends.
    pub guard: super::CxGuard,
}

/// A request waiting in line.
struct Waiter {
    tx: oneshot::Sender<Wake>,
    /// It waits for a connection being made for a request that went away
    /// ([`Pool::wait_for_orphan`]), not for one to be given back.
    on_attempt: bool,
}

/// Requests of one host's pool waiting for a connection, oldest first. Shared with the
/// guards of the pool's connections, so that a connection that closes wakes one of them.
#[derive(Default)]
pub struct Waiters {
    queue: RefCell<VecDeque<Waiter>>,
    /// The queue's length, read on every return to the pool (one load when none waits).
    len: Cell<usize>,
}

impl Waiters {
    fn push(&self, front: bool, on_attempt: bool) -> Handoff {
        let (tx, rx) = oneshot::channel();
        let w = Waiter { tx, on_attempt };
        let mut q = self.queue.borrow_mut();
        // Places given up (a client that left, a route timeout) go here at the latest, so the
        // line never grows past the requests really waiting (and a few just gone).
        q.retain(|w| !w.tx.is_closed());
        if front {
            q.push_front(w);
        } else {
            q.push_back(w);
        }
        self.len.set(q.len());
        rx
    }

    /// Gives `wake` to the oldest request still waiting; back when none is.
    fn send(&self, mut wake: Wake) -> Option<Wake> {
        if self.len.get() == 0 {
            return Some(wake);
        }
        let mut q = self.queue.borrow_mut();
        let back = loop {
            let Some(w) = q.pop_front() else {
                break Some(wake);
            };
            match w.tx.send(wake) {
                Ok(()) => break None,
                // That request went away: the next one, if any.
                Err(w) => wake = w,
            }
        };
        self.len.set(q.len());
        back
    }

    /// Wakes the oldest request waiting to decide again whether to make a connection (one of
    /// the pool's closed, or the cluster has room for one again).
    pub fn retry_one(&self) {
        let _ = self.send(Wake::Retry);
    }

    /// Fails every request waiting.
    fn fail_all(&self, fail: ConnectFail) {
        let mut q = self.queue.borrow_mut();
        for w in q.drain(..) {
            let _ = w.tx.send(Wake::Failed(fail));
        }
        self.len.set(0);
    }

    /// How many requests wait, those whose client left meanwhile no longer counted.
    fn live(&self) -> (usize, usize) {
        let mut q = self.queue.borrow_mut();
        q.retain(|w| !w.tx.is_closed());
        self.len.set(q.len());
        (q.len(), q.iter().filter(|w| w.on_attempt).count())
    }
}

/// Idle connections, most recently used last (reused first: warm, least likely to have been
/// closed by the upstream's idle timer), and the requests waiting for one.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<Vec<UpConn>>,
    /// Connections still being made whose request went away ([`Pool::orphan_started`]).
    orphans: Cell<usize>,
    /// Requests waiting: for one of those, or (at the cluster's `max_connections`) for a
    /// connection to be given back.
    waiters: Rc<Waiters>,
    /// Drains so far ([`Pool::drain`]).
    epoch: Cell<u32>,
}

impl Pool {
    /// Takes a live idle connection, discarding ones the upstream closed while idle (or that
    /// have unexpected bytes to read), and ones counted by other circuit breakers than
    /// `breakers` (made before an apply changed the cluster: Envoy's changed cluster has pools
    /// of its own). It comes without a read buffer.
    pub fn checkout(&self, breakers: &Arc<Breakers>) -> Option<UpConn> {
        let mut idle = self.idle.borrow_mut();
        while let Some(mut c) = idle.pop() {
            // A closed keep-alive connection reads EOF (or unexpected bytes): drop it rather
            // than send a request into it.
            if !c.guard.counts_in(breakers) {
                continue;
            }
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
    // The connection comes back by value, moved as it went in (no allocation to box it).
    #[allow(clippy::result_large_err)]
    pub fn checkin(&self, mut c: UpConn, now: Instant) -> Result<BytesMut, UpConn> {
        if !c.rbuf.is_empty() || c.epoch != self.epoch.get() {
            return Err(c);
        }
        let buf = std::mem::take(&mut c.rbuf);
        // A request waiting for a connection takes this one rather than wait on (Envoy gives
        // a pending request the first connection ready). Only a request that found no idle
        // connection waits, so this is one load.
        if self.waiters.len.get() != 0 {
            match self.waiters.send(Wake::Conn(c)) {
                Some(Wake::Conn(back)) => c = back,
                _ => return Ok(buf),
            }
        }
        c.idle_since = now;
        self.idle.borrow_mut().push(c);
        Ok(buf)
    }

    /// Whether requests may wait for a connection (one load: some may have left meanwhile).
    #[inline]
    pub fn has_waiters(&self) -> bool {
        self.waiters.len.get() != 0
    }

    /// Whether requests wait for a connection, those that left no longer counted.
    pub fn anyone_waiting(&self) -> bool {
        self.waiters.live().0 != 0
    }

    /// The line, for a connection's guard ([`super::CxGuard`]).
    pub fn waiters(&self) -> Rc<Waiters> {
        self.waiters.clone()
    }

    /// A place in line for a connection given back (the cluster is at its `max_connections`);
    /// `front`: a request that was in line already and was woken to decide again.
    pub fn wait(&self, front: bool) -> Handoff {
        self.waiters.push(front, false)
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
        let (_, on_attempts) = self.waiters.live();
        if on_attempts >= self.orphans.get() {
            return None;
        }
        Some(self.waiters.push(false, true))
    }

    /// Ends an attempt counted by [`Pool::orphan_started`]: a connection goes to the oldest
    /// request waiting, or comes back for the pool when none waits.
    pub fn orphan_done(&self, r: Result<UpConn, ConnectFail>) -> Option<UpConn> {
        self.orphans.set(self.orphans.get() - 1);
        match r {
            Ok(c) => match self.waiters.send(Wake::Conn(c)) {
                Some(Wake::Conn(c)) => Some(c),
                _ => None,
            },
            Err(fail) => {
                self.fail(fail);
                None
            }
        }
    }

    /// A connect failed: every request waiting fails with it (those counted against other
    /// attempts too), as Envoy's pool purges its pending requests when a connect fails.
    pub fn fail(&self, fail: ConnectFail) {
        self.waiters.fail_all(fail);
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }

    /// The drain count a connection made now carries.
    pub fn epoch(&self) -> u32 {
        self.epoch.get()
    }

    /// Closes every idle connection, and every busy one once its request is done (Envoy's
    /// drain of an ejected host's pools).
    pub fn drain(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        self.clear();
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

    fn conn(stream: TcpStream, rbuf: BytesMut) -> UpConn {
        UpConn {
            stream,
            rbuf,
            requests: 1,
            idle_since: Instant::now(),
            epoch: 0,
            guard: super::super::CxGuard::new(Arc::default(), Arc::default(), None, false),
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
        let c = pool
            .checkout(&Arc::default())
            .expect("the pooled connection");
        assert_eq!(c.rbuf.capacity(), 0);

        // One with bytes past the response is closed, never pooled.
        let mut dirty = BytesMut::with_capacity(64);
        dirty.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let refused = pool.checkin(conn(c.stream, dirty), Instant::now());
        assert!(refused.is_err_and(|c| c.rbuf.len() == 17));
        assert!(pool.checkout(&Arc::default()).is_none());
    }

    /// The connection a wake carries, if it carries one.
    fn conn_of(w: Wake) -> Option<UpConn> {
        match w {
            Wake::Conn(c) => Some(c),
            _ => None,
        }
    }

    fn failure_of(w: Wake) -> Option<ConnectFail> {
        match w {
            Wake::Failed(f) => Some(f),
            _ => None,
        }
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
        let got = conn_of(second.try_recv().expect("handed over")).expect("a connection");
        assert!(
            pool.wait_for_orphan().is_none(),
            "nothing being made any more"
        );

        // No request waits (the one that did left): the connection comes back, for the pool.
        pool.orphan_started();
        drop(pool.wait_for_orphan());
        let back = pool.orphan_done(Ok(got));
        assert!(back.is_some());

        // A connection another request gives back goes to a request waiting, not the pool.
        let (a, _peer2) = connected(&l).await;
        pool.orphan_started();
        let mut waiting = pool.wait_for_orphan().unwrap();
        let buf = pool.checkin(conn(a, BytesMut::with_capacity(64)), Instant::now());
        assert!(buf.is_ok_and(|b| b.capacity() >= 64));
        assert!(conn_of(waiting.try_recv().unwrap()).is_some());
        assert!(pool.checkout(&Arc::default()).is_none());
        // The attempt, once up, finds no one waiting: for the pool.
        assert!(pool.orphan_done(back.ok_or(ConnectFail::Refused)).is_some());

        // A failure fails every waiting request, those in line for a connection given back
        // too.
        pool.orphan_started();
        pool.orphan_started();
        let (mut w1, mut w2) = (
            pool.wait_for_orphan().unwrap(),
            pool.wait_for_orphan().unwrap(),
        );
        let mut w3 = pool.wait(false);
        assert!(pool.orphan_done(Err(ConnectFail::Timeout)).is_none());
        for w in [&mut w1, &mut w2, &mut w3] {
            assert_eq!(
                failure_of(w.try_recv().unwrap()),
                Some(ConnectFail::Timeout)
            );
        }
        assert!(!pool.has_waiters());
    }

    #[tokio::test]
    async fn requests_in_line_take_connections_given_back_in_order_and_retry_at_the_front() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let mut first = pool.wait(false);
        let left = pool.wait(false);
        let mut third = pool.wait(false);
        assert!(pool.has_waiters());
        // One whose client left is skipped.
        drop(left);
        let (a, _pa) = connected(&l).await;
        assert!(pool
            .checkin(conn(a, BytesMut::new()), Instant::now())
            .is_ok());
        assert!(
            conn_of(first.try_recv().unwrap()).is_some(),
            "the oldest first"
        );
        assert!(
            pool.checkout(&Arc::default()).is_none(),
            "handed over, not pooled"
        );
        // A connection of the pool closing wakes the next to decide again; it goes back in
        // line at the front, before a request that came later.
        pool.waiters().retry_one();
        assert!(matches!(third.try_recv(), Ok(Wake::Retry)));
        assert!(!pool.has_waiters());
        let mut later = pool.wait(false);
        let mut third = pool.wait(true);
        let (b, _pb) = connected(&l).await;
        assert!(pool
            .checkin(conn(b, BytesMut::new()), Instant::now())
            .is_ok());
        assert!(conn_of(third.try_recv().unwrap()).is_some());
        assert!(later.try_recv().is_err(), "still waiting");
        // With no one waiting, a retry changes nothing and a connection is pooled.
        drop(later);
        pool.waiters().retry_one();
        let (c, _pc) = connected(&l).await;
        assert!(pool
            .checkin(conn(c, BytesMut::new()), Instant::now())
            .is_ok());
        assert!(pool.checkout(&Arc::default()).is_some());
    }

    #[test]
    fn places_given_up_leave_the_line() {
        let pool = Pool::default();
        for _ in 0..1000 {
            drop(pool.wait(false));
        }
        // Each new place clears those given up before it: the line holds one.
        let kept = pool.wait(false);
        assert_eq!(pool.waiters.queue.borrow().len(), 1);
        assert!(pool.anyone_waiting());
        drop(kept);
        assert!(pool.has_waiters(), "one load: not looked at yet");
        assert!(!pool.anyone_waiting());
        assert!(!pool.has_waiters());
    }

    #[tokio::test]
    async fn a_connection_counted_by_other_breakers_is_not_taken() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, _peer) = connected(&l).await;
        let (old, new): (Arc<Breakers>, Arc<Breakers>) = (Arc::default(), Arc::default());
        let pool = Pool::default();
        let mut c = conn(a, BytesMut::new());
        c.guard = super::super::CxGuard::new(
            Arc::default(),
            Arc::default(),
            Some((old.clone(), pool.waiters())),
            false,
        );
        assert_eq!(old.default.cx.open(), 1);
        assert!(pool.checkin(c, Instant::now()).is_ok());
        // The cluster changed: its new breakers do not take the old connection, which closes
        // and gives its count back to the old ones.
        assert!(pool.checkout(&new).is_none());
        assert_eq!(old.default.cx.open(), 0);
    }
}
