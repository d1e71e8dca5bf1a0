//! Forwarding one request to an upstream: pick a host, take a pooled connection or open one,
//! write the request head, then move the request body and the response concurrently through
//! bounded buffers until both are complete (or a timeout, a reset or a client going away ends
//! the exchange), and return the connection to the pool only at a clean message boundary.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::clock;
use super::conn::{
    read_more, reply, response_closes, write_all, write_down, write_more, Down, Next, BODY_CHUNK,
    READ_CHUNK,
};
use super::ctx::{Ctx, ListenerRt};
use super::headers::{append_via, apply_response_extras, rewrite_target, router_request_headers};
use super::timer::earliest;
use crate::accesslog::{Detail, LoggedRequest, RetryFlag};
use crate::http1::body::{encode_chunk, Decoded, Decoder, Framing, LAST_CHUNK};
use crate::http1::codec::{
    method_has_no_body, response_framing, strip_for_upgrade, strip_hop_by_hop_response,
    write_framing, write_status_line, ConnectionTokens,
};
use crate::http1::head::{parse_response_counted, HeaderMap, RequestHead};
use crate::router::retry::{Backoff, Reset, RetryPolicy};
use crate::router::{Cx, Forward, Mutations, ReqView};
use crate::snapshot::Discovery;
use crate::stats::{ClusterScope, Flow, GaugeHold};
use crate::upstream::breaker::Priority;
use crate::upstream::outlier::Local;
use crate::upstream::pool::{ConnectFail, Pool, UpConn, Wake};
use crate::upstream::{ClusterRt, CxGuard, HostRt, RqGuard};

/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 96 * 1024;
const RESET_TERMINATION: &[u8] =
    b"upstream connect error or disconnect/reset before headers. reset reason: connection termination";
const RESET_PROTOCOL: &[u8] =
    b"upstream connect error or disconnect/reset before headers. reset reason: protocol error";
// The same after a retry (Envoy names the last try's reason so).
const RETRIED_TERMINATION: &[u8] =
    b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection termination";
const RETRIED_PROTOCOL: &[u8] =
    b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: protocol error";

/// Who ended an exchange early, for the stats: an upstream fault is counted on the cluster, a
/// downstream one only as a reset we sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The upstream closed or reset before a complete response.
    UpstreamReset,
    /// The upstream sent something that is not a valid HTTP/1.1 response.
    UpstreamProtocol,
    /// The route timeout expired.
    RouteTimeout,
    /// The retry policy's `per_try_timeout` expired before the response head came.
    PerTryTimeout,
    /// The retry policy's `per_try_idle_timeout`: the upstream sent nothing for that long.
    PerTryIdle,
    /// Nothing moved for `stream_idle_timeout` while waiting on the upstream.
    UpstreamIdle,
    /// The client stalled or sent a malformed body.
    Downstream,
    /// The client closed or reset its connection mid-exchange.
    ClientGone,
    /// The stream's `max_stream_duration` passed (the connection manager's timer: no
    /// upstream stats).
    MaxDuration,
}

