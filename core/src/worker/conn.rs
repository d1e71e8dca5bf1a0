//! One downstream HTTP/1.1 connection: read a request head, route it, answer locally or hand it
//! to `forward`, repeat while keep-alive holds.
//!
//! Between requests a connection holds no read buffer: it waits for readability first and
//! allocates only when bytes arrive. The per-request state lives in a boxed future (in a heap
//! slot the worker recycles, `FutureSlots`) so the long-lived connection future stays small.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::tcp::WriteHalf;
use tokio::net::TcpStream;
use tokio::time::Instant as TInstant;

use super::clock;
use super::ctx::{Ctx, ListenerRt, WorkerSnap, NO_DRAIN_KEY};
use super::forward::forward;
use super::headers::{
    mutate_request, redirect_location, redirect_rewritten_target, request_location,
};
use super::timer::{earliest, ConnTimer};
use crate::accesslog::{Detail, Emit, LoggedRequest, Record};
use crate::config::UnderscoresAction;
use crate::http1::body::Framing;
use crate::http1::codec::{
    request_framing, strip_h2c_upgrade, write_framing, write_status_line, ConnectionTokens,
    FramingError,
};
use crate::http1::head::{
    known, parse_request_counted, write_header, HeadError, HeaderMap, RequestHead,
};
use crate::http1::path::{self, PathOptions};
use crate::http1::request::{check_hosts, check_line, check_target, Refusal};
use crate::overload::OverloadNow;
use crate::router::{Action, Cx, ReqView, RouteRequest};
use crate::stats::{Buffered, DestroySplit, Flow, GaugeHold, HttpStats};

/// Read size for message heads.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Largest piece of a body moved per read and write, further bounded by each side's
/// `per_connection_buffer_limit_bytes`; a connection's buffering stays bounded whatever the
/// body length. 16 KiB pieces left a 64 KiB response waiting through four read/write turns:
/// at 2 workers on the shared 2-core box pyproxy served 10.7k-19.7k req/s of 64 KiB against
/// nginx's ~24k (perf suite, scenario 2); see the commit for the figures with 64 KiB pieces.
pub(super) const BODY_CHUNK: usize = 64 * 1024;

/// Envoy's own answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What to do with the downstream connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    KeepAlive,
    Close,
    /// Close, but the client may still be sending the request body: read and discard it first
    /// (see [`linger`]).
    Linger,
}

/// The client side of a connection.
pub(super) struct Down {
    pub(super) stream: TcpStream,
    /// Bytes read and not yet consumed (the rest of a body, pipelined requests).
    pub(super) rbuf: BytesMut,
    pub(super) peer: SocketAddr,
    /// HCM `request_timeout` for the current request: when it must have been fully received.
    pub(super) request_deadline: Option<tokio::time::Instant>,
    /// When the request's first bytes came: a `max_stream_duration` counts from then.
    pub(super) stream_from: tokio::time::Instant,
    /// Whether the current request is a HEAD (local replies then carry no body).
    head_request: bool,
    /// Whether the current request has body bytes not yet read: a reply then closes the
    /// connection after lingering (see [`linger`]).
    pub(super) body_unread: bool,
    /// How the connection ended, for its destroy stats: the client closed it (else we did),
    /// and whether a request was under way then.
    pub(super) peer_closed: bool,
    pub(super) ended_in_request: bool,
    /// This connection's place on the worker's drain list (`Ctx::watch_drain`).
    pub(super) drain_key: u32,
    /// Requests begun on it, counted while the connection manager has a
    /// `max_requests_per_connection`.
    requests: u32,
    /// When the connection was accepted.
    pub(super) opened: Instant,
    /// Whether its `max_connection_duration` is over (and counted).
    pub(super) max_reached: Cell<bool>,
    /// When the current request's head was parsed.
    pub(super) started: Instant,
    /// When the last proxied response was written in full, if the exchange recorded it: the
    /// request's end for the stats and the start of the idle wait, without another clock read.
    pub(super) done_at: Option<Instant>,
    /// The connection's one timer, for every wait (see `timer.rs`).
    pub(super) timer: ConnTimer,
    /// Its share of `downstream_cx_{rx,tx}_bytes_buffered`.
    pub(super) held: Buffered,
    /// The current request's `x-request-id`, for its response, under the connection
    /// manager's `always_set_request_id_in_response` (a thin pointer: it costs every idle
    /// connection 8 bytes, not 24).
    #[allow(clippy::box_collection)]
    pub(super) request_id: Option<Box<Vec<u8>>>,
    /// The current request's access log record, while its listener has access logs.
    pub(super) log: Option<Box<Record>>,
}

impl Down {
    /// The current request's access log record, if its listener logs.
    #[inline]
    pub(super) fn log(&mut self) -> Option<&mut Record> {
        self.log.as_deref_mut()
    }

    /// Says why the request ended, for its access log.
    #[inline]
    pub(super) fn log_detail(&mut self, detail: Detail) {
        if let Some(r) = self.log.as_deref_mut() {
            r.detail = Some(detail);
        }
    }

    /// For the access log of a request answered before it went upstream: the request as it
    /// stands now (`routed`: the connection manager has set its scheme) and why it ended.
    /// Out of line: its callers are answers, not the proxied path.
    #[cold]
    #[inline(never)]
    pub(super) fn log_answer(&mut self, head: &RequestHead, routed: bool, detail: Detail) {
        if let Some(r) = self.log.as_deref_mut() {
            r.set_request(logged(head, routed), !self.body_unread);
            r.detail = Some(detail);
        }
    }

    /// Whether the connection manager's `max_connection_duration` is over for this connection
    /// (a response then closes it); counted once, as Envoy's
    /// `downstream_cx_max_duration_reached`.
    #[inline]
    pub(super) fn past_max_duration(&self, l: &ListenerRt) -> bool {
        past_max_duration(l, self.opened, &self.max_reached)
    }

    /// Counts a request begun on this connection against the connection manager's
    /// `max_requests_per_connection`: true when it reaches the limit, so its response closes
    /// the connection, counted as `downstream_cx_max_requests_reached` (Envoy counts when the
    /// request begins, also one its codec then refuses).
    #[inline]
    fn count_request(&mut self, l: &ListenerRt) -> bool {
        let max = l.c.cfg.hcm.max_requests_per_connection;
        if max == 0 {
            return false;
        }
        self.requests = self.requests.saturating_add(1);
        let reached = self.requests >= max;
        if reached {
            l.http.downstream_cx_max_requests_reached.inc();
        }
        reached
    }

    /// What follows a response: the connection is kept if `keep`, else closed, after a linger
    /// when request bytes may be unread.
    pub(super) fn next(&self, keep: bool) -> Next {
        if keep {
            Next::KeepAlive
        } else if self.body_unread {
            Next::Linger
        } else {
            Next::Close
        }
    }
}

/// Counts a downstream connection open for as long as it lives.
struct DownGuard {
    l: Rc<ListenerRt>,
    /// Set from the connection's end (`Down::peer_closed`, `Down::ended_in_request`).
    remote: bool,
    active_rq: bool,
}

impl DownGuard {
    fn new(l: Rc<ListenerRt>) -> DownGuard {
        l.stats.downstream_cx_total.inc();
        l.stats.downstream_cx_active.inc();
        l.worker.downstream_cx_total.inc();
        l.worker.downstream_cx_active.inc();
        l.http.downstream_cx_total.inc();
        l.http.downstream_cx_http1_total.inc();
        l.http.downstream_cx_active.inc();
        l.http.downstream_cx_http1_active.inc();
        let a = &l.shared.active_connections;
        a.store(a.load(Relaxed) + 1, Relaxed);
        DownGuard {
            l,
            remote: false,
            active_rq: false,
        }
    }
}

impl Drop for DownGuard {
    fn drop(&mut self) {
        let l = &self.l;
        l.stats.downstream_cx_active.dec();
        l.stats.downstream_cx_destroy.inc();
        l.worker.downstream_cx_active.dec();
        l.http.downstream_cx_active.dec();
        l.http.downstream_cx_http1_active.dec();
        let h = &l.http;
        h.downstream_cx_destroy.inc();
        DestroySplit {
            local: &h.downstream_cx_destroy_local,
            remote: &h.downstream_cx_destroy_remote,
            active_rq: &h.downstream_cx_destroy_active_rq,
            local_active_rq: &h.downstream_cx_destroy_local_active_rq,
            remote_active_rq: &h.downstream_cx_destroy_remote_active_rq,
        }
        .count(self.remote, self.active_rq);
        let a = &self.l.shared.active_connections;
        a.store(a.load(Relaxed).saturating_sub(1), Relaxed);
    }
}