/// How an exchange with an upstream ended.
enum Outcome {
    /// The response went downstream in full.
    Done {
        status: u16,
        up_reusable: bool,
        down_keep: bool,
        /// When the response's last bytes were written downstream.
        end: Instant,
    },
    /// Failed before anything was sent downstream: answer locally.
    Local {
        status: u16,
        body: &'static [u8],
        keep: bool,
        cause: Cause,
        /// The upstream's informational response (100, 102, 103, 104) came first: Envoy's
        /// router then takes the response as begun and charges the upstream no code for the
        /// failure.
        informed: bool,
    },
    /// Failed after the response head went downstream (`status` is that head's), or the client
    /// went away (`status` 0): close the connection.
    Abort { status: u16, cause: Cause },
    /// The upstream took the upgrade: its `101` went downstream, and the connections are a
    /// tunnel from now on.
    Switched,
    /// The route's retry policy tries the request again: this try's response (`status`; 0
    /// for none) is dropped, its connection kept only when `reuse` (a response with no body,
    /// as Envoy keeps it); `per_try`: its per-try timeout passed.
    Retry {
        status: u16,
        per_try: bool,
        /// The per-try timeout that passed was the idle one.
        idle: bool,
        /// The try ended on an invalid response head (`upstream_cx_protocol_error`).
        protocol: bool,
        reuse: bool,
    },
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TunnelEnd {
    /// The client closed (or half-closed, which ends both sides, as in Envoy) or reset.
    Client,
    /// The upstream closed or reset.
    Upstream,
    /// Nothing moved either way for the stream idle timeout.
    Idle,
    /// The stream's `max_stream_duration` passed.
    Duration,
    /// The listener was removed and its drain time is over.
    Removed,
}

/// Forwards a routed request and writes the response; returns the status sent (0 if none, or
/// if counted here: a 101, whose tunnel follows) and whether the client connection continues.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    ctx: &Rc<Ctx>,
    l: &Rc<ListenerRt>,
    d: &mut Down,
    head: RequestHead,
    conn: ConnectionTokens,
    framing: Framing,
    keep: bool,
    upgrade: bool,
    fwd: &Forward,
    prefix_len: usize,
    cluster: &Rc<ClusterRt>,
    chain: &[&Mutations; 4],
) -> (u16, Next) {
    let cs = &cluster.stats;
    // The stream's whole life: the route's `max_stream_duration`, else the connection
    // manager's, from the request's first bytes.
    let duration_ms = fwd
        .max_stream_duration_ms
        .unwrap_or(l.c.cfg.hcm.max_stream_duration_ms);
    let duration_by = (duration_ms > 0).then(|| d.stream_from + Duration::from_millis(duration_ms));
    // What follows an upgrade's head is never read here (it is the tunnel's, or left unread).
    let body_pending = !matches!(framing, Framing::Empty | Framing::Length(0)) || upgrade;
    // A hashing balancer picks by the route's hash of the request; a cookie it made up goes
    // back with the response.
    let mut set_cookie = None;
    let mut hash = None;
    let picked = if cluster.cfg.policy.hashes() {
        let stream = &d.stream;
        let (h, cookie) = crate::router::hash::request_hash(
            &fwd.hash_policy,
            &head.headers,
            head.target(),
            d.peer,
            &|| stream.local_addr().ok(),
        );
        set_cookie = cookie;
        hash = h;
        cluster.pick_hashed(hash)
    } else {
        cluster.pick()
    };
    let Some(mut host) = picked else {
        if d.log.is_some() {
            d.log_answer(&head, true, Detail::NoHealthyUpstream);
            log_upstream(d, fwd, cluster, None, None, false);
        }
        let tried = attempt_header(fwd.attempt_count_down, 1);
        return no_healthy_upstream(ctx, l, d, cluster, keep && !body_pending, tried).await;
    };
    let is_head = head.method() == b"HEAD";
    let minor = head.minor;
    // A response edit that reads the request (`%REQ(...)%`) sees it as it went upstream:
    // Envoy's router edits the request in place (its edits, the path and host rewrites).
    let edits_read = chain.iter().any(|m| m.response_reads_request);
    let save = edits_read || d.log.is_some();
    let peer = d.peer;
    // Response edits' commands may ask for the local address once the stream is split.
    let response_local = if chain.iter().any(|m| m.response_commands) {
        d.stream.local_addr().ok()
    } else {
        None
    };
    // The route's priority: the cluster's circuit breakers and the host's pool for it.
    let high = fwd.high_priority;
    let limits = cluster.cfg.breakers.of(high);
    // A retry policy's state, and the request as the connection manager left it, from which
    // each try's head is written again (an upgrade is never tried again).
    let tries = match fwd.retry.as_deref() {
        // Envoy keeps no retry state for a policy without conditions (its per-try timeout
        // still applies).
        Some(policy)
            if !upgrade
                && policy.retries_request(&crate::router::RouteRequest {
                    method: head.method(),
                    target: head.target(),
                    headers: &head.headers,
                    absolute_https: head.absolute_https(),
                }) =>
        {
            // Envoy buffers a body for retries up to the request's buffer limit: the route's,
            // else the connection's.
            let limit = fwd
                .retry_buffer_limit
                .unwrap_or(l.c.cfg.per_connection_buffer_limit_bytes);
            Some(Box::new(Tries::new(policy, limits, cs, u64::from(limit))))
        }
        _ => None,
    };
    let tries = tries.as_deref();
    if let Some(t) = tries {
        t.tried.borrow_mut().push(host.addr);
    }
    let kept = tries.map(|_| head.clone());
    let (mut out, chunk_up, saved) = {
        let stream = &d.stream;
        let local = || stream.local_addr().ok();
        upstream_head(
            l,
            head,
            save,
            peer,
            &local,
            conn,
            framing,
            fwd,
            prefix_len,
            cluster,
            &host,
            chain,
            ctx.take_write_buf(),
            Try::FIRST,
        )
    };
    // The access log has the request and where it goes from now on, whatever ends the
    // exchange (also the worker stopping under it); the response edits keep theirs.
    let saved = if d.log.is_some() {
        log_upstream(d, fwd, cluster, Some(&host), saved, edits_read)
    } else {
        saved.map(Box::new)
    };
    // As the overload manager's `reduce_timeouts` has it when the request is forwarded.
    let idle_ms = ctx.overload().stream_idle_ms(
        fwd.idle_timeout_ms
            .unwrap_or(l.c.cfg.hcm.stream_idle_timeout_ms),
    );
    let up_chunk =
        BODY_CHUNK.min(cluster.cfg.cfg.per_connection_buffer_limit_bytes.max(1) as usize);
    // One pass per try: a route without a retry policy makes one.
    loop {
        // A try after one that read the request body sends the body kept from it.
        let replay = tries.is_some_and(|t| t.consumed.get());
        let rq_guard = RqGuard::new(host.clone(), cs.clone());
        let pool = host.pool(high);
        // The upstream request starts now: with a pooled connection that is, within
        // microseconds, when the head was parsed (no clock read); after a connect, it is read
        // again below. A try after the first starts when it is made.
        let mut rq_start = if tries.is_some_and(|t| t.attempt.get() > 1) {
            clock::now()
        } else {
            d.started
        };
        // The route timeout's end, once it began (it runs over every try).
        let mut route_by = tries.and_then(|t| t.route_by.get());
        let up = match pool.checkout(&cluster.cfg.breakers) {
            Some(c) => c,
            None => {
                // Envoy refuses a request that would wait for a connection once
                // max_pending_requests do, before any connection is made for it.
                if !limits.pending.has_room() {
                    cs.s.upstream_rq_pending_overflow.inc();
                    drop(rq_guard);
                    let whole = !body_pending || replay;
                    let tried = attempt_header(fwd.attempt_count_down, attempt_no(tries));
                    return overflow(ctx, l, d, cs, None, keep && whole, tried).await;
                }
                cs.s.upstream_rq_pending_total.inc();
                // Pending until it has a connection, or fails, or its client leaves.
                let pending_hold = limits.pending.hold();
                let pending_active = GaugeHold::new(&cs.s.upstream_rq_pending_active);
                // A client that goes away while the connection is being made cancels the
                // request before it is sent, as Envoy cancels a pending request. Body bytes
                // that come meanwhile are read ahead for the exchange, as far as the
                // connection's buffer limit (Envoy buffers them likewise), and the watch then
                // waits on that.
                let (dr, _) = d.stream.split();
                let rx = l.http.down_rx(&d.held);
                let ahead =
                    READ_CHUNK.min(l.c.cfg.per_connection_buffer_limit_bytes.max(1) as usize);
                // The route timeout runs while a request that is in whole waits (Envoy starts
                // it once the request is in; a body still coming is read ahead, not waited
                // for).
                if route_by.is_none() {
                    route_by = (fwd.timeout_ms > 0 && !body_pending).then(|| {
                        tokio::time::Instant::from_std(d.started)
                            + Duration::from_millis(fwd.timeout_ms)
                    });
                }
                let mut front = false;
                let got = loop {
                    // Woken to decide again: a connection given back meanwhile went to the
                    // pool (no one was in line), so look there first.
                    if front {
                        if let Some(c) = pool.checkout(&cluster.cfg.breakers) {
                            break Ok(c);
                        }
                    }
                    // A connection still being made for a request that went away is taken
                    // before a new one is made (Envoy's pool counts it as room for a pending
                    // request).
                    let mut handoff = pool.wait_for_orphan();
                    let mut attempt = None;
                    if handoff.is_none() {
                        // At max_connections the request waits for one of the pool's
                        // connections, unless the pool has none at all: Envoy makes one then
                        // regardless, so no request waits on a pool with nothing to give it.
                        // Either way a connection the limit held back is counted.
                        let room = limits.cx.has_room();
                        if !room {
                            cs.s.upstream_cx_overflow.inc();
                        }
                        if room || host.stats.cx_active.get() == 0 {
                            // Boxed (once per new connection, not per request): it may outlive
                            // this request.
                            attempt = Some(Box::pin(connect(cluster.clone(), host.clone(), high)));
                        } else {
                            handoff = Some(pool.wait(front));
                        }
                    }
                    let pending = std::future::poll_fn(|cx| match (&mut attempt, &mut handoff) {
                        (Some(a), _) => a.as_mut().poll(cx).map(|r| match r {
                            Ok(c) => Wake::Conn(c),
                            Err(fail) => {
                                // Envoy's pool fails every request waiting when a connect
                                // fails.
                                pool.fail(fail);
                                Wake::Failed(fail)
                            }
                        }),
                        // Its attempt ended without an answer only if the worker is stopping.
                        (None, Some(h)) => std::pin::Pin::new(h)
                            .poll(cx)
                            .map(|r| r.unwrap_or(Wake::Failed(ConnectFail::Refused))),
                        (None, None) => unreachable!("a request waits on an attempt or in line"),
                    });
                    let woke = tokio::select! {
                        biased;
                        w = pending => w,
                        _ = watch_client(&dr, &mut d.rbuf, &rx, ahead) => {
                            cs.s.upstream_rq_cancelled.inc();
                            // Its own attempt goes on for the pool; a place in line is given
                            // up.
                            if let Some(attempt) = attempt {
                                finish_connect(ctx.clone(), host.clone(), high, attempt);
                            }
                            l.http.downstream_rq_rx_reset.inc();
                            d.peer_closed = true;
                            d.ended_in_request = true;
                            d.log_detail(Detail::DownstreamDisconnect);
                            return (0, Next::Close);
                        }
                        () = d.timer.until(earliest([route_by, duration_by])) => {
                            if let Some(attempt) = attempt {
                                finish_connect(ctx.clone(), host.clone(), high, attempt);
                            }
                            drop((pending_active, pending_hold, rq_guard));
                            let tried = attempt_header(fwd.attempt_count_down, attempt_no(tries));
                            if duration_by.is_some_and(|dl| tokio::time::Instant::now() >= dl) {
                                // The request waited for a connection (Envoy cancels it).
                                cs.s.upstream_rq_cancelled.inc();
                                let whole = !body_pending
                                    || replay
                                    || (!upgrade && take_whole_body(d, framing));
                                return duration_over(ctx, l, d, keep, whole, tried).await;
                            }
                            return pending_timeout(ctx, l, d, cs, keep, tried).await;
                        }
                    };
                    match woke {
                        Wake::Conn(c) => break Ok(c),
                        Wake::Failed(fail) => break Err(fail),
                        // A connection of the pool closed, or one was given back with the
                        // cluster under its limit: decide again, first in line.
                        Wake::Retry => front = true,
                    }
                };
                drop((pending_active, pending_hold));
                match got {
                    Ok(c) => {
                        rq_start = clock::now();
                        c
                    }
                    Err(reason) => {
                        // The request waited on a connection that failed (Envoy's pending
                        // request ejected); it never went upstream (no upstream_rq_total).
                        cs.s.upstream_rq_pending_failure_eject.inc();
                        host.stats.rq_error.inc();
                        report_local(cluster, &host, Local::ConnectFailed);
                        drop(rq_guard);
                        if let Some(t) = tries {
                            // Nothing of the request went upstream: a try may follow.
                            if t.decide(t.policy.retries_reset(Reset::ConnectFailure, false)) {
                                match next_try(
                                    ctx,
                                    l,
                                    d,
                                    fwd,
                                    cluster,
                                    hash,
                                    t,
                                    body_pending,
                                    keep,
                                    duration_by,
                                    framing,
                                )
                                .await
                                {
                                    Ok(h) => {
                                        host = h;
                                        ctx.put_write_buf(std::mem::take(&mut out));
                                        out = try_head(
                                            l, d, &kept, conn, framing, fwd, prefix_len, cluster,
                                            &host, chain, ctx, t,
                                        );
                                        continue;
                                    }
                                    Err(done) => return done,
                                }
                            }
                            if let Some(r) = d.log() {
                                r.retry_flag = t.flag.get();
                            }
                        }
                        cs.count_response(503);
                        // After a retry Envoy names the last try's reason so.
                        let retried = tries.is_some_and(|t| t.attempt.get() > 1);
                        let body: &'static [u8] = match (reason, retried) {
                            (ConnectFail::Timeout, false) => {
                                b"upstream connect error or disconnect/reset before headers. reset reason: connection timeout"
                            }
                            (ConnectFail::Timeout, true) => {
                                b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection timeout"
                            }
                            (ConnectFail::Refused, false) => {
                                b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
                            }
                            (ConnectFail::Refused, true) => {
                                b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure"
                            }
                        };
                        d.log_detail(match reason {
                            ConnectFail::Timeout => Detail::ConnectTimeout,
                            ConnectFail::Refused => Detail::ConnectRefused,
                        });
                        // A body read ahead whole while the connection was being made is
                        // complete, as Envoy has it by then: the reply answers a whole
                        // request and the client connection stays, with the body dropped
                        // from the buffer.
                        let taken =
                            body_pending && !upgrade && !replay && take_whole_body(d, framing);
                        let whole = taken || replay;
                        if whole {
                            d.body_unread = false;
                        }
                        let keep = keep && (whole || !body_pending);
                        let tried = attempt_header(fwd.attempt_count_down, attempt_no(tries));
                        return reply(ctx, l, d, 503, body, keep, tried.as_ref()).await;
                    }
                }
            }
        };
        // Envoy checks max_requests as it puts the request on a connection, which then stays
        // in the pool.
        if !limits.rq.has_room() {
            cs.s.upstream_rq_active_overflow.inc();
            host.stats.rq_error.inc();
            drop(rq_guard);
            if ctx.draining() {
                close_upstream(ctx, up);
            } else {
                release(ctx, cluster, &host, high, up, clock::now());
            }
            let whole = !body_pending || replay;
            let tried = attempt_header(fwd.attempt_count_down, attempt_no(tries));
            return overflow(ctx, l, d, cs, Some(host.addr), keep && whole, tried).await;
        }
        let active = limits.rq.hold();
        let mut up = up;
        // The try has its connection (Envoy's pool-ready, which its outlier detector hears).
        if let Some(m) = &host.outlier {
            if let Some(o) = &cluster.cfg.outlier {
                m.put_connected(o);
            }
        }
        // Envoy counts a request upstream once it has a connection to go on.
        cs.s.upstream_rq_total.inc();
        host.stats.rq_total.inc();
        up.requests += 1;
        up.rbuf = ctx.take_read_buf();
        let x = Exchange {
            ctx,
            l,
            cs,
            // A try that sends the kept body reads nothing more from the client.
            framing: if replay { Framing::Length(0) } else { framing },
            is_head,
            keep,
            upgrade,
            timeout_ms: fwd.timeout_ms,
            route_by,
            idle_ms,
            chain,
            rq_start,
            up_chunk,
            max_headers: cluster.cfg.cfg.max_headers_count as usize,
            relay_1xx: l.c.cfg.hcm.proxy_100_continue,
            chunk_up: chunk_up && !replay,
            minor,
            upstream: host.addr,
            saved: saved.as_deref(),
            local: response_local,
            set_cookie: set_cookie.as_deref(),
            health: cluster.cfg.health.as_deref(),
            outlier: host.outlier.as_deref().zip(cluster.cfg.outlier.as_deref()),
            duration_by,
            tries,
            replay,
            per_try_ms: fwd.retry.as_ref().map_or(0, |p| p.per_try_timeout_ms),
            per_try_idle_ms: fwd.retry.as_ref().map_or(0, |p| p.per_try_idle_timeout_ms),
            attempt_down: if fwd.attempt_count_down {
                tries.map_or(1, |t| t.attempt.get())
            } else {
                0
            },
            service_from: tries.map_or(rq_start, |t| *t.first_start.get_or_init(|| rq_start)),
        };
        if let (Some(t), false) = (tries, replay) {
            t.consumed.set(true);
        }
        let outcome = x.run(d, &mut up, std::mem::take(&mut out)).await;
        if let Some(r) = d.log.as_deref_mut() {
            r.connected = true;
            if l.c.logs.as_ref().is_some_and(|g| g.needs_upstream_local) {
                r.upstream_local = up.stream.local_addr().ok();
            }
            r.detail = Some(match &outcome {
                Outcome::Done { end, .. } => {
                    r.response_done = Some(*end);
                    Detail::ViaUpstream
                }
                Outcome::Local {
                    status,
                    body,
                    cause,
                    ..
                } => match cause {
                    Cause::UpstreamReset => Detail::ResetBeforeTermination,
                    Cause::UpstreamProtocol => Detail::ResetBeforeProtocol,
                    Cause::RouteTimeout => Detail::ResponseTimeout,
                    Cause::PerTryTimeout => Detail::PerTryTimeout,
                    Cause::PerTryIdle => Detail::PerTryIdleTimeout,
                    Cause::UpstreamIdle => Detail::StreamIdleTimeout,
                    Cause::ClientGone => Detail::DownstreamDisconnect,
                    Cause::MaxDuration => Detail::MaxDurationTimeout,
                    Cause::Downstream if *status == 400 => Detail::CodecError,
                    Cause::Downstream if body.starts_with(b"request timeout") => {
                        Detail::RequestOverallTimeout
                    }
                    Cause::Downstream => Detail::StreamIdleTimeout,
                },
                Outcome::Abort { cause, .. } => match cause {
                    Cause::ClientGone => Detail::DownstreamDisconnect,
                    Cause::UpstreamReset | Cause::UpstreamProtocol => Detail::ResetAfterProtocol,
                    Cause::RouteTimeout => Detail::ResponseTimeout,
                    Cause::PerTryTimeout => Detail::PerTryTimeout,
                    Cause::PerTryIdle => Detail::PerTryIdleTimeout,
                    Cause::UpstreamIdle => Detail::StreamIdleTimeout,
                    Cause::Downstream => Detail::CodecError,
                    Cause::MaxDuration => Detail::MaxDurationTimeout,
                },
                // How the tunnel ends says; a try given up is followed by another.
                Outcome::Switched | Outcome::Retry { .. } => Detail::ViaUpstream,
            });
            if let Some(t) = tries {
                r.retry_flag = t.flag.get();
            }
        }
        match outcome {
            Outcome::Done {
                status,
                up_reusable,
                down_keep,
                end,
            } => {
                d.done_at = Some(end);
                cs.count_response(status);
                cs.s.upstream_rq_time.record_ms_until(rq_start, end);
                if status >= 500 {
                    host.stats.rq_error.inc();
                } else {
                    host.stats.rq_success.inc();
                }
                let max = cluster.cfg.cfg.max_requests_per_connection;
                let exhausted = max > 0 && up.requests >= max;
                if exhausted {
                    cs.s.upstream_cx_max_requests.inc();
                }
                if up_reusable && !exhausted && !ctx.draining() {
                    release(ctx, cluster, &host, high, up, end);
                } else {
                    close_upstream(ctx, up);
                }
                return (status, d.next(down_keep));
            }
            Outcome::Local {
                status,
                body,
                keep,
                cause,
                informed,
            } => {
                up.guard.active_rq = true;
                close_upstream(ctx, up);
                let upstream_fault = !informed
                    && matches!(
                        cause,
                        Cause::UpstreamReset
                            | Cause::UpstreamProtocol
                            | Cause::RouteTimeout
                            | Cause::PerTryTimeout
                            | Cause::PerTryIdle
                    );
                count_failure(
                    cluster,
                    &host,
                    cause,
                    if upstream_fault { status } else { 0 },
                );
                match cause {
                    Cause::UpstreamReset | Cause::UpstreamProtocol => {
                        report_local(cluster, &host, Local::ConnectFailed)
                    }
                    Cause::RouteTimeout | Cause::PerTryTimeout | Cause::PerTryIdle => {
                        report_local(cluster, &host, Local::Timeout)
                    }
                    _ => {}
                }
                let tried = attempt_header(fwd.attempt_count_down, attempt_no(tries));
                return reply(ctx, l, d, status, body, keep, tried.as_ref()).await;
            }
            Outcome::Abort { status, cause } => {
                up.guard.active_rq = true;
                close_upstream(ctx, up);
                // The client connection ends with this request under way: closed by the
                // client, or by us after a response that cannot be finished.
                d.ended_in_request = true;
                if matches!(cause, Cause::ClientGone) {
                    d.peer_closed = true;
                    l.http.downstream_rq_rx_reset.inc();
                }
                if matches!(cause, Cause::MaxDuration | Cause::PerTryIdle) {
                    // Envoy resets the stream both ways.
                    l.http.downstream_rq_tx_reset.inc();
                    l.http.downstream_rq_rx_reset.inc();
                }
                count_failure(cluster, &host, cause, status);
                // The head's code went to the detector as it came; a reset after it is a
                // failure of its own (Envoy reports both).
                if matches!(cause, Cause::UpstreamReset | Cause::UpstreamProtocol) {
                    report_local(cluster, &host, Local::ConnectFailed);
                }
                if matches!(cause, Cause::PerTryIdle) {
                    report_local(cluster, &host, Local::Timeout);
                }
                return (status, Next::Close);
            }
            // Boxed: its state would otherwise widen every exchange's future.
            Outcome::Switched => {
                return Box::pin(switched(
                    ctx,
                    l,
                    d,
                    up,
                    cs,
                    &host,
                    idle_ms,
                    up_chunk,
                    duration_by,
                ))
                .await;
            }
            Outcome::Retry {
                status,
                per_try,
                idle,
                protocol,
                reuse,
            } => {
                // Nothing is on a connection while the next try waits.
                drop(active);
                // The try is given up with its connection (Envoy resets its stream; one whose
                // response had no body stays, unless it served its last request), and
                // counted: a response as a retried code, a timeout as a per-try timeout.
                let max = cluster.cfg.cfg.max_requests_per_connection;
                let exhausted = max > 0 && up.requests >= max;
                if reuse && exhausted {
                    cs.s.upstream_cx_max_requests.inc();
                }
                if reuse && !exhausted && !ctx.draining() {
                    release(ctx, cluster, &host, high, up, clock::now());
                } else {
                    up.guard.active_rq = true;
                    close_upstream(ctx, up);
                }
                if protocol {
                    cs.s.upstream_cx_protocol_error.inc();
                }
                host.stats.rq_error.inc();
                if per_try {
                    if idle {
                        cs.s.upstream_rq_per_try_idle_timeout.inc();
                    } else {
                        cs.s.upstream_rq_per_try_timeout.inc();
                    }
                    host.stats.rq_timeout.inc();
                }
                if status != 0 {
                    // (Its code went to the detector as the head came.)
                    cs.retry.count(status);
                } else {
                    report_local(
                        cluster,
                        &host,
                        if per_try {
                            Local::Timeout
                        } else {
                            Local::ConnectFailed
                        },
                    );
                }
                drop(rq_guard);
                let t = tries.expect("only a request with a retry policy is tried again");
                match next_try(
                    ctx,
                    l,
                    d,
                    fwd,
                    cluster,
                    hash,
                    t,
                    false,
                    keep,
                    duration_by,
                    framing,
                )
                .await
                {
                    Ok(h) => {
                        host = h;
                        out = try_head(
                            l, d, &kept, conn, framing, fwd, prefix_len, cluster, &host, chain,
                            ctx, t,
                        );
                    }
                    Err(done) => return done,
                }
            }
        }
    }
}