/// Serves one accepted connection until it closes.
///
/// An idle keep-alive connection costs its task, whose size is this future's: so everything
/// the connection keeps is built here and moved into the future whole (an `async fn` would keep
/// its arguments beside the locals built from them), and the idle wait is polled by hand
/// rather than through `select!` over `readable()` and a sleep (each a future of its own,
/// with its own waiter node). 664 → 384 bytes; the task 768 → 512 (dhat).
pub fn serve(
    ctx: Rc<Ctx>,
    lname: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> {
    // On Linux TCP_NODELAY comes from the listening socket (engine.rs).
    #[cfg(not(target_os = "linux"))]
    let _ = stream.set_nodelay(true);
    let mut conn = ctx.current().listeners.get(&lname).cloned().map(|l| Conn {
        d: Down {
            stream,
            rbuf: BytesMut::new(),
            peer,
            request_deadline: None,
            stream_from: tokio::time::Instant::now(),
            head_request: false,
            body_unread: false,
            peer_closed: false,
            ended_in_request: false,
            drain_key: NO_DRAIN_KEY,
            requests: 0,
            opened: clock::now(),
            max_reached: Cell::new(false),
            started: clock::now(),
            done_at: None,
            timer: ConnTimer::new(),
            held: Buffered::default(),
            request_id: None,
            log: None,
        },
        _guard: DownGuard::new(l),
        ctx,
        lname,
    });
    async move {
        if let Some(c) = &mut conn {
            c.run().await;
        }
    }
}

/// A downstream connection's lasting state.
struct Conn {
    // Dropped in this order: the socket closes before the connection stops being counted.
    d: Down,
    _guard: DownGuard,
    ctx: Rc<Ctx>,
    lname: Arc<str>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self._guard.remote = self.d.peer_closed;
        self._guard.active_rq = self.d.ended_in_request;
        let l = &self._guard.l;
        // A connection that ends after its max_connection_duration without having noticed
        // (the client left mid-request) still counts it, as Envoy's timer would have.
        self.d.past_max_duration(l);
        l.stats.downstream_cx_length_ms.record_ms(self.d.opened);
        l.http.downstream_cx_length_ms.record_ms(self.d.opened);
        self.d.held.release(l.http.buffered());
        self.ctx.unwatch_drain(self.d.drain_key);
        // A request cut off with its connection (the worker stopping past the drain time)
        // still gets its line, as the connection's end.
        if let Some(mut rec) = self.d.log.take() {
            rec.detail.get_or_insert(Detail::DownstreamDisconnect);
            write_log(&self.ctx, l, &self.d, rec);
        }
    }
}

impl Conn {
    async fn run(&mut self) {
        let Conn { d, ctx, lname, .. } = self;
        // The snapshot and this connection's listener in it, looked up again only when a new
        // snapshot was swapped in (a hashed lookup per request cost ~170 instructions).
        let mut snap = ctx.current();
        let Some(mut l) = snap.listeners.get(&**lname).cloned() else {
            return;
        };
        loop {
            // A request is served by the snapshot current when it arrives, also after an idle
            // wait. Once a snapshot removed the listener, the connection closes: at once if
            // idle, else after answering (with `connection: close`) the request it has.
            let mut last = !refresh(ctx, lname, &mut snap, &mut l, &d.held);
            if d.rbuf.is_empty() {
                if last {
                    break;
                }
                // Idle between requests: no buffer held (it goes back to the worker's pool).
                // Draining may have begun before this connection's first wait: its drain
                // notification would then never come.
                ctx.put_read_buf(std::mem::take(&mut d.rbuf));
                if ctx.draining() || !idle(ctx, &l, d).await || ctx.draining() {
                    break;
                }
                d.rbuf = ctx.take_read_buf();
                last = !refresh(ctx, lname, &mut snap, &mut l, &d.held);
            } else {
                // A pipelined request: Envoy looks at its read buffer again when its codec
                // takes the next request up (`downstream_cx_rx_bytes_buffered`).
                l.http.down_rx(&d.held).hold(d.rbuf.len());
            }
            let mut fut = ctx.request_slots.boxed(|| request(ctx, &snap, &l, d, last));
            let next = fut.as_mut().await;
            ctx.request_slots.recycle(fut);
            if let Some(rec) = d.log.take() {
                write_log(ctx, &l, d, rec);
            }
            if next == Next::Linger {
                linger(d, &l.http).await;
                break;
            }
            if next == Next::Close || last || ctx.draining() {
                break;
            }
        }
        // A reply that ends the connection was written by `write_last`, which sent the FIN;
        // the other ends (the client closed, idle timeout, drain, an aborted exchange) close
        // without a shutdown() first. Bytes still unread are dropped with the connection.
        ctx.put_read_buf(std::mem::take(&mut d.rbuf));
        // Its share of the buffered gauges goes from the scope it was last counted in (the
        // drop releases what is left against the first one, should the task be dropped
        // before this).
        d.held.release(l.http.buffered());
    }
}

/// Brings `snap` and `l` up to the worker's current snapshot (a pointer compare when it is
/// still the same); false, leaving both as they are, when that snapshot removed the listener.
#[inline(always)]
fn refresh(
    ctx: &Ctx,
    lname: &str,
    snap: &mut Rc<WorkerSnap>,
    l: &mut Rc<ListenerRt>,
    held: &Buffered,
) -> bool {
    ctx.is_current(snap) || refresh_changed(ctx, lname, snap, l, held)
}

/// [`refresh`] once the snapshot has changed.
#[cold]
#[inline(never)]
fn refresh_changed(
    ctx: &Ctx,
    lname: &str,
    snap: &mut Rc<WorkerSnap>,
    l: &mut Rc<ListenerRt>,
    held: &Buffered,
) -> bool {
    let now = ctx.current();
    let Some(nl) = now.listeners.get(lname).cloned() else {
        return false;
    };
    // Removed, then added again under the same name: this connection is the old listener's,
    // which drains (the new one starts with a removal state of its own).
    if !Rc::ptr_eq(&l.removal, &nl.removal) {
        return false;
    }
    // A new `stat_prefix` is a new `http.*` scope: the connection's share of the buffered
    // gauges moves with it (the next read adjusts the gauge it reads through).
    if !Arc::ptr_eq(&l.http, &nl.http) {
        held.move_to(l.http.buffered(), nl.http.buffered());
    }
    (*snap, *l) = (now, nl);
    true
}

/// Waits between requests until the client sends (true), or the connection's idle timeout
/// passes, the worker starts draining or its removed listener's drain time is over (false).
fn idle<'a>(ctx: &'a Ctx, l: &'a ListenerRt, d: &'a mut Down) -> Idle<'a> {
    if l.c.cfg.hcm.max_connection_duration_ms > 0 {
        // The idle timeout runs from the last response's end, or from now: kept, for the
        // deadline to be worked out again once the connection's time is up.
        d.done_at.get_or_insert_with(clock::now);
        d.past_max_duration(l);
    }
    // The idle timeout runs from the last response's end (or from now).
    let since = d.done_at.map_or_else(clock::tnow, TInstant::from_std);
    let deadline = idle_until(ctx, l, d, since);
    Idle {
        d,
        l,
        since,
        deadline,
        ctx,
    }
}

pin_project_lite::pin_project! {
    /// The wait of [`idle`], polled by hand (see [`serve`]).
    struct Idle<'a> {
        d: &'a mut Down,
        l: &'a ListenerRt,
        since: TInstant,
        deadline: Option<TInstant>,
        ctx: &'a Ctx,
    }
}

impl Future for Idle<'_> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<bool> {
        let this = self.project();
        if let Poll::Ready(r) = this.d.stream.poll_read_ready(cx) {
            return Poll::Ready(r.is_ok());
        }
        // Listed before the check: draining starts on this thread, between polls.
        this.ctx.watch_drain(&mut this.d.drain_key, cx.waker());
        if this.ctx.draining() || this.l.removal.closed() {
            return Poll::Ready(false);
        }
        // The overload manager's `reduce_timeouts` may have changed the idle timeout (it
        // wakes idle connections when it does).
        if this.ctx.overload().scales_timers() {
            *this.deadline = idle_until(this.ctx, this.l, this.d, *this.since);
        }
        while this.d.timer.poll_until(cx, *this.deadline).is_ready() {
            if let Some(max_at) = max_duration_end(this.l, this.d.opened) {
                // The real time, as the timer decided on (the turn's stamp may lag it).
                let now = Instant::now();
                if !this.d.max_reached.get() && now >= max_at {
                    // The connection's time is up: it stays for the connection manager's
                    // drain_timeout, a request then answered with `connection: close`.
                    reach_max_duration(this.l, &this.d.max_reached);
                    *this.deadline = idle_until(this.ctx, this.l, this.d, *this.since);
                    continue;
                }
                let drained = max_at + Duration::from_millis(this.l.c.cfg.hcm.drain_timeout_ms);
                if this.d.max_reached.get() && now >= drained {
                    return Poll::Ready(false);
                }
            }
            this.l.http.downstream_cx_idle_timeout.inc();
            return Poll::Ready(false);
        }
        Poll::Pending
    }
}

/// When the idle wait ends: the idle timeout after the last response, or the end of the
/// `max_connection_duration` (once it is over, of the `drain_timeout` after it), whichever
/// comes first.
fn idle_until(ctx: &Ctx, l: &ListenerRt, d: &Down, since: TInstant) -> Option<TInstant> {
    let hcm = &l.c.cfg.hcm;
    let idle = (hcm.idle_timeout_ms > 0)
        .then(|| since + Duration::from_millis(ctx.overload().conn_idle_ms(hcm.idle_timeout_ms)));
    let Some(mut max) = max_duration_end(l, d.opened) else {
        return idle;
    };
    if d.max_reached.get() {
        max += Duration::from_millis(hcm.drain_timeout_ms);
    }
    let max = TInstant::from_std(max);
    Some(idle.map_or(max, |i| i.min(max)))
}

/// How long a closing connection keeps reading what the client still sends (Envoy's
/// `delayed_close_timeout` default).
const LINGER: Duration = Duration::from_secs(1);

/// Reads and discards what the client still sends after the reply that ends its connection,
/// until it closes its side or [`LINGER`] has passed. The reply and the FIN are already out
/// (`write_last`); closing a socket with unread bytes would answer them with a reset, which can
/// destroy the reply in the client before it reads it (a request body the response came
/// before, a local reply to a request whose body was never read).
async fn linger(d: &mut Down, h: &HttpStats) {
    let deadline = Some(clock::tnow() + LINGER);
    // Polled by hand, like `Idle`: a `select!` here made the connection's future the larger.
    // The bytes go to the stack of each poll, not into the future.
    // A client's close found by the same poll that finds the deadline passed counts as a close
    // (the task may be polled only after the deadline); the timer is looked at first in each
    // pass, while the task has budget left for it.
    poll_fn(|cx| loop {
        let due = d.timer.poll_until(cx, deadline).is_ready();
        let mut sink = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
        let mut buf = tokio::io::ReadBuf::uninit(&mut sink);
        match Pin::new(&mut d.stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                let n = buf.filled().len();
                // (The flow is made here, not held across the wait: it would widen every
                // connection's future, idle ones included.)
                h.down_rx(&d.held).read(n, n);
                if !due {
                    continue;
                }
            }
            // The client closing now answers our FIN: the close was ours (Envoy: local).
            Poll::Ready(_) => return Poll::Ready(()),
            Poll::Pending if !due => return Poll::Pending,
            Poll::Pending => {}
        }
        // The client did not close within the linger (Envoy's delayed close timeout).
        h.downstream_cx_delayed_close_timeout.inc();
        return Poll::Ready(());
    })
    .await
}

/// Why a read returned no bytes.
pub(super) enum ReadErr {
    Closed,
    /// Nothing to read on a connection with no bytes of a request yet: the idle wait saw a
    /// readiness left from a read that filled its buffer, which tokio does not clear. The
    /// connection is idle, not in a request.
    Idle,
    /// The wait's deadline passed: which timer's.
    Timeout(HeadTimer),
}

/// The timers a request head waits under (all three start with the request's first bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeadTimer {
    /// HCM `request_headers_timeout`.
    Headers,
    /// HCM `request_timeout`: the whole request.
    Request,
    /// HCM `stream_idle_timeout`: no bytes for that long.
    Idle,
}

/// Reads at most `max` more bytes into `buf`.
pub(super) async fn read_more<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<usize, ReadErr> {
    buf.reserve(max);
    let mut limited = (&mut *buf).limit(max);
    match r.read_buf(&mut limited).await {
        Ok(0) | Err(_) => Err(ReadErr::Closed),
        Ok(n) => Ok(n),
    }
}

/// [`read_more`] for a request head: gives up with [`ReadErr::Timeout`] at `header_deadline`,
/// at `request_deadline` or after `idle_ms` (0: none) without bytes, whichever comes first.
async fn read_head_more<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    timer: &mut ConnTimer,
    header_deadline: Option<TInstant>,
    request_deadline: Option<TInstant>,
    idle_ms: u64,
) -> Result<usize, ReadErr> {
    let first = buf.is_empty();
    let read = read_more(r, buf, READ_CHUNK);
    tokio::pin!(read);
    // Bytes already waiting (the usual case right after the connection became readable):
    // no deadline to work out, no timer to touch.
    if let Poll::Ready(res) = poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
        return res;
    }
    if first {
        return Err(ReadErr::Idle);
    }
    let idle_deadline = (idle_ms > 0).then(|| clock::tnow() + Duration::from_millis(idle_ms));
    let Some(dl) = earliest([header_deadline, request_deadline, idle_deadline]) else {
        return read.await;
    };
    let which = if header_deadline == Some(dl) {
        HeadTimer::Headers
    } else if request_deadline == Some(dl) {
        HeadTimer::Request
    } else {
        HeadTimer::Idle
    };
    tokio::select! {
        biased;
        res = &mut read => res,
        () = timer.until(Some(dl)) => Err(ReadErr::Timeout(which)),
    }
}