/// `x-envoy-attempt-count` for a local reply of the router (`include_attempt_count_in_response`,
/// `on`): the try it answers.
#[inline]
fn attempt_header(on: bool, attempt: u32) -> Option<HeaderMap> {
    on.then(|| {
        let mut h = HeaderMap::default();
        super::headers::set_attempt_count(&mut h, attempt);
        h
    })
}

/// The try under way: 1 without a retry policy.
#[inline]
fn attempt_no(tries: Option<&Tries<'_>>) -> u32 {
    tries.map_or(1, |t| t.attempt.get())
}

/// Envoy's answer when the cluster has no host to send the request to.
#[cold]
#[inline(never)]
async fn no_healthy_upstream(
    ctx: &Ctx,
    l: &ListenerRt,
    d: &mut Down,
    cluster: &ClusterRt,
    keep: bool,
    tried: Option<HeaderMap>,
) -> (u16, Next) {
    let cs = &cluster.stats;
    cs.s.upstream_cx_none_healthy.inc();
    // No host at all is below any healthy-panic threshold (Envoy counts it so); hosts that
    // are all unhealthy under a threshold of 0 are not.
    if cluster.hosts.borrow().hosts.is_empty() {
        cs.s.lb_healthy_panic.inc();
    }
    cs.count_response(503);
    reply(ctx, l, d, 503, b"no healthy upstream", keep, tried.as_ref()).await
}

/// A request's tries under its route's retry policy: Envoy's retry state. A decision to try
/// again holds one of the cluster's `max_retries` until the next decision (or the request's
/// end), as Envoy's does.
struct Tries<'a> {
    policy: &'a RetryPolicy,
    limits: &'a Priority,
    cs: &'a ClusterScope,
    /// Retries left.
    left: Cell<u32>,
    /// The try under way, from 1.
    attempt: Cell<u32>,
    backoff: RefCell<Backoff>,
    /// A retry holds the cluster's retry count.
    held: Cell<bool>,
    /// Given up: the request body passed the buffer limit (Envoy drops its retry state).
    off: Cell<bool>,
    /// The request body as it went upstream, and whether a try read it from the client (the
    /// next try then sends this copy).
    body: RefCell<Vec<u8>>,
    consumed: Cell<bool>,
    /// The most body the request may buffer for a retry.
    limit: u64,
    /// The hosts tried (`previous_hosts`).
    tried: RefCell<Vec<SocketAddr>>,
    /// Why the last decision did not retry, when a limit said no.
    flag: Cell<Option<RetryFlag>>,
    /// The route timeout's end, once the first try started it.
    route_by: Cell<Option<tokio::time::Instant>>,
    /// When the first try's upstream request started (`x-envoy-upstream-service-time`).
    first_start: std::cell::OnceCell<Instant>,
}

impl<'a> Tries<'a> {
    fn new(
        policy: &'a RetryPolicy,
        limits: &'a Priority,
        cs: &'a ClusterScope,
        limit: u64,
    ) -> Tries<'a> {
        Tries {
            policy,
            limits,
            cs,
            left: Cell::new(policy.num_retries),
            attempt: Cell::new(1),
            backoff: RefCell::new(policy.backoff()),
            held: Cell::new(false),
            off: Cell::new(false),
            body: RefCell::new(Vec::new()),
            consumed: Cell::new(false),
            limit,
            tried: RefCell::new(Vec::new()),
            flag: Cell::new(None),
            route_by: Cell::new(None),
            first_start: std::cell::OnceCell::new(),
        }
    }

    /// Envoy's `shouldRetry`: whether the try that just ended (`would`: its end is one the
    /// policy retries) is tried again, counted.
    fn decide(&self, would: bool) -> bool {
        if self.off.get() {
            return false;
        }
        let s = &self.cs.s;
        // The retry before this try ends here; a try that needs none was its success.
        if self.give_back() && !would {
            s.upstream_rq_retry_success.inc();
        }
        if !would {
            return false;
        }
        if self.left.get() == 0 {
            s.upstream_rq_retry_limit_exceeded.inc();
            self.flag.set(Some(RetryFlag::LimitExceeded));
            return false;
        }
        self.left.set(self.left.get() - 1);
        if !self.limits.retries.has_room() {
            s.upstream_rq_retry_overflow.inc();
            self.flag.set(Some(RetryFlag::Overflow));
            return false;
        }
        // (`upstream_rq_retry` is counted as the retry goes out, after the back-off.)
        self.limits.retries.take();
        self.held.set(true);
        true
    }

    /// Keeps body bytes that went upstream for the next try; `read`: the body read so far.
    /// Past the buffer limit the retry state is given up, as Envoy gives it up.
    fn keep(&self, bytes: &[u8], read: u64) {
        if self.off.get() {
            return;
        }
        if read > self.limit {
            self.off.set(true);
            self.cs.s.retry_or_shadow_abandoned.inc();
            self.give_back();
            *self.body.borrow_mut() = Vec::new();
            return;
        }
        self.body.borrow_mut().extend_from_slice(bytes);
    }
}

impl Tries<'_> {
    /// Gives back the cluster's retry count a retry held; whether one was held.
    fn give_back(&self) -> bool {
        let held = self.held.replace(false);
        if held {
            self.limits.retries.give();
        }
        held
    }
}

impl Drop for Tries<'_> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// The request's place in its tries, for the upstream head's router headers.
#[derive(Clone, Copy)]
struct Try {
    /// `x-envoy-attempt-count`.
    attempt: u32,
    /// What is left of the route timeout (ms), once a try before this one used some.
    left_ms: Option<u64>,
}

impl Try {
    const FIRST: Try = Try {
        attempt: 1,
        left_ms: None,
    };
}

/// Waits out the back-off before the next try and picks its host; `Err` holds the request's
/// end (its route timeout passed meanwhile, its client left, or no host is left). The
/// request body is still the client's only when no try read it (`unread`).
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
async fn next_try(
    ctx: &Rc<Ctx>,
    l: &Rc<ListenerRt>,
    d: &mut Down,
    fwd: &Forward,
    cluster: &Rc<ClusterRt>,
    hash: Option<u64>,
    t: &Tries<'_>,
    unread: bool,
    keep: bool,
    duration_by: Option<tokio::time::Instant>,
    framing: Framing,
) -> Result<Rc<HostRt>, (u16, Next)> {
    let cs = &cluster.stats;
    let wait = Duration::from_millis(t.backoff.borrow_mut().next_ms());
    let route_by = t.route_by.get().or_else(|| {
        (fwd.timeout_ms > 0 && !unread).then(|| {
            tokio::time::Instant::from_std(d.started) + Duration::from_millis(fwd.timeout_ms)
        })
    });
    t.route_by.set(route_by);
    {
        let (dr, _) = d.stream.split();
        let rx = l.http.down_rx(&d.held);
        let ahead = READ_CHUNK.min(l.c.cfg.per_connection_buffer_limit_bytes.max(1) as usize);
        let timed_out = tokio::select! {
            biased;
            () = tokio::time::sleep(wait) => false,
            // Nothing is upstream meanwhile: Envoy counts no cancelled request.
            _ = watch_client(&dr, &mut d.rbuf, &rx, ahead) => {
                l.http.downstream_rq_rx_reset.inc();
                d.peer_closed = true;
                d.ended_in_request = true;
                d.log_detail(Detail::DownstreamDisconnect);
                return Err((0, Next::Close));
            }
            () = d.timer.until(earliest([route_by, duration_by])) => true,
        };
        if timed_out && duration_by.is_some_and(|dl| tokio::time::Instant::now() >= dl) {
            let tried = attempt_header(fwd.attempt_count_down, t.attempt.get());
            // A body still unread may have come whole meanwhile (Envoy answers 504 then).
            let whole = !unread || take_whole_body(d, framing);
            return Err(duration_over(ctx, l, d, keep && whole, whole, tried).await);
        }
        if timed_out {
            // The route timeout covers every try and the waits between them; with no try
            // upstream, Envoy counts none on the cluster.
            d.log_detail(Detail::ResponseTimeout);
            let keep = keep && !unread && !ctx.draining();
            let tried = attempt_header(fwd.attempt_count_down, t.attempt.get());
            return Err(reply(
                ctx,
                l,
                d,
                504,
                b"upstream request timeout",
                keep,
                tried.as_ref(),
            )
            .await);
        }
    }
    // The retry goes out now (Envoy counts it so: not for a request that ended while waiting).
    cs.s.upstream_rq_retry.inc();
    cs.s.upstream_rq_retry_backoff_exponential.inc();
    t.attempt.set(t.attempt.get() + 1);
    // `previous_hosts`: pick again while the pick is a host tried before (a hashing
    // balancer from the same hash, one point on: Envoy's walk of its ring or table).
    let hashed = cluster
        .cfg
        .policy
        .hashes()
        .then(|| hash.unwrap_or_else(|| fastrand::u64(..)));
    let pick = |attempt: u32| match hashed {
        Some(h) => cluster.pick_hashed_try(h, attempt),
        None => cluster.pick(),
    };
    let again = if t.policy.previous_hosts {
        t.policy.host_selection_retries
    } else {
        0
    };
    let mut host = pick(0);
    for attempt in 1..=again {
        match &host {
            Some(h) if t.tried.borrow().contains(&h.addr) => host = pick(attempt),
            _ => break,
        }
    }
    let Some(host) = host else {
        d.log_detail(Detail::NoHealthyUpstream);
        let keep = keep && !unread;
        let tried = attempt_header(fwd.attempt_count_down, t.attempt.get());
        return Err(no_healthy_upstream(ctx, l, d, cluster, keep, tried).await);
    };
    if let Some(r) = d.log() {
        r.host = Some(host.addr);
        r.attempts = t.attempt.get();
    }
    Ok(host)
}