/// Reads, routes and answers one request; `last`: the connection closes after it, and the
/// answer says so.
async fn request(
    ctx: &Rc<Ctx>,
    snap: &Rc<WorkerSnap>,
    l: &Rc<ListenerRt>,
    d: &mut Down,
    last: bool,
) -> Next {
    let hcm = &l.c.cfg.hcm;
    if l.c.logs.is_some() {
        d.log = Some(ctx.take_log_record(clock::now()));
    }
    let max_head = hcm.max_request_headers_kb as usize * 1024;
    // Envoy's codec drops (or refuses) a header with an `_` before it counts the headers.
    let underscores_looked_at = hcm.headers_with_underscores_action != UnderscoresAction::Allow;
    let max_headers = if underscores_looked_at {
        usize::MAX
    } else {
        hcm.max_headers_count as usize
    };
    // Both request timers start with the request's first bytes, as Envoy's do.
    let header_deadline = (hcm.request_headers_timeout_ms > 0)
        .then(|| clock::tnow() + Duration::from_millis(hcm.request_headers_timeout_ms));
    d.stream_from = clock::tnow();
    d.request_deadline = (hcm.request_timeout_ms > 0)
        .then(|| d.stream_from + Duration::from_millis(hcm.request_timeout_ms));
    d.head_request = false;
    // Bytes already searched for the end of the head: a partial head is parsed again only when
    // new bytes could complete it (a line break arrived), so a client trickling a large head
    // costs no quadratic re-parsing.
    let mut scanned: usize = 0;
    let mut head = loop {
        let fresh = &d.rbuf[scanned.saturating_sub(3).min(d.rbuf.len())..];
        let parsed = if scanned == 0 || memchr::memchr(b'\n', fresh).is_some() {
            parse_request_counted(&mut d.rbuf, max_head, max_headers)
        } else if d.rbuf.len() > max_head {
            Err(HeadError::TooLarge)
        } else {
            Ok(None)
        };
        match parsed {
            Ok(Some(h)) => break h,
            Ok(None) => scanned = d.rbuf.len(),
            Err(e) => return head_refused(ctx, l, d, e).await,
        }
        let idle = ctx.overload().stream_idle_ms(hcm.stream_idle_timeout_ms);
        let read = read_head_more(
            &mut d.stream,
            &mut d.rbuf,
            &mut d.timer,
            header_deadline,
            d.request_deadline,
            idle,
        );
        match read.await {
            Ok(n) => l.http.down_rx(&d.held).read(n, d.rbuf.len()),
            Err(ReadErr::Closed) => {
                // The client closed: between requests, or inside a head it had begun (a
                // request Envoy logs).
                d.peer_closed = true;
                d.ended_in_request = !d.rbuf.is_empty();
                if d.ended_in_request {
                    d.log_detail(Detail::DownstreamDisconnect);
                } else {
                    d.log = None;
                }
                return Next::Close;
            }
            // Back to the idle wait, under the connection's idle timeout.
            Err(ReadErr::Idle) => {
                d.log = None;
                return Next::KeepAlive;
            }
            // Which deadline ended the wait decides the reply, as in Envoy.
            Err(ReadErr::Timeout(which)) => {
                let (body, detail): (&[u8], _) = match which {
                    HeadTimer::Headers => {
                        l.http.downstream_rq_header_timeout.inc();
                        (b"request header timeout", Detail::RequestHeaderTimeout)
                    }
                    HeadTimer::Request => {
                        l.http.downstream_rq_timeout.inc();
                        (b"request timeout", Detail::RequestOverallTimeout)
                    }
                    HeadTimer::Idle => {
                        l.http.downstream_rq_idle_timeout.inc();
                        (b"stream timeout", Detail::StreamIdleTimeout)
                    }
                };
                d.log_detail(detail);
                return early_reply(ctx, l, d, 408, body).await;
            }
        }
    };
    if underscores_looked_at {
        if underscores(ctx, l, &mut head.headers) {
            return head_refused(ctx, l, d, HeadError::Malformed).await;
        }
        if head.headers.len() > hcm.max_headers_count as usize {
            return head_refused(ctx, l, d, HeadError::TooLarge).await;
        }
    }
    d.head_request = head.method() == b"HEAD";
    d.body_unread = false;
    let start = clock::now();
    d.started = start;
    d.done_at = None;
    l.http.downstream_rq_total.inc();
    l.http.downstream_rq_http1_total.inc();
    let last = d.count_request(l) || last;
    let active = GaugeHold::new(&l.http.downstream_rq_active);
    let minor = head.minor;
    let (status, next) = handle(ctx, snap, l, d, head, last).await;
    drop(active);
    if let Some(r) = d.log() {
        if r.status == 0 {
            r.status = status;
        }
        // The version of a request the connection manager had (a codec refusal's is none).
        if r.request.is_some() {
            r.minor = minor;
        }
    }
    if d.request_id.is_some() {
        d.request_id = None;
    }
    if status != 0 {
        l.count_completed(status);
        let end = d.done_at.unwrap_or_else(clock::now);
        l.http.downstream_rq_time.record_ms_until(start, end);
    }
    next
}

/// What Envoy's codec does with request headers whose names have an `_`, as the connection
/// manager's `headers_with_underscores_action` says (not ALLOW): true to refuse the request
/// (REJECT_REQUEST), else they are dropped (DROP_HEADER), each counted.
#[cold]
#[inline(never)]
fn underscores(ctx: &Ctx, l: &ListenerRt, h: &mut HeaderMap) -> bool {
    let has = |n: &[u8]| memchr::memchr(b'_', n).is_some();
    if !h.iter().any(|(n, _)| has(n)) {
        return false;
    }
    if l.c.cfg.hcm.headers_with_underscores_action == UnderscoresAction::RejectRequest {
        ctx.http1
            .requests_rejected_with_underscores_in_headers
            .inc();
        return true;
    }
    let mut dropped = 0;
    h.remove_if(|n, _| {
        let drop = has(n);
        dropped += u64::from(drop);
        drop
    });
    ctx.http1.dropped_headers_with_underscores.add(dropped);
    false
}

/// The connection manager's path rules (`normalize_path`, `merge_slashes`,
/// `path_with_escaped_slashes_action`): the request goes on with its path as they leave it
/// (`None`), or is answered here: a 400 that closes the connection for a path they refuse, a
/// 307 to the rewritten path for an escaped slash under `UNESCAPE_AND_REDIRECT`.
#[cold]
#[inline(never)]
async fn rewrite_path(
    ctx: &Ctx,
    l: &ListenerRt,
    d: &mut Down,
    head: &mut RequestHead,
    paths: &PathOptions,
    keep: bool,
) -> Option<(u16, Next)> {
    match path::apply(head.target(), paths) {
        path::Outcome::Same => None,
        path::Outcome::Changed(p) => {
            head.set_target(p);
            None
        }
        path::Outcome::Reject => {
            l.http.downstream_rq_failed_path_normalization.inc();
            d.log_answer(head, false, Detail::PathNormalizationFailed);
            Some(reply(ctx, l, d, 400, b"", false, None).await)
        }
        path::Outcome::Redirect(p) => {
            l.http.downstream_rq_redirected_with_normalized_path.inc();
            d.log_answer(head, false, Detail::PathRedirect);
            let mut h = HeaderMap::default();
            h.append(b"location", &p);
            Some(reply(ctx, l, d, 307, b"", keep, Some(&h)).await)
        }
    }
}

/// The connection manager's `strip_any_host_port` / `strip_matching_host_port`: the `host`
/// loses a `:port` (any, or only the listener's) before routing and forwarding, as Envoy's: the
/// port is what follows the last `:` unless a `]` comes after it (`[::1]` has none), read as
/// an unsigned 32-bit number with an optional `+` (`x:` and `a:b:c` keep theirs).
#[cold]
#[inline(never)]
fn strip_host_port(d: &Down, h: &mut HeaderMap, matching: bool) {
    let Some(host) = h.get(b"host") else {
        return;
    };
    let Some(colon) = memchr::memrchr(b':', host) else {
        return;
    };
    if memchr::memrchr(b']', host).is_some_and(|b| b > colon) {
        return;
    }
    let digits = &host[colon + 1..];
    let digits = digits.strip_prefix(b"+").unwrap_or(digits);
    let port = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(digits).ok()?.parse::<u32>().ok())
        .flatten();
    let Some(port) = port else {
        return;
    };
    if matching && d.stream.local_addr().map(|a| u32::from(a.port())).ok() != Some(port) {
        return;
    }
    let bare = host[..colon].to_vec();
    h.set(b"host", &bare);
}

/// Answers a head the codec refuses (a protocol error): 400 or 431, and closes.
async fn head_refused(ctx: &Ctx, l: &ListenerRt, d: &mut Down, e: HeadError) -> Next {
    l.http.downstream_cx_protocol_error.inc();
    let (status, body, detail): (u16, &[u8], _) = match e {
        HeadError::Malformed => (400, b"Bad Request", Detail::CodecError),
        HeadError::TooLarge => (
            431,
            b"Request Header Fields Too Large",
            Detail::HeadersTooLarge,
        ),
    };
    d.log_detail(detail);
    early_reply(ctx, l, d, status, body).await
}

/// Answers a request whose head never completed (parse error, timeout) and closes.
async fn early_reply(ctx: &Ctx, l: &ListenerRt, d: &mut Down, status: u16, body: &[u8]) -> Next {
    // As Envoy's connection manager counts a stream its codec ended: answered before the
    // request was whole, then reset with the connection.
    let h = &l.http;
    h.downstream_rq_total.inc();
    h.downstream_rq_http1_total.inc();
    d.count_request(l);
    l.count_completed(status);
    h.downstream_rq_response_before_rq_complete.inc();
    h.downstream_rq_rx_reset.inc();
    // It closes anyway; a drain is still counted (envoy binary: a 400 for a bad header while
    // health checks fail counts downstream_cx_drain_close), and the connection's age.
    response_closes(ctx, l, d.opened, &d.max_reached);
    let out = local_reply(ctx, l, status, body, true, None, false, None);
    if let Some(r) = d.log() {
        log_reply(r, status, &out);
    }
    let _ = write_last(&d.stream, &out, &h.down_tx(&d.held)).await;
    Next::Close
}