/// The head of a try after the first: the request as the connection manager left it, with
/// this try's router headers, host and edits, then the body a try before read, if any.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn try_head(
    l: &ListenerRt,
    d: &Down,
    kept: &Option<RequestHead>,
    conn: ConnectionTokens,
    framing: Framing,
    fwd: &Forward,
    prefix_len: usize,
    cluster: &ClusterRt,
    host: &HostRt,
    chain: &[&Mutations; 4],
    ctx: &Ctx,
    t: &Tries<'_>,
) -> Vec<u8> {
    let head = kept
        .clone()
        .expect("a request with a retry policy keeps its head");
    let left_ms = t.route_by.get().map(|by| {
        by.saturating_duration_since(tokio::time::Instant::now())
            .as_millis()
            .max(1) as u64
    });
    let stream = &d.stream;
    let local = || stream.local_addr().ok();
    let (mut out, _, _) = upstream_head(
        l,
        head,
        false,
        d.peer,
        &local,
        conn,
        framing,
        fwd,
        prefix_len,
        cluster,
        host,
        chain,
        ctx.take_write_buf(),
        Try {
            attempt: t.attempt.get(),
            left_ms,
        },
    );
    if t.consumed.get() {
        out.extend_from_slice(&t.body.borrow());
    }
    t.tried.borrow_mut().push(host.addr);
    out
}

/// The upgrade the upstream took: counts its 101 (both sides, as it went, as Envoy's are
/// there while the tunnel is), runs the tunnel and counts how it ended (envoy-behaviour.md
/// section 19). The request's time is the tunnel's.
#[allow(clippy::too_many_arguments)]
async fn switched(
    ctx: &Ctx,
    l: &ListenerRt,
    d: &mut Down,
    mut up: UpConn,
    cs: &ClusterScope,
    host: &HostRt,
    idle_ms: u64,
    up_chunk: usize,
    duration_by: Option<tokio::time::Instant>,
) -> (u16, Next) {
    cs.count_response(101);
    host.stats.rq_success.inc();
    l.count_completed(101);
    let upgraded = GaugeHold::new(&l.http.downstream_cx_upgrades_active);
    let moved = (Cell::new(0), Cell::new(0));
    let end = tunnel(
        ctx,
        l,
        cs,
        d,
        &mut up,
        idle_ms,
        up_chunk,
        duration_by,
        &moved,
    )
    .await;
    drop(upgraded);
    if let Some(r) = d.log() {
        r.status = 101;
        r.bytes_received = moved.0.get();
        r.bytes_sent = moved.1.get();
        r.detail = match end {
            TunnelEnd::Client => Some(Detail::DownstreamDisconnect),
            TunnelEnd::Upstream => Some(Detail::ResetAfterTermination),
            TunnelEnd::Idle => Some(Detail::StreamIdleTimeout),
            TunnelEnd::Duration => Some(Detail::MaxDurationTimeout),
            TunnelEnd::Removed => r.detail,
        };
    }
    l.http.downstream_rq_time.record_ms(d.started);
    // The upstream connection goes with its request under way, whichever side ended.
    up.guard.active_rq = true;
    up.guard.remote = end == TunnelEnd::Upstream;
    close_upstream(ctx, up);
    l.http.downstream_rq_rx_reset.inc();
    if end == TunnelEnd::Client {
        // Envoy: the client's close resets its request under way.
        d.peer_closed = true;
        d.ended_in_request = true;
        return (0, Next::Close);
    }
    // Envoy resets the stream towards the client, then closes its connection (flushed, with
    // the usual delayed close), with no request left on it (a removed listener's too).
    if end == TunnelEnd::Idle {
        l.http.downstream_rq_idle_timeout.inc();
    }
    if end == TunnelEnd::Duration {
        l.http.downstream_rq_max_duration_reached.inc();
    }
    l.http.downstream_rq_tx_reset.inc();
    let _ = socket2::SockRef::from(&d.stream).shutdown(std::net::Shutdown::Write);
    (0, d.next(false))
}

/// Moves bytes both ways between the client and the upstream once an upgrade is accepted,
/// until either side closes or nothing moves for `idle_ms` (0: no limit): Envoy's
/// `stream_idle_timeout` (or the route's `idle_timeout`) holds in a tunnel, the route timeout
/// does not. Each direction writes what it read before it reads again, so a side that stops
/// reading holds the other back (no more than one read piece is buffered each way). What the
/// client sent after its request head, while the upgrade was being answered, goes first.
#[allow(clippy::too_many_arguments)]
async fn tunnel(
    ctx: &Ctx,
    l: &ListenerRt,
    cs: &ClusterScope,
    d: &mut Down,
    up: &mut UpConn,
    idle_ms: u64,
    up_chunk: usize,
    duration_by: Option<tokio::time::Instant>,
    moved: &(Cell<u64>, Cell<u64>),
) -> TunnelEnd {
    let down_chunk = BODY_CHUNK.min(l.c.cfg.per_connection_buffer_limit_bytes.max(1) as usize);
    let Down {
        stream,
        rbuf: drbuf,
        timer,
        held,
        drain_key,
        ..
    } = d;
    let (mut dr, mut dw) = stream.split();
    let (mut ur, mut uw) = up.stream.split();
    let urbuf = &mut up.rbuf;
    let (down_rx, down_tx) = (&l.http.down_rx(held), &l.http.down_tx(held));
    let (up_rx, up_tx) = (&cs.s.up_rx(&up.guard.held), &cs.s.up_tx(&up.guard.held));
    let activity = Cell::new(clock::tnow());
    let touch = || activity.set(clock::tnow());
    // While a side is slow to take what the other sent, that other is not read (no more is
    // buffered), but a reset of its connection still ends the tunnel.
    let upward = async {
        match relay(
            &mut dr, &mut uw, drbuf, down_chunk, down_rx, up_tx, &touch, &moved.0,
        )
        .await
        {
            RelayEnd::Source => TunnelEnd::Client,
            RelayEnd::Sink => TunnelEnd::Upstream,
        }
    };
    // What came with the 101 goes first.
    let downward = async {
        match relay(
            &mut ur, &mut dw, urbuf, up_chunk, up_rx, down_tx, &touch, &moved.1,
        )
        .await
        {
            RelayEnd::Source => TunnelEnd::Upstream,
            RelayEnd::Sink => TunnelEnd::Client,
        }
    };
    let idle = (idle_ms > 0).then(|| Duration::from_millis(idle_ms));
    // The deadline moves with every read and write: each poll asks for the current one (a
    // going-off for an earlier one is absorbed by `poll_until`).
    // The stream's max_stream_duration holds in a tunnel too.
    let idle_wait = std::future::poll_fn(|cx| {
        timer.poll_until(
            cx,
            earliest([idle.map(|i| activity.get() + i), duration_by]),
        )
    });
    // A listener a snapshot removed closes its tunnels once its drain time is over, as its
    // idle connections (Envoy destroys the listener's connections then).
    let removed = std::future::poll_fn(|cx| {
        ctx.watch_drain(drain_key, cx.waker());
        if l.removal.closed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    tokio::select! {
        biased;
        end = upward => end,
        end = downward => end,
        () = idle_wait => {
            if duration_by.is_some_and(|dl| tokio::time::Instant::now() >= dl) {
                TunnelEnd::Duration
            } else {
                TunnelEnd::Idle
            }
        }
        () = removed => TunnelEnd::Removed,
    }
}

/// Which side of a one-way relay ended it.
enum RelayEnd {
    /// The side read from closed, or was reset.
    Source,
    /// The side written to failed.
    Sink,
}

/// One direction of a tunnel: what `buf` already holds, then what each read of `from` brings
/// (at most `chunk`), each written to `to` before the next read, until either side ends. While
/// a write waits, `from` is watched for a reset ([`reset`]). `moved` counts what went.
#[allow(clippy::too_many_arguments)]
async fn relay(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    buf: &mut BytesMut,
    chunk: usize,
    rx: &Flow<'_>,
    tx: &Flow<'_>,
    touch: &dyn Fn(),
    moved: &Cell<u64>,
) -> RelayEnd {
    loop {
        if !buf.is_empty() {
            match first_of(write_all(to, buf, tx), reset(from.as_ref())).await {
                Either::Left(Ok(())) => moved.set(moved.get() + buf.len() as u64),
                Either::Left(Err(_)) => return RelayEnd::Sink,
                Either::Right(()) => return RelayEnd::Source,
            }
            buf.clear();
            rx.hold(0);
            touch();
        }
        match read_more(from, buf, chunk).await {
            Ok(n) => {
                rx.read(n, buf.len());
                touch();
            }
            Err(_) => return RelayEnd::Source,
        }
    }
}

/// Waits until the connection is reset (an error reported on it): what a side of a tunnel
/// watches while it is not read.
async fn reset(s: &TcpStream) {
    let _ = s.ready(tokio::io::Interest::ERROR).await;
}

/// Which of two futures finished first.
enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Polls `a` then `b` until one finishes.
async fn first_of<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        b.as_mut().poll(cx).map(Either::Right)
    })
    .await
}

/// Sets a response's `x-request-id` (`always_set_request_id_in_response`).
#[cold]
#[inline(never)]
fn set_request_id(h: &mut HeaderMap, id: &[u8]) {
    h.set(b"x-request-id", id);
}

/// Records where the request goes for its access log: the route and cluster, the host picked
/// (if any), and the request as it went upstream (`saved`; returned when the response edits
/// read it too, `edits_read`, else kept by the log alone).
#[cold]
#[inline(never)]
fn log_upstream(
    d: &mut Down,
    fwd: &Forward,
    cluster: &Rc<ClusterRt>,
    host: Option<&HostRt>,
    saved: Option<LoggedRequest>,
    edits_read: bool,
) -> Option<Box<LoggedRequest>> {
    let read_whole = !d.body_unread;
    let Some(r) = d.log() else {
        return saved.map(Box::new);
    };
    r.route = fwd.route_name.clone();
    r.cluster = Some(cluster.clone());
    r.attempts = 1;
    r.host = host.map(|h| h.addr);
    match saved {
        Some(q) if edits_read => {
            r.set_request(q.clone(), read_whole);
            Some(Box::new(q))
        }
        Some(q) => {
            r.set_request(q, read_whole);
            None
        }
        None => None,
    }
}

/// Returns a connection to its pool after a request (the oldest request waiting for one
/// takes it), or closes it when it cannot be reused. Inlined: it is on every request's path.
#[inline(always)]
fn release(ctx: &Ctx, cluster: &ClusterRt, host: &HostRt, high: bool, up: UpConn, end: Instant) {
    let pool = host.pool(high);
    match pool.checkin(up, end) {
        Ok(buf) => ctx.put_read_buf(buf),
        Err(up) => close_upstream(ctx, up),
    }
    if pool.has_waiters() {
        still_waiting(cluster, pool, high);
    }
}

/// Requests still wait for a connection after one was given back: as Envoy's pool does on
/// every release, one of them may make a connection if the cluster has room for one again;
/// otherwise the connection the limit holds back is counted (`upstream_cx_overflow`).
#[cold]
#[inline(never)]
fn still_waiting(cluster: &ClusterRt, pool: &Pool, high: bool) {
    if !pool.anyone_waiting() {
        return;
    }
    if cluster.cfg.breakers.of(high).cx.has_room() {
        pool.waiters().retry_one();
    } else {
        cluster.stats.s.upstream_cx_overflow.inc();
    }
}

/// Envoy's answer to a request a circuit breaker refused (`max_pending_requests` before it
/// waits, `max_requests` when it would go on a connection, `host` then): a 503 saying so,
/// with `x-envoy-overloaded` unless the router suppresses its headers.
#[cold]
#[inline(never)]
async fn overflow(
    ctx: &Ctx,
    l: &ListenerRt,
    d: &mut Down,
    cs: &ClusterScope,
    host: Option<SocketAddr>,
    keep: bool,
    tried: Option<HeaderMap>,
) -> (u16, Next) {
    cs.count_response(503);
    if let Some(r) = d.log() {
        r.host = host;
        r.detail = Some(Detail::Overflow);
    }
    let mut h = HeaderMap::default();
    if !l.c.cfg.hcm.suppress_envoy_headers {
        h.append(b"x-envoy-overloaded", b"true");
    }
    if let Some(t) = tried {
        for (k, v) in t.iter() {
            h.append(k, v);
        }
    }
    reply(
        ctx,
        l,
        d,
        503,
        b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
        keep,
        Some(&h),
    )
    .await
}

/// The route timeout passed while the request waited for a connection: Envoy's 504, the
/// request counted as timed out and cancelled (it never went upstream).
#[cold]
#[inline(never)]
async fn pending_timeout(
    ctx: &Ctx,
    l: &ListenerRt,
    d: &mut Down,
    cs: &ClusterScope,
    keep: bool,
    tried: Option<HeaderMap>,
) -> (u16, Next) {
    cs.s.upstream_rq_timeout.inc();
    cs.s.upstream_rq_cancelled.inc();
    cs.count_response(504);
    d.log_detail(Detail::ResponseTimeout);
    reply(
        ctx,
        l,
        d,
        504,
        b"upstream request timeout",
        keep,
        tried.as_ref(),
    )
    .await
}

/// Closes an upstream connection that is not pooled again; its read buffer goes back to the
/// worker's pool (what it still holds is dropped with the connection).
fn close_upstream(ctx: &Ctx, up: UpConn) {
    ctx.put_read_buf(up.rbuf);
}

/// How an exchange ends when `max_stream_duration` or the per-try idle timeout passed (kept
/// out of the exchange's own code, which every request runs): before the response, a 504 (for
/// the duration, a 408 with the connection closed while the request is not whole) or, for a
/// per-try idle timeout the policy takes (`retry`), another try; after, a reset.
#[cold]
#[inline(never)]
fn timer_stop(stop: Stop, sent: u16, read_whole: bool, keep_ok: bool, retry: bool) -> Outcome {
    let idle = matches!(stop, Stop::PerTryIdle);
    let cause = if idle {
        Cause::PerTryIdle
    } else {
        Cause::MaxDuration
    };
    if sent != 0 {
        return Outcome::Abort {
            status: sent,
            cause,
        };
    }
    if retry {
        // Envoy takes it as it takes the per-try timeout.
        return Outcome::Retry {
            status: 0,
            per_try: true,
            idle: true,
            protocol: false,
            reuse: false,
        };
    }
    let (status, body, keep): (u16, &'static [u8], bool) = match (idle, read_whole) {
        (true, _) => (504, b"upstream request timeout", keep_ok),
        (false, true) => (504, DURATION_BODY, keep_ok),
        (false, false) => (408, DURATION_BODY, false),
    };
    Outcome::Local {
        status,
        body,
        keep,
        cause,
        informed: false,
    }
}

/// The local reply's body when `max_stream_duration` passes.
const DURATION_BODY: &[u8] = b"downstream duration timeout";

/// Answers a request whose `max_stream_duration` passed before its response began (while it
/// waited for a connection or for its next try): 504, or 408 with the connection closed when
/// the request was not yet whole, as Envoy's connection manager answers.
#[cold]
#[inline(never)]
async fn duration_over(
    ctx: &Ctx,
    l: &ListenerRt,
    d: &mut Down,
    keep: bool,
    whole: bool,
    tried: Option<HeaderMap>,
) -> (u16, Next) {
    l.http.downstream_rq_max_duration_reached.inc();
    d.log_detail(Detail::MaxDurationTimeout);
    if whole {
        d.body_unread = false;
    }
    let (status, keep) = if whole { (504, keep) } else { (408, false) };
    reply(ctx, l, d, status, DURATION_BODY, keep, tried.as_ref()).await
}

/// Tells the cluster's outlier detector, if it has one, of a try that got no response.
#[cold]
fn report_local(cluster: &ClusterRt, host: &HostRt, what: Local) {
    if let (Some(m), Some(o)) = (&host.outlier, &cluster.cfg.outlier) {
        m.put_local(what, o, host.addr);
    }
}

/// Counts an exchange that did not complete: the cause, and `upstream_code` as the upstream's
/// response code when there is one to charge (a head it sent, or Envoy's 502/503/504 for its
/// fault); failures caused downstream charge no code, only a reset we sent upstream.
fn count_failure(cluster: &ClusterRt, host: &HostRt, cause: Cause, upstream_code: u16) {
    let cs = &cluster.stats;
    host.stats.rq_error.inc();
    match cause {
        // An HTTP/1 upstream that closes mid-exchange resets no stream: Envoy counts no
        // upstream_rq_rx_reset for it (that is HTTP/2's RST_STREAM).
        Cause::UpstreamReset => {}
        Cause::UpstreamProtocol => cs.s.upstream_cx_protocol_error.inc(),
        Cause::RouteTimeout => {
            cs.s.upstream_rq_timeout.inc();
            host.stats.rq_timeout.inc();
        }
        Cause::PerTryTimeout => {
            cs.s.upstream_rq_per_try_timeout.inc();
            host.stats.rq_timeout.inc();
        }
        Cause::PerTryIdle => {
            cs.s.upstream_rq_per_try_idle_timeout.inc();
            host.stats.rq_timeout.inc();
        }
        // The connection manager ends these streams (the client went away, or stalled, or
        // sent a bad body; the stream idle timeout; its duration timer): Envoy's router
        // closes the upstream connection and counts no upstream reset, not even
        // `upstream_rq_tx_reset` (checked with the envoy binary, tests/support/stats_diff.py).
        Cause::ClientGone | Cause::MaxDuration | Cause::UpstreamIdle | Cause::Downstream => {}
    }
    if upstream_code != 0 {
        cs.count_response(upstream_code);
    }
}

/// Builds the upstream request head: the router's own header, the configured edits, then the host
/// and path rewrites with their `x-envoy-original-*` records, `host` written first. Inlined
/// into the request path (its head and record move in and out by value).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn upstream_head(
    l: &ListenerRt,
    mut head: RequestHead,
    save: bool,
    peer: SocketAddr,
    local: &dyn Fn() -> Option<SocketAddr>,
    conn: ConnectionTokens,
    framing: Framing,
    fwd: &Forward,
    prefix_len: usize,
    cluster: &ClusterRt,
    host: &HostRt,
    chain: &[&Mutations; 4],
    mut out: Vec<u8>,
    tr: Try,
) -> (Vec<u8>, bool, Option<LoggedRequest>) {
    router_request_headers(l, &mut head.headers, fwd, tr.attempt, tr.left_ms);
    // The request edits' commands read the headers they edit; the request line is copied
    // only for a value that reads it.
    let line = chain
        .iter()
        .any(|m| m.request_reads_request)
        .then(|| (head.method().to_vec(), head.target().to_vec()));
    let local_fn = local;
    let cx = Cx {
        peer,
        local: local_fn,
        minor: head.minor,
        request: line.as_ref().map(|(method, target)| ReqView {
            method,
            target,
            headers: None,
            https: head.absolute_https() == Some(true),
        }),
        status: 0,
        upstream: None,
        response: false,
    };
    for m in chain {
        m.apply_request(&mut head.headers, &cx);
    }
    let keep_original = !l.c.cfg.hcm.suppress_envoy_headers;
    let new_host = match &fwd.host_rewrite {
        Some(h) => Some(h.clone()),
        // The picked host's name: its endpoint's, for a STRICT_DNS host (a STATIC host has none).
        None if fwd.auto_host_rewrite && cluster.cfg.discovery == Discovery::StrictDns => cluster
            .cfg
            .cfg
            .endpoints
            .get(host.endpoint as usize)
            .map(|e| e.address.clone().into_bytes()),
        None => None,
    };
    if let Some(nh) = new_host {
        let orig = head.headers.get(b"host").map(<[u8]>::to_vec);
        head.headers.set(b"host", &nh);
        if let (true, Some(o)) = (keep_original, orig) {
            head.headers.append(b"x-envoy-original-host", &o);
        }
    }
    let new_target = rewrite_target(fwd, prefix_len, head.target());
    if new_target.is_some() && keep_original {
        let orig = head.target().to_vec();
        head.headers.append(b"x-envoy-original-path", &orig);
    }
    out.reserve(head.wire_len + 256);
    out.extend_from_slice(head.method());
    out.push(b' ');
    out.extend_from_slice(new_target.as_deref().unwrap_or(head.target()));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    head.headers.write_host_first(&mut out);
    // The body's framing is ours to write. A `content-length` that a `connection` header named
    // or a header edit removed is gone from the head, but the body still comes: it goes
    // chunked, as Envoy sends it, never unframed (the upstream would read it as a request).
    // Only a nomination or an edit can have removed it: look only then.
    let length_gone = || {
        (conn.nominates()
            || chain
                .iter()
                .any(|m| m.removes_from_request(b"content-length")))
            && !head.headers.contains(b"content-length")
    };
    let chunk_up = match framing {
        Framing::Chunked => true,
        Framing::Length(n) => n > 0 && length_gone(),
        _ => false,
    };
    if chunk_up {
        write_framing(&mut out, Framing::Chunked);
    } else if !method_has_no_body(head.method())
        && match framing {
            Framing::Empty => true,
            Framing::Length(0) => length_gone(),
            _ => false,
        }
    {
        // Envoy's codec gives a bodiless POST/PUT/... an explicit `content-length: 0`.
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // The head has been written: it moves rather than copies (into the access log's record,
    // or boxed for the response edits).
    let saved = save.then(|| LoggedRequest {
        head,
        rewritten: new_target,
        routed: true,
    });
    (out, chunk_up, saved)
}

/// Makes a new connection to `host`. It owns what it needs, so that a connection whose
/// request went away can be left to finish on its own ([`finish_connect`]).
async fn connect(
    cluster: Rc<ClusterRt>,
    host: Rc<HostRt>,
    high: bool,
) -> Result<UpConn, ConnectFail> {
    let cs = &cluster.stats;
    // Envoy counts the attempt in upstream_cx_total, failed or not, and the connection as
    // active (`upstream_cx_active`) from the attempt on; one that never came up is destroyed
    // all the same (the guard's drop), remote when refused, local when it timed out.
    cs.s.upstream_cx_total.inc();
    cs.s.upstream_cx_http1_total.inc();
    host.stats.cx_total.inc();
    // A cluster that has made a connection for a request checks at its usual interval.
    if let Some(h) = &cluster.cfg.health {
        h.note_traffic();
    }
    let mut guard = CxGuard::new(
        cs.clone(),
        host.stats.clone(),
        Some((cluster.cfg.breakers.clone(), host.pool(high).waiters())),
        high,
    );
    let t0 = Instant::now();
    // A drain of the pool while it connects (an ejection) leaves it for one request.
    let epoch = host.pool(high).epoch();
    match timeout(cluster.cfg.connect_timeout, TcpStream::connect(host.addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            cs.s.upstream_cx_connect_ms.record_ms(t0);
            Ok(UpConn {
                stream,
                rbuf: BytesMut::new(),
                requests: 0,
                idle_since: Instant::now(),
                epoch,
                guard,
            })
        }
        Ok(Err(_)) => {
            cs.s.upstream_cx_connect_fail.inc();
            host.stats.cx_connect_fail.inc();
            guard.remote = true;
            guard.wakes = false;
            Err(ConnectFail::Refused)
        }
        Err(_) => {
            cs.s.upstream_cx_connect_fail.inc();
            cs.s.upstream_cx_connect_timeout.inc();
            host.stats.cx_connect_fail.inc();
            guard.wakes = false;
            Err(ConnectFail::Timeout)
        }
    }
}

/// A request body read ahead whole while the request waited (for a connection, or for its
/// next try) is complete, as Envoy has it by then: it is dropped from the client's buffer and
/// logged as received, so a local reply answers a whole request and the connection can stay.
/// Whether it was whole.
fn take_whole_body(d: &mut Down, framing: Framing) -> bool {
    let Some(n) = take_buffered_body(&mut d.rbuf, framing) else {
        return false;
    };
    d.body_unread = false;
    if let Some(r) = d.log() {
        r.bytes_received = n;
        r.request_done = Some(clock::now());
    }
    true
}

/// Drops a request body from the front of `buf` when the whole of it is there, giving its
/// length; otherwise `buf` is left as it was (a malformed chunked body counts as not whole).
fn take_buffered_body(buf: &mut BytesMut, framing: Framing) -> Option<u64> {
    let mut rest = buf.clone();
    let mut body = Decoder::new(framing);
    let mut len = 0;
    loop {
        match body.decode(&mut rest, usize::MAX) {
            Ok(Decoded::Data(n)) => {
                rest.advance(n);
                len += n as u64;
            }
            Ok(Decoded::End) => {
                *buf = rest;
                return Some(len);
            }
            Ok(Decoded::NeedMore) | Err(_) => return None,
        }
    }
}

/// Lets a connection being made for a request that went away come up and wait in the pool
/// for the next request, as Envoy's pool keeps a connection whose pending request was
/// cancelled (or fail and be counted as any failed connect). A worker draining by then closes
/// it instead, as it does every connection a request leaves.
fn finish_connect<F: Future<Output = Result<UpConn, ConnectFail>> + 'static>(
    ctx: Rc<Ctx>,
    host: Rc<HostRt>,
    high: bool,
    attempt: std::pin::Pin<Box<F>>,
) {
    host.pool(high).orphan_started();
    tokio::task::spawn_local(async move {
        let pool = host.pool(high);
        // A request that came meanwhile takes it; else it waits in the pool.
        if let Some(c) = pool.orphan_done(attempt.await) {
            if !ctx.draining() {
                // A fresh connection has no read buffer: the pool takes it.
                let _ = pool.checkin(c, clock::now());
            }
        }
    });
}