/// Answers a request Envoy's codec refuses after parsing its head: counted as a protocol
/// error, with the text body even to HEAD (Envoy's codec does not look at the method then),
/// and closes. Whatever body follows is read and dropped (linger).
async fn codec_refusal(
    ctx: &Ctx,
    l: &ListenerRt,
    d: &mut Down,
    status: u16,
    body: &[u8],
    detail: Detail,
) -> (u16, Next) {
    l.http.downstream_cx_protocol_error.inc();
    // Envoy's codec refused it: the connection manager never had a request (none is logged).
    d.log_detail(detail);
    // The codec's error resets the stream (Envoy): `reply` counts it, as for any answer
    // before the request was read.
    d.body_unread = true;
    d.head_request = false;
    reply(ctx, l, d, status, body, false, None).await
}

/// Whether the request keeps its client's `x-forwarded-proto` (not an edge listener that
/// overwrites it) and that is one empty value: Envoy takes the request's scheme from it and
/// then matches no route (404), whatever the route table holds.
#[inline]
fn empty_forwarded_proto(hcm: &crate::config::HttpConnectionManager, h: &HeaderMap) -> bool {
    if !h.may_have_any(known::X_FORWARDED_PROTO)
        || (hcm.use_remote_address && hcm.xff_num_trusted_hops == 0)
    {
        return false;
    }
    h.only(b"x-forwarded-proto").is_some_and(<[u8]>::is_empty)
}

/// Whether the request has one `expect` header and it says `100-continue` (any case).
pub(super) fn expects_continue(h: &HeaderMap) -> bool {
    h.only(b"expect")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
}

/// Writes a connection's last bytes and half-closes it. The bytes go with `MSG_MORE`, so the
/// kernel holds back their last partial segment, and `shutdown(SHUT_WR)` sends it with the FIN
/// in one segment. A plain write then close sends the FIN in a segment of its own, which the
/// client ACKs too: scenario 3 (a connection per request) took 12 TCP segments per request,
/// 10 with this (HAProxy 11; `nstat` TcpOutSegs). Call it only when the connection closes
/// next. The shutdown is done here, not left to the close: a close with unread request bytes
/// resets the connection, and would discard the held-back bytes (see also [`linger`]). Its
/// own failure (the client reset meanwhile) is not the write's: the bytes were handed over.
/// Like every write here, it counts the bytes into `tx` as the kernel takes them, so a write
/// cut short by the client's reset still counts what went (Envoy's `*_cx_tx_bytes_total`).
async fn write_last(s: &TcpStream, buf: &[u8], tx: &Flow<'_>) -> std::io::Result<()> {
    write_more(s, buf, tx).await?;
    let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// Writes all of `buf`, counting the bytes into `tx` as each write takes them (`write_all`
/// would lose the count of a write cut short), and what waits for the socket to take it as
/// buffered meanwhile (Envoy's `*_tx_bytes_buffered`).
pub(super) fn write_all<'a, W: AsyncWrite + Unpin>(
    w: &'a mut W,
    mut buf: &'a [u8],
    tx: &'a Flow<'a>,
) -> impl Future<Output = std::io::Result<()>> + 'a {
    // A poll loop, not an `async fn`: an `.await` per write, or the async fn's own state
    // around it, made a request ~80 instructions dearer than tokio's `write_all` (callgrind).
    poll_fn(move |cx| {
        while !buf.is_empty() {
            let n = match Pin::new(&mut *w).poll_write(cx, buf) {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    tx.hold(buf.len());
                    return Poll::Pending;
                }
            };
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            tx.wrote(n);
            buf = &buf[n..];
        }
        tx.drained();
        Poll::Ready(Ok(()))
    })
}

/// Writes `buf` with `MSG_MORE`: the kernel holds back its last partial segment until the
/// socket's next write (or shutdown), which then goes out with it. The caller must write again.
pub(super) async fn write_more(
    s: &TcpStream,
    mut buf: &[u8],
    tx: &Flow<'_>,
) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(s);
    #[cfg(target_os = "linux")]
    const FLAGS: libc::c_int = libc::MSG_MORE | libc::MSG_NOSIGNAL;
    #[cfg(not(target_os = "linux"))]
    const FLAGS: libc::c_int = 0;
    while !buf.is_empty() {
        let sent = s.try_io(tokio::io::Interest::WRITABLE, || {
            sock.send_with_flags(buf, FLAGS)
        });
        match sent {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                tx.wrote(n);
                buf = &buf[n..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tx.hold(buf.len());
                s.writable().await?;
            }
            Err(e) => return Err(e),
        }
    }
    tx.drained();
    Ok(())
}

/// Writes `buf` to the client; with `last`, as the connection's last bytes ([`write_last`]).
/// (The response pump calls `write_all` itself for its common writes: one async layer less
/// per response, ~50 instructions, callgrind.)
pub(super) async fn write_down(
    w: &mut WriteHalf<'_>,
    buf: &[u8],
    last: bool,
    tx: &Flow<'_>,
) -> std::io::Result<()> {
    if last {
        write_last(w.as_ref(), buf, tx).await
    } else {
        write_all(w, buf, tx).await
    }
}

/// Builds a complete local reply in Envoy's header order: with a body, `content-length`,
/// `content-type: text/plain`, `date`, `server`; without one, `date`, `server`,
/// `content-length: 0` (and `connection: close` before the length when closing).
/// `request_id`: the request's `x-request-id`, under `always_set_request_id_in_response`.
#[allow(clippy::too_many_arguments)]
fn local_reply(
    ctx: &Ctx,
    l: &ListenerRt,
    status: u16,
    body: &[u8],
    close: bool,
    extra: Option<&HeaderMap>,
    head_request: bool,
    request_id: Option<&[u8]>,
) -> Vec<u8> {
    // A 204 or 304 has no body by definition (RFC 9110 sections 15.3.5 and 15.4.5): a
    // configured one is not sent, nor framed. (Envoy 1.40 sends it, with its length, and the
    // client reads it as the start of the next response.)
    let bodiless = status == 204 || status == 304;
    let body = if bodiless { &b""[..] } else { body };
    let mut out = Vec::with_capacity(160 + body.len());
    write_status_line(&mut out, status);
    // Envoy's connection manager writes its own `server` over an edit's, in the edit's place,
    // adds a `date` only if an edit has not, and a local reply without a body has no
    // `content-type`, an edit's neither.
    let mut server_written = false;
    let mut date_given = false;
    if let Some(h) = extra {
        date_given = h.may_have_any(known::DATE) && h.contains(b"date");
        if h.may_have_any(known::SERVER | known::CONTENT_TYPE) {
            let mut h = h.clone();
            if body.is_empty() {
                h.remove(b"content-type");
            }
            if h.contains(b"server") {
                h.set(b"server", &l.c.server_name);
                server_written = true;
            }
            h.write_to(&mut out);
        } else {
            h.write_to(&mut out);
        }
    }
    let date_server = |out: &mut Vec<u8>| {
        if !date_given {
            write_header(out, b"date", &ctx.date());
        }
        if !server_written {
            write_header(out, b"server", &l.c.server_name);
        }
        if let Some(id) = request_id {
            write_header(out, b"x-request-id", id);
        }
        if !l.c.cfg.hcm.via.is_empty() {
            write_header(out, b"via", l.c.cfg.hcm.via.as_bytes());
        }
    };
    if body.is_empty() {
        date_server(&mut out);
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        // A 204 or 304 has no body by definition: Envoy's codec writes no framing for it.
        // Envoy 1.40 quirk, kept for parity: a bodiless local reply to HEAD says chunked.
        out.extend_from_slice(if bodiless {
            &b"\r\n"[..]
        } else if head_request {
            &b"transfer-encoding: chunked\r\n\r\n"[..]
        } else {
            b"content-length: 0\r\n\r\n"
        });
        return out;
    }
    write_framing(&mut out, Framing::Length(body.len() as u64));
    if !extra.is_some_and(|h| h.contains(b"content-type")) {
        out.extend_from_slice(b"content-type: text/plain\r\n");
    }
    date_server(&mut out);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(body);
    }
    out
}