/// Waits for the client to close the connection ([`ReqErr::Downstream`]) while its request
/// waits on the upstream: on a connection being made, or once the request is in.
/// It waits on readiness alone (no read buffer is readied for a read that does not come).
/// Bytes that come meanwhile (the body, a pipelined request) are read and kept for the
/// exchange or after it, until `buf` holds `cap`; the watch then stops, as Envoy stops reading
/// at its buffer limit. (Readiness is never cleared by hand: the next read of the connection
/// must find what the kernel holds.)
async fn watch_client(r: &ReadHalf<'_>, buf: &mut BytesMut, rx: &Flow<'_>, cap: usize) -> ReqErr {
    let s: &TcpStream = r.as_ref();
    while buf.len() < cap {
        if std::future::poll_fn(|cx| s.poll_read_ready(cx))
            .await
            .is_err()
        {
            return ReqErr::Downstream;
        }
        let room = cap - buf.len();
        buf.reserve(room);
        match s.try_read_buf(&mut (&mut *buf).limit(room)) {
            Ok(0) => return ReqErr::Downstream,
            Ok(n) => rx.read(n, buf.len()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return ReqErr::Downstream,
        }
    }
    // Full: the client is not read further, but a reset of its connection is still seen.
    reset(s).await;
    ReqErr::Downstream
}

/// Why the exchange loop stopped before the response finished.
enum Stop {
    DownstreamGone,
    BadRequestBody,
    StreamIdle,
    RouteTimeout,
    PerTryTimeout,
    RequestTimeout,
    MaxDuration,
    PerTryIdle,
}

enum ReqErr {
    /// The client closed or reset.
    Downstream,
    /// The client's chunked body is malformed.
    BadBody,
    /// The upstream stopped reading.
    Upstream,
}

enum RespErr {
    /// The upstream closed or reset before a complete response head.
    BeforeHeaders,
    /// The upstream sent an invalid response head, framing or an unsolicited 101.
    Protocol,
    /// The stream broke after the response started.
    AfterHeaders,
    /// The client went away while we wrote the response.
    Downstream,
    /// The retry policy tries again instead (the response, `status`, was not sent; `reuse`:
    /// it had no body and its connection may serve again).
    Retry { status: u16, reuse: bool },
}

/// What [`pump`] left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pumped {
    /// The body is complete.
    Done,
    /// `out` is full; body bytes may remain in the read buffer: write, then pump again.
    Full,
    /// The read buffer holds no more body bytes: write, then read.
    NeedMore,
}

/// Moves body bytes from `rbuf` through `dec` into `out` (chunk-encoded if `chunked`), until
/// the body ends, `out` holds `max` bytes, or `rbuf` runs dry; `moved` counts the body bytes.
fn pump(
    dec: &mut Decoder,
    rbuf: &mut BytesMut,
    out: &mut Vec<u8>,
    chunked: bool,
    max: usize,
    moved: &Cell<u64>,
) -> Result<Pumped, ()> {
    loop {
        match dec.decode(rbuf, max).map_err(|_| ())? {
            Decoded::Data(n) => {
                moved.set(moved.get() + n as u64);
                if chunked {
                    encode_chunk(out, &rbuf[..n]);
                } else {
                    out.extend_from_slice(&rbuf[..n]);
                }
                rbuf.advance(n);
                if out.len() >= max {
                    return Ok(Pumped::Full);
                }
            }
            Decoded::NeedMore => return Ok(Pumped::NeedMore),
            Decoded::End => {
                if chunked {
                    out.extend_from_slice(LAST_CHUNK);
                }
                return Ok(Pumped::Done);
            }
        }
    }
}

/// The per-request settings of one exchange.
struct Exchange<'a> {
    ctx: &'a Ctx,
    l: &'a ListenerRt,
    /// The cluster's stats (the upstream connection's byte counts).
    cs: &'a ClusterScope,
    framing: Framing,
    is_head: bool,
    keep: bool,
    /// The request asks for an upgrade its route takes: it never completes (what follows its
    /// head and body is the tunnel's, held until the upstream answers), and a `101` switches.
    upgrade: bool,
    timeout_ms: u64,
    /// The route timeout's end when it began while the request waited for a connection
    /// (Envoy's runs from the request's end, the wait included).
    route_by: Option<tokio::time::Instant>,
    /// The stream idle timeout in ms (the route's, else the connection manager's; 0: none).
    idle_ms: u64,
    chain: &'a [&'a Mutations; 4],
    rq_start: Instant,
    up_chunk: usize,
    /// The cluster's `max_headers_count` for the response.
    max_headers: usize,
    /// Relay the upstream's informational response (`proxy_100_continue`; without it the
    /// connection answered a client's `Expect` itself and removed it).
    relay_1xx: bool,
    /// The request body goes upstream chunked (it came chunked, or its length was removed).
    chunk_up: bool,
    /// The request's HTTP minor version, for `%PROTOCOL%`.
    minor: u8,
    /// The upstream host's address, for `%UPSTREAM_HOST%`.
    upstream: SocketAddr,
    /// The request, for response edits that read it, and then its access log.
    saved: Option<&'a LoggedRequest>,
    /// The client connection's local address, when response edits have commands.
    local: Option<SocketAddr>,
    /// A `set-cookie` for the response: the cookie a `hash_policy` made up.
    set_cookie: Option<&'a [u8]>,
    /// The cluster's active health check: a response that says
    /// `x-envoy-immediate-health-check-fail` fails its host at once (Envoy's passive check).
    health: Option<&'a crate::upstream::health::HealthState>,
    /// The host's outlier detection counts and its cluster's detector, if it has one: told of
    /// the response's code when the head comes (as Envoy's router tells it).
    outlier: Option<(
        &'a crate::upstream::outlier::HostMonitor,
        &'a crate::upstream::outlier::OutlierState,
    )>,
    /// The end of the stream's `max_stream_duration`, if it has one.
    duration_by: Option<tokio::time::Instant>,
    /// The retry policy's state, if the route has one.
    tries: Option<&'a Tries<'a>>,
    /// This try sends the body a try before read (in `head_out`): nothing is read from the
    /// client.
    replay: bool,
    /// The retry policy's `per_try_timeout` in ms (0: none): it ends a try whose response head
    /// has not come by then.
    per_try_ms: u64,
    /// The retry policy's `per_try_idle_timeout` in ms (0: none): it ends a try whose
    /// upstream sends nothing for that long once the request is in.
    per_try_idle_ms: u64,
    /// `x-envoy-attempt-count` for the response (0: none).
    attempt_down: u32,
    /// Where `x-envoy-upstream-service-time` counts from: the first try's start.
    service_from: Instant,
}