/// Writes a local reply; the connection continues only if `keep` (the caller's decision: the
/// request was read whole and the client wants keep-alive).
pub(super) async fn reply(
    ctx: &Ctx,
    l: &ListenerRt,
    d: &mut Down,
    status: u16,
    body: &[u8],
    keep: bool,
    extra: Option<&HeaderMap>,
) -> (u16, Next) {
    if d.body_unread {
        // As Envoy, which counts every response head encoded before the request is complete,
        // and the request as reset when the connection then closes under it.
        l.http.downstream_rq_response_before_rq_complete.inc();
        l.http.downstream_rq_rx_reset.inc();
    }
    // Asked first: a drain is counted whatever else closes the connection.
    let keep = !response_closes(ctx, l, d.opened, &d.max_reached) && keep;
    let rid = d.request_id.as_deref().map(Vec::as_slice);
    let out = local_reply(ctx, l, status, body, !keep, extra, d.head_request, rid);
    if let Some(r) = d.log() {
        log_reply(r, status, &out);
    }
    let (_, mut w) = d.stream.split();
    let tx = l.http.down_tx(&d.held);
    if write_down(&mut w, &out, !keep, &tx).await.is_err() {
        // The client is gone (as a failed write in an exchange counts it).
        d.peer_closed = true;
        return (status, Next::Close);
    }
    (status, d.next(keep))
}

/// Whether the response about to be written ends its connection: a drain
/// ([`drain_close`]) or the connection's `max_connection_duration` being over
/// ([`past_max_duration`]); both asked, so each is counted whatever else closes it. Takes the
/// connection's fields (an exchange holds the others).
#[inline(always)]
pub(super) fn response_closes(
    ctx: &Ctx,
    l: &ListenerRt,
    opened: Instant,
    reached: &Cell<bool>,
) -> bool {
    let drain = drain_close(ctx, l);
    past_max_duration(l, opened, reached) || drain || overload_closes(ctx, l)
}

/// The overload manager's `disable_http_keepalive` (its scale a probability): the response
/// ends its connection (`downstream_cx_overload_disable_keepalive`).
#[inline(always)]
fn overload_closes(ctx: &Ctx, l: &ListenerRt) -> bool {
    let off = OverloadNow::draw(ctx.overload().keepalive_off);
    if off {
        // Envoy puts the connection in its drain state, so it counts a drain close too.
        l.http.downstream_cx_overload_disable_keepalive.inc();
        l.http.downstream_cx_drain_close.inc();
    }
    off
}

/// Refuses a request under the overload manager's `stop_accepting_requests`: 503 `envoy
/// overloaded`, details `overload`, no response flag (checked with the envoy binary).
#[cold]
#[inline(never)]
async fn overloaded(
    ctx: &Ctx,
    l: &ListenerRt,
    d: &mut Down,
    head: &RequestHead,
    keep: bool,
) -> (u16, Next) {
    l.http.downstream_rq_overload_close.inc();
    d.log_answer(head, false, Detail::Overload);
    reply(ctx, l, d, 503, b"envoy overloaded", keep, None).await
}

/// When the connection's `max_connection_duration` ends (none set: `None`).
#[inline]
fn max_duration_end(l: &ListenerRt, opened: Instant) -> Option<Instant> {
    let ms = l.c.cfg.hcm.max_connection_duration_ms;
    (ms > 0).then(|| opened + Duration::from_millis(ms))
}

/// [`Down::past_max_duration`] on the connection's fields.
#[inline]
fn past_max_duration(l: &ListenerRt, opened: Instant, reached: &Cell<bool>) -> bool {
    let Some(end) = max_duration_end(l, opened) else {
        return false;
    };
    if !reached.get() {
        if clock::now() < end {
            return false;
        }
        reach_max_duration(l, reached);
    }
    true
}

/// Marks the connection's `max_connection_duration` as over, counting it once.
fn reach_max_duration(l: &ListenerRt, reached: &Cell<bool>) {
    if !reached.replace(true) {
        l.http.downstream_cx_max_duration_reached.inc();
    }
}

/// Whether the response about to be written ends its connection for a drain
/// ([`Ctx::drain_close`]); counted as Envoy's `downstream_cx_drain_close`, which its connection
/// manager counts once a connection, at the first response head that finds it draining (an
/// HTTP/1 connection ends with that response).
#[inline]
fn drain_close(ctx: &Ctx, l: &ListenerRt) -> bool {
    let drain = ctx.drain_close(l);
    if drain {
        l.http.downstream_cx_drain_close.inc();
    }
    drain
}

/// The `host` header lower-cased for routing: the header itself when it has no upper-case
/// letter (the usual case: clients send host names lower-case), else a lower-cased copy.
fn lower_host(h: &RequestHead) -> std::borrow::Cow<'_, [u8]> {
    let v = h.headers.get(b"host").unwrap_or_default();
    if v.iter().any(u8::is_ascii_uppercase) {
        std::borrow::Cow::Owned(v.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(v)
    }
}

/// Whether an upgrade request goes upstream: the route's `upgrade_configs` say for its type
/// (the whole `upgrade` value, any case; several `upgrade` headers, joined, match none), else
/// the connection manager's; no route, or one that forwards nowhere, has no say (Envoy's rule).
#[cold]
#[inline(never)]
fn upgrade_allowed(
    hcm: &crate::config::HttpConnectionManager,
    action: Option<&Action>,
    h: &HeaderMap,
) -> bool {
    let Some(kind) = h.only(b"upgrade") else {
        return false;
    };
    let route_says = match action {
        Some(Action::Forward(f)) => f.upgrade_say(kind),
        _ => None,
    };
    route_says.unwrap_or_else(|| {
        hcm.upgrade_types
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(kind))
    })
}

/// A `require_tls` virtual host's answer to a request in the clear: a 301 to
/// `https://<host as sent><target>` (Envoy's `createSslRedirectPath`: the port stays), no
/// edits; counted as a direct response.
#[cold]
#[inline(never)]
async fn tls_redirect(
    ctx: &Ctx,
    l: &ListenerRt,
    d: &mut Down,
    head: &RequestHead,
    keep: bool,
) -> (u16, Next) {
    l.http.rq_direct_response.inc();
    let mut location = b"https://".to_vec();
    location.extend_from_slice(head.headers.get(b"host").unwrap_or_default());
    location.extend_from_slice(head.target());
    let mut h = HeaderMap::default();
    h.append(b"location", &location);
    reply(ctx, l, d, 301, b"", keep, Some(&h)).await
}

/// Checks a parsed request the way Envoy's codec does, routes it, and answers it locally or
/// forwards it.
async fn handle(
    ctx: &Rc<Ctx>,
    snap: &Rc<WorkerSnap>,
    l: &Rc<ListenerRt>,
    d: &mut Down,
    mut head: RequestHead,
    last: bool,
) -> (u16, Next) {
    let mut conn = ConnectionTokens::of(&head.headers);
    // An upgrade goes upstream when the route or the connection manager's `upgrade_configs`
    // take its type, else it gets a 403 once a route is found (a 404 before that). Either way
    // the connection ends with it (the request is never complete: what follows its head is
    // the tunnel's). An h2c offer Envoy's codec drops.
    let mut upgrade = conn.is_upgrade(&head.headers);
    if upgrade && head.minor == 1 && strip_h2c_upgrade(&mut head.headers) {
        conn = ConnectionTokens::of(&head.headers);
        upgrade = false;
    }
    let keep = conn.keep_alive(head.minor) && !last && !ctx.draining();
    // Envoy's codec refuses first, its connection manager after, so a request line the codec
    // takes but the connection manager refuses still gets its `100 Continue` (below).
    let Ok(line) = check_line(&head) else {
        return codec_refusal(ctx, l, d, 400, b"Bad Request", Detail::CodecError).await;
    };
    let framing = match request_framing(&head) {
        Ok(f) => f,
        Err(e) => {
            let (status, body, detail): (u16, &[u8], _) = match e {
                FramingError::BadRequest
                    if head.headers.contains(b"content-length")
                        && head.headers.contains(b"transfer-encoding") =>
                {
                    (400, b"Bad Request", Detail::ContentLengthAndChunked)
                }
                FramingError::BadRequest => (400, b"Bad Request", Detail::CodecError),
                FramingError::NotImplemented => {
                    (501, b"Not Implemented", Detail::InvalidTransferEncoding)
                }
            };
            return codec_refusal(ctx, l, d, status, body, detail).await;
        }
    };
    // A local reply leaves an unread body behind, so the connection then closes; so does an
    // upgrade's.
    let body_pending = !matches!(framing, Framing::Empty | Framing::Length(0)) || upgrade;
    d.body_unread = body_pending;
    let later = match check_target(&head, line) {
        Ok(later) if head.normalize_absolute_form() => later,
        _ => return codec_refusal(ctx, l, d, 400, b"Bad Request", Detail::CodecError).await,
    };
    // An edge listener (use_remote_address) takes no `https://` target over plain TCP: Envoy's
    // codec answers 403 ("https in the clear"), before it looks at the version.
    if head.absolute_https() == Some(true) && l.c.cfg.hcm.use_remote_address {
        return codec_refusal(ctx, l, d, 403, b"Forbidden", Detail::HttpsInPlaintext).await;
    }
    if head.minor != 1 {
        return codec_refusal(ctx, l, d, 426, b"Upgrade Required", Detail::LowVersion).await;
    }
    let Ok(several_hosts) = check_hosts(&head) else {
        return codec_refusal(ctx, l, d, 400, b"Bad Request", Detail::CodecError).await;
    };
    // The overload manager's `stop_accepting_requests` (its scale a probability), before
    // anything of the connection manager's own (Envoy's order): 503 `envoy overloaded`.
    if OverloadNow::draw(ctx.overload().stop_requests) {
        return overloaded(ctx, l, d, &head, keep && !body_pending).await;
    }
    // Envoy answers `Expect: 100-continue` itself unless proxy_100_continue is set, as soon as
    // its codec has taken the head, whatever the answer will be. Two `expect` headers read as
    // one joined value, which is not `100-continue`.
    // It counts as a response sent (`downstream_rq_1xx`, `downstream_rq_completed`), as Envoy
    // charges it.
    if !l.c.cfg.hcm.proxy_100_continue && expects_continue(&head.headers) {
        head.headers.remove(b"expect");
        l.count_completed(100);
        let tx = l.http.down_tx(&d.held);
        if write_all(&mut d.stream, CONTINUE, &tx).await.is_err() {
            // The client is gone.
            d.peer_closed = true;
            d.log_detail(Detail::DownstreamDisconnect);
            return (0, Next::Close);
        }
    }
    if let Err(refusal) = later {
        let (status, detail) = match refusal {
            Refusal::ConnectNotRouted => (404, Detail::RouteNotFound),
            Refusal::Fragment => {
                l.http.downstream_rq_failed_path_normalization.inc();
                (400, Detail::PathNormalizationFailed)
            }
            _ => (400, Detail::CodecError),
        };
        if d.log.is_some() {
            // Envoy's connection manager takes a CONNECT as a request (a scheme, never
            // complete) and finds it no route.
            let connect = matches!(refusal, Refusal::ConnectNotRouted);
            d.log_answer(&head, connect, detail);
            if let Some(r) = d.log().filter(|_| connect) {
                r.request_done = None;
            }
        }
        return reply(ctx, l, d, status, b"", false, None).await;
    }
    if several_hosts {
        // Envoy keeps one `host`, its values joined by commas, and routes by that.
        head.headers.join_all(b"host");
    }
    // No host, or a `connection` header that would remove it: 400 with no body, as Envoy.
    if !head.headers.contains(b"host") || conn.names_host() {
        d.log_answer(&head, false, Detail::MissingHost);
        return reply(ctx, l, d, 400, b"", false, None).await;
    }
    let keep_after_local = keep && !body_pending;
    // Only a path is routed (`OPTIONS *` is not): 404, as Envoy's connection manager.
    if head.target().first() != Some(&b'/') {
        l.http.downstream_rq_non_relative_path.inc();
        d.log_answer(&head, false, Detail::AbsolutePathRejected);
        return reply(ctx, l, d, 404, b"", keep_after_local, None).await;
    }
    let paths = l.c.cfg.hcm.path_options();
    if paths.active() {
        if let Some(answer) = rewrite_path(ctx, l, d, &mut head, &paths, keep_after_local).await {
            return answer;
        }
    }
    if l.c.cfg.hcm.strip_any_host_port || l.c.cfg.hcm.strip_matching_host_port {
        strip_host_port(d, &mut head.headers, l.c.cfg.hcm.strip_matching_host_port);
    }
    // Read before the edits below add an `x-forwarded-proto` (they never change one a
    // non-edge listener keeps), so that a request without one skips the look.
    let no_scheme = empty_forwarded_proto(&l.c.cfg.hcm, &head.headers);
    // The connection manager's own edits come before routing: routes match on the headers as
    // they leave them (hop-by-hop headers gone, `x-forwarded-proto` and `x-request-id` set),
    // as in Envoy.
    mutate_request(l, d.peer, &mut head.headers, conn, upgrade);
    if l.c.cfg.hcm.always_set_request_id_in_response {
        // Every answer from here on says the request's id (Envoy's codec refusals before this
        // point say none). Cleared when the request ends.
        d.request_id = head
            .headers
            .get(b"x-request-id")
            .map(|v| Box::new(v.to_vec()));
    }
    let table = &l.c.routes;
    // Routing by `*` alone never looks at the host: no lower-casing.
    let host = if table.uses_host() {
        lower_host(&head)
    } else {
        std::borrow::Cow::Borrowed(&b""[..])
    };
    // Every request that reaches the router counts as its own (a route found or not); an
    // upgrade the route refuses never does (Envoy refuses it before its filters run).
    let rq = RouteRequest {
        method: head.method(),
        target: head.target(),
        headers: &head.headers,
        absolute_https: head.absolute_https(),
    };
    let found = if no_scheme {
        None
    } else {
        table.route(&host, &rq)
    };
    let Some((vh, route)) = found else {
        l.http.rq_total.inc();
        l.http.no_route.inc();
        d.log_answer(&head, true, Detail::RouteNotFound);
        // The connection manager takes an upgrade before routing (Envoy counts it so); the
        // 404 then closes the connection, whether it took it or not.
        if upgrade && upgrade_allowed(&l.c.cfg.hcm, None, &head.headers) {
            l.http.downstream_cx_upgrades_total.inc();
        }
        return reply(ctx, l, d, 404, b"", keep_after_local, None).await;
    };
    if upgrade {
        if !upgrade_allowed(&l.c.cfg.hcm, Some(&route.action), &head.headers) {
            // Envoy's name says websocket, whatever the type.
            l.http.downstream_rq_ws_on_non_ws_route.inc();
            if d.log.is_some() {
                d.log_answer(&head, true, Detail::UpgradeFailed);
                log_route(d, route);
                // Envoy has picked the route's cluster by then (one named outright).
                if let (Some(r), Action::Forward(f)) = (d.log(), &route.action) {
                    if let ([(ci, _, _)], None) = (&f.clusters[..], &f.cluster_header) {
                        r.cluster = Some(snap.clusters[*ci].clone());
                    }
                }
            }
            return reply(ctx, l, d, 403, b"", false, None).await;
        }
        // Counted once taken, whatever the route does with it (active: the tunnel, forward.rs).
        l.http.downstream_cx_upgrades_total.inc();
    }
    l.http.rq_total.inc();
    // A local reply's edits: their commands read the request. As in Envoy, the reply's code
    // is not set yet when they run: `%RESPONSE_CODE%` is 0; `%RESP(...)%` reads the reply's
    // headers as the edits so far leave them (a `location`, a less specific level's edits).
    // `target`: the request's `:path` as the edits see it (a redirect's prefix_rewrite has
    // changed it by then, in Envoy).
    let response_mutations = |h: &mut HeaderMap, d: &Down, target: &[u8], headers: &HeaderMap| {
        let local = || d.stream.local_addr().ok();
        let cx = Cx {
            peer: d.peer,
            local: &local,
            minor: head.minor,
            request: Some(ReqView {
                method: head.method(),
                target,
                headers: Some(headers),
                https: head.absolute_https() == Some(true),
            }),
            status: 0,
            upstream: None,
            response: true,
        };
        route.mutations.apply_response(h, &cx);
        vh.mutations.apply_response(h, &cx);
        table.mutations.apply_response(h, &cx);
    };
    if !matches!(route.action, Action::Forward(_)) && d.log.is_some() {
        d.log_answer(&head, true, Detail::DirectResponse);
        log_route(d, route);
    }
    match &route.action {
        Action::TlsRedirect => tls_redirect(ctx, l, d, &head, keep_after_local).await,
        Action::Direct { status, body } => {
            l.http.rq_direct_response.inc();
            let mut h = HeaderMap::default();
            // As in Envoy (RFC 9110 section 10.2.2), a 201 or 3xx says where: the request's
            // own URL, built as a redirect's location that changes nothing.
            if *status == 201 || (300..400).contains(status) {
                let host = head.headers.get(b"host").unwrap_or_default();
                let proto = head.headers.get(b"x-forwarded-proto").unwrap_or_default();
                h.append(
                    b"location",
                    &request_location(host, head.target(), rq.scheme(), proto),
                );
            }
            response_mutations(&mut h, d, head.target(), &head.headers);
            // Envoy's connection manager closes an HTTP/1 connection after any local 400,
            // a configured one too (`connection: close`).
            let keep = keep_after_local && *status != 400;
            reply(ctx, l, d, *status, body, keep, Some(&h)).await
        }
        Action::Redirect(r) => {
            // Envoy's router counts a redirect as a direct response.
            l.http.rq_direct_response.inc();
            let mut h = HeaderMap::default();
            // The location keeps the host as the client spelled it (Envoy).
            let host = head.headers.get(b"host").unwrap_or_default();
            let proto = head.headers.get(b"x-forwarded-proto").unwrap_or_default();
            let prefix_len = route.prefix_len(head.target());
            h.append(
                b"location",
                &redirect_location(r, prefix_len, host, head.target(), rq.scheme(), proto),
            );
            if route.mutations.response_reads_request
                || vh.mutations.response_reads_request
                || table.mutations.response_reads_request
            {
                // Envoy rewrites the request's `:path` and, unless the router suppresses its
                // headers, records the old one in `x-envoy-original-path` before the edits run.
                match redirect_rewritten_target(r, prefix_len, head.target()) {
                    Some(path) if !l.c.cfg.hcm.suppress_envoy_headers => {
                        let mut seen = head.headers.clone();
                        seen.set(b"x-envoy-original-path", head.target());
                        response_mutations(&mut h, d, &path, &seen);
                    }
                    Some(path) => response_mutations(&mut h, d, &path, &head.headers),
                    None => response_mutations(&mut h, d, head.target(), &head.headers),
                }
            } else {
                response_mutations(&mut h, d, head.target(), &head.headers);
            }
            reply(
                ctx,
                l,
                d,
                r.cfg.response_code,
                b"",
                keep_after_local,
                Some(&h),
            )
            .await
        }
        Action::Forward(fwd) => {
            let (mut ci, _, wc_mut) = fwd.pick();
            if let Some(by) = &fwd.cluster_header {
                match by.pick(&head.headers) {
                    Some(i) => ci = i,
                    // No header, or no such cluster: Envoy's 503, no body.
                    None => {
                        l.http.no_cluster.inc();
                        if d.log.is_some() {
                            d.log_answer(&head, true, Detail::ClusterNotFound);
                            log_route(d, route);
                        }
                        return reply(ctx, l, d, 503, b"", keep_after_local, None).await;
                    }
                }
            }
            let cluster = snap.clusters[ci].clone();
            // Header edits, most specific first (weighted cluster, route, virtual host, route
            // config), as Envoy applies them, after Envoy's own headers.
            let chain = [wc_mut, &route.mutations, &vh.mutations, &table.mutations];
            let prefix_len = route.prefix_len(head.target());
            forward(
                ctx,
                l,
                d,
                head,
                conn,
                framing,
                keep && !upgrade,
                upgrade,
                fwd,
                prefix_len,
                &cluster,
                &chain,
            )
            .await
        }
    }
}