impl Exchange<'_> {
    #[inline(always)]
    async fn run(&self, d: &mut Down, up: &mut UpConn, head_out: Vec<u8>) -> Outcome {
        let (ctx, l) = (self.ctx, self.l);
        let idle_ms = self.idle_ms;
        // Bodies move in pieces no larger than either side's per_connection_buffer_limit_bytes.
        let down_chunk = BODY_CHUNK.min(l.c.cfg.per_connection_buffer_limit_bytes.max(1) as usize);
        let up_chunk = self.up_chunk;
        let request_deadline = d.request_deadline;
        let resp_status = Cell::new(0u16);
        // The upstream's first informational response's code (0: none yet).
        let informed = Cell::new(0u16);
        // For the access log: body bytes each way, when the request was read whole, when the
        // response began, and its head as sent.
        let log_on = d.log.is_some();
        let (body_in, body_out) = (Cell::new(0u64), Cell::new(0u64));
        let read_at = Cell::new(None);
        let resp_at = Cell::new(None);
        let resp_head = RefCell::new(None);
        // An upgrade's head and body went upstream whole: a 101 may switch.
        let upgrade_sent = Cell::new(false);
        // The request has been read from the client in full (decides the client connection);
        // it has also been written upstream in full (decides the upstream connection).
        let req_read = Cell::new(false);
        let req_complete = Cell::new(false);
        // When it had (for a later try's route timeout, should no poll arm it here).
        let complete_at = Cell::new(None);
        let upstream_sent_bytes = Cell::new(false);
        // Envoy's stream_idle_timeout is one timer per stream, reset by progress in either
        // direction; the reads below do not time out on their own.
        // Progress is stamped with a clock read; the exchange starts from the request's start.
        let activity = Cell::new(tokio::time::Instant::from_std(self.rq_start));
        let touch = || activity.set(clock::tnow());
        // The upstream's last bytes, for the per-try idle timeout: set once the request is in,
        // then moved by every read from the upstream.
        let up_heard = Cell::new(None::<tokio::time::Instant>);
        let per_try_idle =
            (self.per_try_idle_ms > 0).then(|| Duration::from_millis(self.per_try_idle_ms));
        let heard = || {
            if per_try_idle.is_some() && up_heard.get().is_some() {
                up_heard.set(Some(clock::tnow()));
            }
        };
        let timer = &mut d.timer;
        let (mut dr, mut dw) = d.stream.split();
        let (mut ur, mut uw) = up.stream.split();
        let drbuf = &mut d.rbuf;
        let urbuf = &mut up.rbuf;
        let framing = self.framing;
        // The upstream closed (or reset) its connection: how it is counted when it goes.
        let up_eof = Cell::new(false);
        // The upstream stopped reading the request (its write failed): the request has gone
        // upstream as far as it will, for the route timeout.
        let up_stopped = Cell::new(false);
        // Bytes read and written on each side (Envoy's `*_cx_rx_bytes_total`, `*_cx_tx_...`).
        // and what the buffers hold (`*_bytes_buffered`).
        let (down_rx, down_tx) = (&l.http.down_rx(&d.held), &l.http.down_tx(&d.held));
        let (up_rx, up_tx) = (
            &self.cs.s.up_rx(&up.guard.held),
            &self.cs.s.up_tx(&up.guard.held),
        );

        // Pinned where they are built: `tokio::pin!` of a built future copied it whole.
        let req_pinned = std::pin::pin!(async {
            let mut out = head_out;
            let mut dec = Decoder::new(framing);
            let chunked = self.chunk_up;
            loop {
                let at = out.len();
                let pumped = pump(&mut dec, drbuf, &mut out, chunked, down_chunk, &body_in)
                    .map_err(|_| ReqErr::BadBody)?;
                // The body as it goes upstream is kept for a try after this one.
                if let (Some(t), false) = (self.tries, self.replay) {
                    if out.len() > at {
                        t.keep(&out[at..], body_in.get());
                    }
                }
                if matches!(pumped, Pumped::Done) && !self.upgrade {
                    req_read.set(true);
                    if log_on && !self.replay {
                        read_at.set(Some(clock::now()));
                    }
                }
                if !out.is_empty() {
                    if write_all(&mut uw, &out, up_tx).await.is_err() {
                        if !req_read.get() {
                            return Err(ReqErr::Upstream);
                        }
                        // The client sent it all: the upstream may still answer (an early
                        // error), and the client is watched meanwhile, as below.
                        up_stopped.set(true);
                        return Err(watch_client(&dr, drbuf, down_rx, READ_CHUNK).await);
                    }
                    out.clear();
                    touch();
                }
                match pumped {
                    Pumped::Done if self.upgrade => {
                        upgrade_sent.set(true);
                        ctx.put_write_buf(out);
                        // What the client sends now is for the tunnel: read ahead and held
                        // (up to a read piece) until the upstream answers; the watch ends the
                        // exchange should the client go meanwhile.
                        return Err(watch_client(&dr, drbuf, down_rx, READ_CHUNK).await);
                    }
                    Pumped::Done => {
                        req_complete.set(true);
                        complete_at.set(Some(activity.get()));
                        ctx.put_write_buf(out);
                        // The request is in (the loop below sees `req_complete`). Watch the
                        // client connection while the response is awaited and relayed, as
                        // Envoy does: a client that goes away (or half-closes, which Envoy's
                        // HTTP/1 takes for a close) ends the exchange and its upstream
                        // request at once. Readiness was cleared by the request's last short
                        // read, so an idle watch costs no syscall.
                        return Err::<std::convert::Infallible, ReqErr>(
                            watch_client(&dr, drbuf, down_rx, READ_CHUNK).await,
                        );
                    }
                    // Body bytes are still buffered: never wait on the socket for them.
                    Pumped::Full => {}
                    Pumped::NeedMore => {
                        let n = read_more(&mut dr, drbuf, down_chunk)
                            .await
                            .map_err(|_| ReqErr::Downstream)?;
                        down_rx.read(n, drbuf.len());
                        touch();
                    }
                }
            }
        });
        // Polled from two arms of the loop below: reading and sending the request before the
        // response, watching the client after it.
        let req_fut = RefCell::new(req_pinned);

        let mut resp_fut = std::pin::pin!(async {
            let head = loop {
                match parse_response_counted(urbuf, MAX_RESPONSE_HEAD, self.max_headers) {
                    // The upstream takes the upgrade: its 101 goes down as a response head
                    // does, and the tunnel is [`tunnel`]'s. A 101 to a request that asked
                    // for no upgrade is a protocol error.
                    // So is one before the upgrade's own body has gone up whole (RFC 9110
                    // section 7.8: the server reads it before it switches).
                    Ok(Some(h)) if h.status == 101 => {
                        if self.upgrade && upgrade_sent.get() {
                            break h;
                        }
                        return Err(RespErr::Protocol);
                    }
                    // An interim response may not carry framing headers either (Envoy).
                    Ok(Some(h))
                        if (100..200).contains(&h.status)
                            && response_framing(false, h.status, &h.headers).is_err() =>
                    {
                        return Err(RespErr::Protocol)
                    }
                    Ok(Some(h)) if (100..200).contains(&h.status) => {
                        // Envoy's router takes the first 100, 102, 103 or 104 as a response
                        // of its own: counted as the upstream's code, relayed under
                        // proxy_100_continue (whether or not the client sent `Expect`), and
                        // from then on the request is not tried again and its per-try
                        // timeout is off. Later ones, and other codes, are dropped.
                        // A close now, between responses, is a termination (503), not a
                        // partial head (502).
                        upstream_sent_bytes.set(!urbuf.is_empty());
                        if matches!(h.status, 100 | 102..=104) && informed.get() == 0 {
                            informed.set(h.status);
                            self.cs.count_response(h.status);
                            if self.relay_1xx {
                                l.count_completed(h.status);
                                let interim = informational_head(h);
                                write_all(&mut dw, &interim, down_tx)
                                    .await
                                    .map_err(|_| RespErr::Downstream)?;
                            }
                        }
                        continue;
                    }
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(_) => return Err(RespErr::Protocol),
                }
                let n = read_more(&mut ur, urbuf, READ_CHUNK.min(up_chunk))
                    .await
                    .map_err(|_| {
                        up_eof.set(true);
                        RespErr::BeforeHeaders
                    })?;
                up_rx.read(n, urbuf.len());
                upstream_sent_bytes.set(true);
                touch();
            };
            let status = head.status;
            // The final head moves the per-try idle timeout on (a partial head, or a 1xx,
            // does not: Envoy's).
            heard();
            if let Some((m, o)) = self.outlier {
                m.put_code(status, o, self.upstream);
            }
            if let Some(h) = self.health {
                if head
                    .headers
                    .may_have_any(crate::http1::head::known::X_ENVOY)
                    && head
                        .headers
                        .contains(b"x-envoy-immediate-health-check-fail")
                {
                    h.passive_fail(self.upstream);
                }
            }
            // The head's last read stamped `activity`: no clock read of its own.
            let service_ms = activity
                .get()
                .into_std()
                .saturating_duration_since(self.service_from)
                .as_millis() as u64;
            let up_framing = response_framing(self.is_head, status, &head.headers)
                .map_err(|_| RespErr::Protocol)?;
            // The route's retry policy may try again instead (only once the whole request
            // was read: its body is kept for the next try).
            // A request still arriving cannot be tried again: no decision is made.
            if let Some(t) = self.tries.filter(|_| req_read.get() && informed.get() == 0) {
                let would = t.policy.retries_response(status, &head.headers);
                if t.decide(would) {
                    let bodiless = matches!(up_framing, Framing::Empty | Framing::Length(0));
                    let keeps = ConnectionTokens::of(&head.headers).keep_alive(head.minor);
                    return Err(RespErr::Retry {
                        status,
                        reuse: bodiless && keeps && urbuf.is_empty(),
                    });
                }
            }
            // A response to HEAD without a length says `transfer-encoding: chunked`, as the
            // response to a GET would (Envoy 1.40).
            let head_chunked = self.is_head
                && status >= 200
                && status != 204
                && status != 304
                && !head.headers.contains(b"content-length");
            let conn = ConnectionTokens::of(&head.headers);
            let up_keep = conn.keep_alive(head.minor) && up_framing != Framing::Close;
            if !conn.keep_alive(head.minor) {
                // The upstream said it closes (`connection: close`, or HTTP/1.0 without
                // keep-alive): Envoy's close notification.
                self.cs.s.upstream_cx_close_notify.inc();
            }
            // A close-delimited upstream body goes to the (HTTP/1.1) client chunked, so the
            // client connection can stay open.
            let mut down_framing = if up_framing == Framing::Close {
                Framing::Chunked
            } else {
                up_framing
            };
            // A response that comes before the whole request (the upstream answered early)
            // ends the connection, announced with `connection: close`, as Envoy's HTTP/1
            // codec does; the rest of the body is read and dropped before the close (linger).
            let rq_done = req_read.get();
            if !rq_done {
                l.http.downstream_rq_response_before_rq_complete.inc();
            }
            // Asked first: a drain is counted whatever else closes the connection.
            let closes = response_closes(ctx, l, d.opened, &d.max_reached);
            let down_keep = self.keep && rq_done && !closes;
            let mut h = head.headers;
            if status == 101 {
                // An upgrade's 101 keeps its `connection` and `upgrade`.
                strip_for_upgrade(&mut h);
            } else {
                strip_hop_by_hop_response(&mut h, conn);
            }
            let local = || self.local;
            let cx = Cx {
                peer: d.peer,
                local: &local,
                minor: self.minor,
                request: self.saved.map(|r| ReqView {
                    method: r.method(),
                    target: r.target(),
                    headers: Some(r.headers()),
                    https: r.head.absolute_https() == Some(true),
                }),
                status,
                upstream: Some(self.upstream),
                response: true,
            };
            // Envoy sets the service time only once the whole request has gone upstream.
            let service_ms = req_complete.get().then_some(service_ms);
            apply_response_extras(
                ctx,
                l,
                &mut h,
                service_ms,
                self.set_cookie,
                self.chain,
                &cx,
                self.attempt_down,
            );
            // `always_set_request_id_in_response`: the request's id, over an upstream's own in
            // place (Envoy), after `server`.
            if let Some(id) = &d.request_id {
                set_request_id(&mut h, id);
            }
            // The connection manager's `via`, last (after the request's id, as Envoy).
            if !l.c.cfg.hcm.via.is_empty() {
                append_via(&mut h, l.c.cfg.hcm.via.as_bytes());
            }
            // A length that a header edit removed (a response's `connection` removes none): the
            // body still comes, so it goes chunked, never unframed on a kept-alive connection.
            if matches!(down_framing, Framing::Length(n) if n > 0)
                && self
                    .chain
                    .iter()
                    .any(|m| m.removes_from_response(b"content-length"))
                && !h.contains(b"content-length")
            {
                down_framing = Framing::Chunked;
            }
            if down_framing == Framing::Chunked || status == 204 {
                h.remove(b"content-length");
            }
            let mut out = ctx.take_write_buf();
            out.reserve(512 + up_chunk);
            write_status_line(&mut out, status);
            h.write_to(&mut out);
            if log_on {
                // The headers as sent, for `%RESP(...)%`: moved, not copied.
                *resp_head.borrow_mut() = Some(h);
            } else {
                drop(h);
            }
            if down_framing == Framing::Chunked || head_chunked {
                write_framing(&mut out, Framing::Chunked);
            }
            // (A 101 ends no connection: a tunnel follows it.)
            let fin = !down_keep && status != 101;
            if fin {
                out.extend_from_slice(b"connection: close\r\n");
            }
            out.extend_from_slice(b"\r\n");
            resp_status.set(status);
            if log_on {
                resp_at.set(Some(activity.get().into_std()));
            }
            let mut dec = Decoder::new(up_framing);
            let chunked_out = down_framing == Framing::Chunked;
            // The head of a response whose body has a length is held back by the kernel
            // (`MSG_MORE`) when the body has not all come with it, and goes out with the
            // body's next bytes: an upstream that writes head and body apart (nginx: writev, then
            // sendfile) otherwise costs the client a segment and an ACK more per response
            // (a 1 KiB body: 6.2-6.4 segments per request, HAProxy 6.0; HAProxy holds it
            // likewise unless `option http-no-delay`). Should the body not come, Linux sends
            // the held bytes after 200 ms, or with the connection's close. Chunked and
            // close-delimited bodies, which may stream, get their head at once.
            let mut hold_head = matches!(up_framing, Framing::Length(_));
            loop {
                let body_at = out.len();
                let Ok(pumped) = pump(&mut dec, urbuf, &mut out, chunked_out, up_chunk, &body_out)
                else {
                    // A malformed body: the client still gets the head and the body of earlier
                    // reads, then the connection ends unfinished. What this read decoded before
                    // the error is dropped: Envoy's codec passes a read's body on only once the
                    // read parsed whole (checked against the envoy binary).
                    out.truncate(body_at);
                    if !out.is_empty() {
                        let _ = write_all(&mut dw, &out, down_tx).await;
                    }
                    return Err(RespErr::Protocol);
                };
                let last = fin && matches!(pumped, Pumped::Done);
                let hold = std::mem::take(&mut hold_head) && matches!(pumped, Pumped::NeedMore);
                // The last bytes on a connection that closes next go with its FIN (with no
                // bytes left, when the body ended on a full piece, the FIN alone).
                if !out.is_empty() || last {
                    let written = if last {
                        write_down(&mut dw, &out, true, down_tx).await
                    } else if hold {
                        write_more(dw.as_ref(), &out, down_tx).await
                    } else {
                        write_all(&mut dw, &out, down_tx).await
                    };
                    written.map_err(|_| RespErr::Downstream)?;
                    out.clear();
                    touch();
                }
                match pumped {
                    Pumped::Done => break,
                    // Body bytes are still buffered: never wait on the socket for them.
                    Pumped::Full => {}
                    Pumped::NeedMore => match read_more(&mut ur, urbuf, up_chunk).await {
                        Ok(n) => {
                            up_rx.read(n, urbuf.len());
                            touch();
                            heard();
                        }
                        Err(_) if dec.is_close_delimited() => {
                            up_eof.set(true);
                            if chunked_out {
                                write_down(&mut dw, LAST_CHUNK, !down_keep, down_tx)
                                    .await
                                    .map_err(|_| RespErr::Downstream)?;
                            }
                            // The body ended with the close, maybe long after its last bytes.
                            touch();
                            break;
                        }
                        Err(_) => {
                            up_eof.set(true);
                            return Err(RespErr::AfterHeaders);
                        }
                    },
                }
            }
            ctx.put_write_buf(out);
            Ok((status, up_keep, down_keep))
        });

        // The deadlines are plain instants on the connection's one timer (timer.rs): a fast
        // exchange registers nothing with tokio's timer wheel.
        let idle = (idle_ms > 0).then(|| Duration::from_millis(idle_ms));
        let mut route_deadline = None;
        // The try's per-try timeout, from when the request went upstream to its response head.
        let mut per_try_deadline = None;
        // `req_done`: the request went upstream whole (or the upstream stopped reading it);
        // `req_live`: `req_fut` (reading the request, then watching the client) still runs.
        let mut req_done = false;
        let mut req_live = true;
        let next_deadline = |req_done: bool,
                             route: Option<tokio::time::Instant>,
                             per_try: Option<tokio::time::Instant>| {
            let common = earliest([
                idle.map(|i| activity.get() + i),
                route,
                per_try.filter(|_| resp_status.get() == 0 && informed.get() == 0),
                // request_timeout ends once the response has started, as Envoy's.
                request_deadline.filter(|_| !req_done && resp_status.get() == 0),
            ]);
            // The rarer two only when set (a branch each, not two more in the fold).
            let mut dl = common;
            if let Some(by) = self.duration_by {
                dl = Some(dl.map_or(by, |d| d.min(by)));
            }
            if let Some(i) = per_try_idle {
                if let Some(at) = up_heard.get() {
                    let by = at + i;
                    dl = Some(dl.map_or(by, |d| d.min(by)));
                }
            }
            dl
        };
        let mut deadline = next_deadline(false, None, None);
        if let Some(dl) = deadline {
            timer.arm_by(dl);
        }
        // `req_fut` passed from reading the request to watching the client in this poll: the
        // watch has just registered, so the watch arm leaves it be until the next poll.
        let watch_fresh = Cell::new(false);
        let result = loop {
            tokio::select! {
                biased;
                // The request first: body bytes that came in with the response are forwarded
                // before the response head is written, so the request is complete there.
                r = std::future::poll_fn(|cx| {
                    if req_complete.get() {
                        return Poll::Pending;
                    }
                    let r = req_fut.borrow_mut().as_mut().poll(cx);
                    watch_fresh.set(r.is_pending() && req_complete.get());
                    r
                }), if req_live => {
                    req_live = false;
                    match r {
                        Ok(never) => match never {},
                        Err(ReqErr::Downstream) => break Err(Stop::DownstreamGone),
                        Err(ReqErr::BadBody) => break Err(Stop::BadRequestBody),
                        // The upstream stopped reading: it may still answer (an early error).
                        // The timer arm starts the route timeout in this same poll.
                        Err(ReqErr::Upstream) => up_stopped.set(true),
                    }
                }
                r = &mut resp_fut => break Ok(r),
                // The watch on the client once the request is in, after the response: the
                // poll that finishes the response does not also poll an idle watch.
                r = std::future::poll_fn(|cx| {
                    if !req_complete.get() || watch_fresh.replace(false) {
                        return Poll::Pending;
                    }
                    req_fut.borrow_mut().as_mut().poll(cx)
                }), if req_live => match r {
                    Ok(never) => match never {},
                    // Once the request is in, only the watch runs: the client went away.
                    Err(_) => break Err(Stop::DownstreamGone),
                },
                () = std::future::poll_fn(|cx| {
                    // The request went upstream in this poll (the arms above ran first), or
                    // the upstream stopped reading it: the route timeout starts from its last
                    // write (a failed one may have waited long: then from now).
                    if !req_done && (req_complete.get() || up_stopped.get()) {
                        req_done = true;
                        let sent = if req_complete.get() { activity.get() } else { clock::tnow() };
                        if let Some(by) = self.route_by {
                            route_deadline = Some(by);
                            timer.arm_by(by);
                        } else if self.timeout_ms > 0 {
                            let dl = sent + Duration::from_millis(self.timeout_ms);
                            route_deadline = Some(dl);
                            timer.arm_by(dl);
                        }
                        if let Some(t) = self.tries {
                            // Later tries share the route timeout's end.
                            t.route_by.set(route_deadline);
                        }
                        if self.per_try_ms > 0 {
                            let dl = sent + Duration::from_millis(self.per_try_ms);
                            per_try_deadline = Some(dl);
                            timer.arm_by(dl);
                        }
                        // The per-try idle timeout runs from the request's being in.
                        if let Some(i) = per_try_idle {
                            if up_heard.get().is_none() {
                                up_heard.set(Some(sent));
                            }
                            timer.arm_by(up_heard.get().unwrap_or(sent) + i);
                        }
                        deadline = next_deadline(true, route_deadline, per_try_deadline);
                    }
                    if deadline.is_none() {
                        return Poll::Pending;
                    }
                    timer.poll_fired(cx)
                }), if deadline.is_some() || !req_done => {
                    // The timer fired by tokio's clock: compare with a fresh read, not the turn's.
                    let now = tokio::time::Instant::now();
                    if idle.is_some_and(|i| now >= activity.get() + i) {
                        l.http.downstream_rq_idle_timeout.inc();
                        break Err(Stop::StreamIdle);
                    }
                    if self.duration_by.is_some_and(|dl| now >= dl) {
                        l.http.downstream_rq_max_duration_reached.inc();
                        break Err(Stop::MaxDuration);
                    }
                    if route_deadline.is_some_and(|dl| now >= dl) {
                        break Err(Stop::RouteTimeout);
                    }
                    if resp_status.get() == 0
                        && informed.get() == 0
                        && per_try_deadline.is_some_and(|dl| now >= dl)
                    {
                        break Err(Stop::PerTryTimeout);
                    }
                    if per_try_idle
                        .is_some_and(|i| up_heard.get().is_some_and(|at| now >= at + i))
                    {
                        break Err(Stop::PerTryIdle);
                    }
                    if !req_done
                        && resp_status.get() == 0
                        && request_deadline.is_some_and(|dl| now >= dl)
                    {
                        l.http.downstream_rq_timeout.inc();
                        break Err(Stop::RequestTimeout);
                    }
                    // Gone off for an earlier wait's deadline, or progress moved the idle
                    // deadline on: wait for what is due next.
                    deadline = next_deadline(req_done, route_deadline, per_try_deadline);
                    if let Some(dl) = deadline {
                        timer.arm_by(dl);
                    }
                }
            }
        };
        up.guard.remote = up_eof.get();
        // A try that ended in the poll that sent its request never armed the route timeout:
        // later tries still run it from then.
        if let (Some(t), Some(at)) = (self.tries, complete_at.get()) {
            if t.route_by.get().is_none() && self.timeout_ms > 0 {
                let by = at + Duration::from_millis(self.timeout_ms);
                t.route_by
                    .set(Some(self.route_by.map_or(by, |r| r.min(by))));
            }
        }
        if let Some(r) = d.log.as_deref_mut() {
            // A try that sent the kept body read none: the first try's count stands.
            if !self.replay {
                r.bytes_received = body_in.get();
            }
            r.bytes_sent = if self.is_head { 0 } else { body_out.get() };
            if read_at.get().is_some() {
                r.request_done = read_at.get();
            }
            r.response_start = resp_at.get();
            r.response = resp_head
                .take()
                .map(crate::accesslog::LoggedResponse::Headers);
        }
        let sent = resp_status.get();
        let started = sent != 0;
        // The upstream connection is reusable only if the request went out whole; the client
        // connection only if the request was read whole.
        let complete = req_complete.get();
        let read_whole = req_read.get();
        d.body_unread = !read_whole;
        if matches!(result, Ok(Ok((101, _, _)))) {
            return Outcome::Switched;
        }
        if matches!(result, Ok(Ok(_))) && !complete {
            // Answered before the request had all gone upstream (an early response): the
            // upstream connection closes with the request on it, and the client's request,
            // never read whole, is reset with its connection (Envoy counts both).
            up.guard.active_rq = true;
            if !read_whole {
                l.http.downstream_rq_rx_reset.inc();
            }
        }
        // After a routing-level failure the client connection stays usable (as Envoy's) when the
        // whole request was read.
        let keep_ok = self.keep && read_whole && !ctx.draining();
        let local = |status, body, keep, cause| Outcome::Local {
            status,
            body,
            keep,
            cause,
            informed: false,
        };
        // The retry policy's say on a try that ended before its response head: tried again
        // (once the whole request was read and kept), or answered with the last try's reason.
        let retried = self.tries.is_some_and(|t| t.attempt.get() > 1);
        let again = |reset| {
            self.tries
                .filter(|_| read_whole && informed.get() == 0)
                .is_some_and(|t| {
                    let would = t.policy.retries_reset(reset, true);
                    t.decide(would)
                })
        };
        let retry = |per_try, protocol| Outcome::Retry {
            status: 0,
            per_try,
            idle: false,
            protocol,
            reuse: false,
        };
        let mut outcome = match result {
            Ok(Err(RespErr::Retry { status, reuse })) => Outcome::Retry {
                status,
                per_try: false,
                idle: false,
                protocol: false,
                reuse: reuse && complete,
            },
            // (A partial head is a protocol error too, as below.)
            Ok(Err(e @ (RespErr::BeforeHeaders | RespErr::Protocol)))
                if !started && again(Reset::Upstream) =>
            {
                let protocol = matches!(e, RespErr::Protocol) || upstream_sent_bytes.get();
                retry(false, protocol)
            }
            Ok(Err(RespErr::BeforeHeaders)) if !upstream_sent_bytes.get() && retried => {
                local(503, RETRIED_TERMINATION, keep_ok, Cause::UpstreamReset)
            }
            Ok(Err(RespErr::BeforeHeaders | RespErr::Protocol)) if !started && retried => {
                local(502, RETRIED_PROTOCOL, keep_ok, Cause::UpstreamProtocol)
            }
            Err(Stop::PerTryTimeout) if again(Reset::PerTryTimeout) => retry(true, false),

            Err(Stop::PerTryTimeout) => local(
                504,
                b"upstream request timeout",
                keep_ok,
                Cause::PerTryTimeout,
            ),
            // Every write stamped `activity`: the last one is the response's end.
            Ok(Ok((status, up_keep, down_keep))) => Outcome::Done {
                status,
                up_reusable: up_keep && complete,
                down_keep: down_keep && read_whole,
                end: activity.get().into_std(),
            },
            // Nothing at all came back: the connection was terminated (Envoy: 503).
            Ok(Err(RespErr::BeforeHeaders)) if !upstream_sent_bytes.get() => {
                local(503, RESET_TERMINATION, keep_ok, Cause::UpstreamReset)
            }
            // A partial or invalid head (Envoy: 502).
            Ok(Err(RespErr::BeforeHeaders | RespErr::Protocol)) if !started => {
                local(502, RESET_PROTOCOL, keep_ok, Cause::UpstreamProtocol)
            }
            Ok(Err(RespErr::Downstream)) | Err(Stop::DownstreamGone) => Outcome::Abort {
                status: sent,
                cause: Cause::ClientGone,
            },
            Ok(Err(RespErr::Protocol)) => Outcome::Abort {
                status: sent,
                cause: Cause::UpstreamProtocol,
            },
            Ok(Err(_)) => Outcome::Abort {
                status: sent,
                cause: Cause::UpstreamReset,
            },
            Err(Stop::RouteTimeout) if !started => local(
                504,
                b"upstream request timeout",
                keep_ok,
                Cause::RouteTimeout,
            ),
            Err(Stop::RequestTimeout) if !started => {
                local(408, b"request timeout", false, Cause::Downstream)
            }
            Err(stop @ (Stop::MaxDuration | Stop::PerTryIdle)) => {
                let retry =
                    matches!(stop, Stop::PerTryIdle) && !started && again(Reset::PerTryTimeout);
                timer_stop(stop, sent, read_whole, keep_ok, retry)
            }
            Err(Stop::BadRequestBody) => {
                l.http.downstream_cx_protocol_error.inc();
                if started {
                    l.http.downstream_rq_rx_reset.inc();
                    Outcome::Abort {
                        status: sent,
                        cause: Cause::Downstream,
                    }
                } else {
                    // The reply counts the reset (the body was not read whole).
                    local(400, b"Bad Request", false, Cause::Downstream)
                }
            }
            // Idle while the client still owed request bytes: 408; while waiting on the upstream: 504.
            Err(Stop::StreamIdle) if !started && !complete => {
                local(408, b"stream timeout", false, Cause::Downstream)
            }
            Err(Stop::StreamIdle) if !started => {
                local(504, b"stream timeout", keep_ok, Cause::UpstreamIdle)
            }
            Err(Stop::RouteTimeout) => Outcome::Abort {
                status: sent,
                cause: Cause::RouteTimeout,
            },
            Err(Stop::StreamIdle) => Outcome::Abort {
                status: sent,
                cause: Cause::UpstreamIdle,
            },
            Err(_) => Outcome::Abort {
                status: sent,
                cause: Cause::Downstream,
            },
        };
        if let Outcome::Local { informed: i, .. } = &mut outcome {
            *i = informed.get() != 0;
        }
        outcome
    }
}

/// An upstream's informational response as relayed to the client: Envoy's status line (its
/// reason phrase, `Unknown` for 102 to 104) and the upstream's headers less `connection`,
/// `upgrade` and `proxy-connection` (Envoy's connection manager keeps `keep-alive`, `te` and
/// the headers `connection` names on these); nothing of the final response's (no `server`,
/// `date` or header edits). Checked against the envoy binary.
#[cold]
#[inline(never)]
fn informational_head(h: crate::http1::head::ResponseHead) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_status_line(&mut out, h.status);
    let mut headers = h.headers;
    for name in [&b"connection"[..], b"upgrade", b"proxy-connection"] {
        headers.remove(name);
    }
    headers.write_to(&mut out);
    out.extend_from_slice(b"\r\n");
    out
}