/// The request as it stands, for its access log.
pub(super) fn logged(head: &RequestHead, routed: bool) -> LoggedRequest {
    LoggedRequest {
        head: head.clone(),
        rewritten: None,
        routed,
    }
}

/// Records the route's name for the access log.
fn log_route(d: &mut Down, route: &crate::router::Route) {
    if let Some(r) = d.log() {
        r.route = route.name.clone();
    }
}

/// Records a local reply for the access log: its code, its head and its body's length.
fn log_reply(r: &mut Record, status: u16, out: &[u8]) {
    r.status = status;
    let head = memchr::memmem::find(out, b"\r\n\r\n").map_or(out.len(), |i| i + 4);
    r.bytes_sent = (out.len() - head) as u64;
    let mut logged = out[..head].to_vec();
    // The framing of a reply without a body is the codec's (Envoy's reply has none in its
    // header map, which its access log reads).
    for framing in [
        &b"content-length: 0\r\n"[..],
        b"transfer-encoding: chunked\r\n",
    ] {
        if let Some(i) = memchr::memmem::find(&logged, framing) {
            logged.drain(i..i + framing.len());
        }
    }
    r.response = Some(crate::accesslog::LoggedResponse::Raw(logged));
}

/// Writes a finished request's access log lines (to the worker's buffers).
#[cold]
#[inline(never)]
fn write_log(ctx: &Ctx, l: &ListenerRt, d: &Down, rec: Box<Record>) {
    let Some(logs) = &l.c.logs else {
        return;
    };
    let now = clock::now();
    let e = Emit {
        peer: d.peer,
        local: logs
            .needs_local
            .then(|| d.stream.local_addr().ok())
            .flatten(),
        // `done_at` is the last proxied response's end: this request's only if it came after
        // its start (a request that ended before its head was read has none).
        end: d.done_at.filter(|t| *t >= rec.start).unwrap_or(now),
        now,
        wall: crate::accesslog::wall_at(now),
    };
    logs.write(&rec, &e, &ctx.log_bufs);
    ctx.put_log_record(rec);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// A writer that takes `take` bytes a write, `room` in all, and then fails as a socket
    /// the peer reset does, or, with `stall`, waits (a client that stopped reading).
    struct Cut {
        take: usize,
        room: usize,
        stall: bool,
    }

    impl AsyncWrite for Cut {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.room == 0 {
                return if self.stall {
                    Poll::Pending
                } else {
                    Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
                };
            }
            let n = buf.len().min(self.take).min(self.room);
            self.room -= n;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A connection's byte counter, buffered gauge and share of it, fresh.
    #[derive(Default)]
    struct Parts {
        total: crate::stats::Counter,
        gauge: crate::stats::Gauge,
        held: Buffered,
    }

    impl Parts {
        /// Its sending flow.
        fn tx(&self) -> Flow<'_> {
            Flow {
                total: &self.total,
                buffered: &self.gauge,
                held: &self.held.tx,
            }
        }
    }

    fn cut(take: usize, room: usize, stall: bool) -> Cut {
        Cut { take, room, stall }
    }

    #[test]
    fn a_write_cut_short_still_counts_what_went() {
        let p = Parts::default();
        let (total, tx) = (&p.total, p.tx());
        let mut w = cut(4, 10, false);
        assert!(run(write_all(&mut w, b"0123456789abcdef", &tx)).is_err());
        assert_eq!(total.get(), 10);
    }

    #[test]
    fn a_whole_write_counts_every_byte_once() {
        let p = Parts::default();
        let (total, gauge, tx) = (&p.total, &p.gauge, p.tx());
        let mut w = cut(3, 100, false);
        run(write_all(&mut w, b"0123456789", &tx)).unwrap();
        assert_eq!((total.get(), gauge.get()), (10, 0));
    }

    #[test]
    fn what_waits_for_the_socket_counts_as_buffered_until_it_goes() {
        let p = Parts::default();
        let (total, gauge, tx) = (&p.total, &p.gauge, p.tx());
        let mut w = cut(usize::MAX, 6, true);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        {
            let mut f = std::pin::pin!(write_all(&mut w, b"0123456789", &tx));
            assert!(f.as_mut().poll(&mut cx).is_pending());
            assert_eq!((total.get(), gauge.get()), (6, 4));
        }
        // The socket takes the rest.
        w.room = 100;
        run(write_all(&mut w, b"6789", &tx)).unwrap();
        assert_eq!((total.get(), gauge.get()), (10, 0));
        // A connection that ends with bytes waiting takes them off the gauge.
        let mut w = cut(usize::MAX, 0, true);
        let mut f = std::pin::pin!(write_all(&mut w, b"abc", &tx));
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(gauge.get(), 3);
        p.held.release([gauge, gauge]);
        assert_eq!(gauge.get(), 0);
    }
}
