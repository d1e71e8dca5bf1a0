//! Stats with Envoy's names: per-worker storage ([`store`]), the merged view ([`model`]) and
//! Envoy's admin formats ([`render`]). The scope structs of each area live here so every stat
//! name is declared in one place.

pub mod model;
pub mod render;
pub mod store;

pub use model::{HistValue, StatKind, StatValue, StatsSnapshot};
pub use store::{CodeCounters, Counter, Flow, Gauge, GaugeHold, Histogram, Scope, Store, Visitor};

crate::stat_scope! {
    /// `http.<stat_prefix>.*`: one per listener's connection manager per worker.
    pub struct HttpStats {
        counters {
            downstream_cx_total, downstream_cx_destroy, downstream_cx_protocol_error,
            downstream_cx_rx_bytes_total, downstream_cx_tx_bytes_total,
            downstream_cx_destroy_local, downstream_cx_destroy_remote,
            downstream_cx_destroy_active_rq, downstream_cx_destroy_local_active_rq,
            downstream_cx_destroy_remote_active_rq,
            downstream_cx_idle_timeout, downstream_cx_delayed_close_timeout,
            downstream_cx_drain_close, downstream_cx_max_requests_reached,
            downstream_cx_max_duration_reached,
            downstream_cx_http1_total, downstream_cx_upgrades_total,
            downstream_rq_total, downstream_rq_http1_total,
            downstream_rq_1xx, downstream_rq_2xx, downstream_rq_3xx, downstream_rq_4xx,
            downstream_rq_5xx, downstream_rq_completed, downstream_rq_timeout,
            downstream_rq_idle_timeout, downstream_rq_header_timeout,
            downstream_rq_max_duration_reached,
            downstream_rq_response_before_rq_complete, downstream_rq_rx_reset,
            downstream_rq_tx_reset,
            downstream_rq_non_relative_path, downstream_rq_failed_path_normalization,
            downstream_rq_redirected_with_normalized_path, downstream_rq_ws_on_non_ws_route,
            no_route, no_cluster, rq_direct_response, rq_redirect, rq_total,
            downstream_cx_overload_disable_keepalive, downstream_rq_overload_close,
            rq_overload_local_reply,
        }
        gauges {
            downstream_cx_active, downstream_cx_http1_active, downstream_rq_active,
            downstream_cx_upgrades_active,
            downstream_cx_rx_bytes_buffered, downstream_cx_tx_bytes_buffered,
        }
        histograms { downstream_rq_time, downstream_cx_length_ms }
    }
}

/// What one connection's buffers count in the `*_bytes_buffered` gauges ([`Flow`]), taken off
/// them when the connection ends.
/// (`u32`: a connection's buffers hold far less than 4 GiB, and an upstream connection is
/// moved in and out of its pool by value, so it is kept small.)
#[derive(Debug, Default)]
pub struct Buffered {
    pub rx: std::cell::Cell<u32>,
    pub tx: std::cell::Cell<u32>,
}

/// A scope's `*_rx_bytes_buffered` and `*_tx_bytes_buffered` gauges.
pub type BufferedGauges<'a> = [&'a Gauge; 2];

impl Buffered {
    /// Takes this connection's share off the gauges.
    pub fn release(&self, g: BufferedGauges<'_>) {
        g[0].add_sub(0, u64::from(self.rx.take()));
        g[1].add_sub(0, u64::from(self.tx.take()));
    }

    /// Moves this connection's share from one scope's gauges to another's.
    pub fn move_to(&self, from: BufferedGauges<'_>, to: BufferedGauges<'_>) {
        for (i, share) in [&self.rx, &self.tx].into_iter().enumerate() {
            let v = u64::from(share.get());
            from[i].add_sub(0, v);
            to[i].add_sub(v, 0);
        }
    }
}

impl HttpStats {
    /// `downstream_cx_{rx,tx}_bytes_buffered`.
    pub fn buffered(&self) -> BufferedGauges<'_> {
        [
            &self.downstream_cx_rx_bytes_buffered,
            &self.downstream_cx_tx_bytes_buffered,
        ]
    }

    /// A client connection's reads.
    #[inline]
    pub fn down_rx<'a>(&'a self, b: &'a Buffered) -> Flow<'a> {
        Flow {
            total: &self.downstream_cx_rx_bytes_total,
            buffered: &self.downstream_cx_rx_bytes_buffered,
            held: &b.rx,
        }
    }

    /// A client connection's writes.
    #[inline]
    pub fn down_tx<'a>(&'a self, b: &'a Buffered) -> Flow<'a> {
        Flow {
            total: &self.downstream_cx_tx_bytes_total,
            buffered: &self.downstream_cx_tx_bytes_buffered,
            held: &b.tx,
        }
    }
}

impl ClusterStats {
    /// `upstream_cx_{rx,tx}_bytes_buffered`.
    pub fn buffered(&self) -> BufferedGauges<'_> {
        [
            &self.upstream_cx_rx_bytes_buffered,
            &self.upstream_cx_tx_bytes_buffered,
        ]
    }

    /// An upstream connection's reads.
    #[inline]
    pub fn up_rx<'a>(&'a self, b: &'a Buffered) -> Flow<'a> {
        Flow {
            total: &self.upstream_cx_rx_bytes_total,
            buffered: &self.upstream_cx_rx_bytes_buffered,
            held: &b.rx,
        }
    }

    /// An upstream connection's writes.
    #[inline]
    pub fn up_tx<'a>(&'a self, b: &'a Buffered) -> Flow<'a> {
        Flow {
            total: &self.upstream_cx_tx_bytes_total,
            buffered: &self.upstream_cx_tx_bytes_buffered,
            held: &b.tx,
        }
    }
}

/// The counter of `code`'s class among the five given for 1xx to 5xx (anything else counts as
/// 5xx). A match, not an array: the counters stay where they are.
macro_rules! of_class {
    ($code:expr, $c1:expr, $c2:expr, $c3:expr, $c4:expr, $c5:expr $(,)?) => {
        match $code / 100 {
            1 => $c1,
            2 => $c2,
            3 => $c3,
            4 => $c4,
            _ => $c5,
        }
    };
}

/// The counters of Envoy's split of a connection's `*_cx_destroy`, by who closed it and
/// whether a request was on it then (the names differ upstream and downstream).
pub struct DestroySplit<'a> {
    pub local: &'a Counter,
    pub remote: &'a Counter,
    pub active_rq: &'a Counter,
    pub local_active_rq: &'a Counter,
    pub remote_active_rq: &'a Counter,
}

impl DestroySplit<'_> {
    /// Counts a connection's end: closed by the peer (`remote`, else by us), with a request
    /// under way (`active_rq`) or not.
    #[inline]
    pub fn count(&self, remote: bool, active_rq: bool) {
        if remote { self.remote } else { self.local }.inc();
        if active_rq {
            self.active_rq.inc();
            if remote {
                self.remote_active_rq
            } else {
                self.local_active_rq
            }
            .inc();
        }
    }
}

impl HttpStats {
    /// Counts a response by class (`downstream_rq_2xx`).
    #[inline]
    pub fn count_response(&self, code: u16) {
        of_class!(
            code,
            &self.downstream_rq_1xx,
            &self.downstream_rq_2xx,
            &self.downstream_rq_3xx,
            &self.downstream_rq_4xx,
            &self.downstream_rq_5xx
        )
        .inc();
    }
}

impl Scope for HttpStats {
    fn visit(&self, v: &mut dyn Visitor) {
        self.visit_declared(v);
    }
}

crate::stat_scope! {
    /// `http1.*`: the HTTP/1 codec's counts, one per worker (Envoy keeps them at the root).
    pub struct Http1Stats {
        counters { dropped_headers_with_underscores, requests_rejected_with_underscores_in_headers }
        gauges {}
        histograms {}
    }
}

impl Scope for Http1Stats {
    fn visit(&self, v: &mut dyn Visitor) {
        self.visit_declared(v);
    }
}

crate::stat_scope! {
    /// `filesystem.*` as each worker counts them (Envoy's access log file stats): lines it
    /// buffered, hand-overs its flush timer made, and the bytes it holds. The writers' own
    /// (`write_completed`, `write_failed`, `reopen_failed`) are process-wide
    /// (`accesslog::sink`), added by the engine.
    pub struct FsStats {
        counters { flushed_by_timer, write_buffered }
        gauges { write_total_buffered }
        histograms {}
    }
}

impl Scope for FsStats {
    fn visit(&self, v: &mut dyn Visitor) {
        self.visit_declared(v);
    }
}

crate::stat_scope! {
    /// `listener.<address>.*`: one per listener per worker.
    pub struct ListenerStats {
        counters {
            downstream_cx_total, downstream_cx_destroy, downstream_cx_overload_reject,
            downstream_global_cx_overflow,
        }
        gauges { downstream_cx_active }
        histograms { downstream_cx_length_ms }
    }
}

crate::stat_scope! {
    /// `listener.<address>.http.<stat_prefix>.*`: the connection manager's responses as
    /// counted per listener (Envoy's per-listener copy of `downstream_rq_<class>xx`).
    pub struct ListenerHttpStats {
        counters {
            downstream_rq_1xx, downstream_rq_2xx, downstream_rq_3xx, downstream_rq_4xx,
            downstream_rq_5xx, downstream_rq_completed,
        }
        gauges {}
        histograms {}
    }
}

impl Scope for ListenerHttpStats {
    fn visit(&self, v: &mut dyn Visitor) {
        self.visit_declared(v);
    }
}

impl ListenerHttpStats {
    /// Counts a response by class, and as completed.
    #[inline]
    pub fn count_response(&self, code: u16) {
        of_class!(
            code,
            &self.downstream_rq_1xx,
            &self.downstream_rq_2xx,
            &self.downstream_rq_3xx,
            &self.downstream_rq_4xx,
            &self.downstream_rq_5xx
        )
        .inc();
        self.downstream_rq_completed.inc();
    }
}

crate::stat_scope! {
    /// `listener.<address>.worker_<n>.*`: each worker's share of a listener, as Envoy reports it.
    pub struct ListenerWorkerStats {
        counters { downstream_cx_total }
        gauges { downstream_cx_active }
        histograms {}
    }
}

impl Scope for ListenerWorkerStats {
    fn visit(&self, v: &mut dyn Visitor) {
        self.visit_declared(v);
    }
}

impl Scope for ListenerStats {
    fn visit(&self, v: &mut dyn Visitor) {
        self.visit_declared(v);
    }
}

crate::stat_scope! {
    /// `cluster.<name>.*`: one per cluster per worker.
    pub struct ClusterStats {
        counters {
            upstream_cx_total, upstream_cx_http1_total, upstream_cx_connect_fail,
            upstream_cx_rx_bytes_total, upstream_cx_tx_bytes_total,
            upstream_cx_connect_timeout, upstream_cx_destroy, upstream_cx_idle_timeout,
            upstream_cx_destroy_local, upstream_cx_destroy_remote,
            upstream_cx_destroy_with_active_rq, upstream_cx_destroy_local_with_active_rq,
            upstream_cx_destroy_remote_with_active_rq, upstream_cx_close_notify,
            upstream_cx_max_requests, upstream_cx_protocol_error,
            upstream_rq_total, upstream_rq_completed, upstream_rq_timeout,
            upstream_rq_rx_reset, upstream_rq_tx_reset, upstream_rq_pending_total,
            upstream_rq_pending_failure_eject, upstream_rq_cancelled,
            upstream_cx_none_healthy, lb_healthy_panic, membership_change,
            upstream_cx_overflow, upstream_cx_pool_overflow, upstream_rq_pending_overflow,
            upstream_rq_active_overflow, upstream_rq_retry_overflow,
            upstream_rq_retry, upstream_rq_retry_success, upstream_rq_retry_limit_exceeded,
            upstream_rq_retry_backoff_exponential, upstream_rq_retry_backoff_ratelimited,
            upstream_rq_per_try_timeout, upstream_rq_per_try_idle_timeout,
            retry_or_shadow_abandoned,
        }
        gauges {
            upstream_cx_active, upstream_rq_active, upstream_rq_pending_active,
            membership_total, membership_healthy, membership_degraded, membership_excluded,
            max_host_weight,
            upstream_cx_rx_bytes_buffered, upstream_cx_tx_bytes_buffered,
        }
        histograms { upstream_rq_time, upstream_cx_connect_ms }
    }
}

/// A cluster's declared stats plus its per-code counters.
#[derive(Debug, Default)]
pub struct ClusterScope {
    /// The fixed stats.
    pub s: ClusterStats,
    /// `upstream_rq_<code>`.
    pub codes: CodeCounters,
    /// `upstream_rq_1xx` to `_5xx`: shown once counted, as Envoy creates them on first use
    /// (its static cluster stats do not include them).
    pub class: [Counter; 5],
    /// `external.upstream_rq_*`.
    pub external: ExternalCodes,
    /// `retry.upstream_rq_*`: the responses a retry policy tried again.
    pub retry: ExternalCodes,
    /// A hashing balancer's gauges (`ring_hash_lb.*`, `maglev_lb.*`).
    pub lb: LbGauges,
    /// The cluster's circuit breakers, for their gauges: set in one worker's scope only (the
    /// one that publishes the membership gauges), as they count across workers.
    pub breakers: std::sync::Mutex<Option<std::sync::Arc<crate::upstream::breaker::Breakers>>>,
}

/// A ring hash's `ring_hash_lb.size`, `min_hashes_per_host`, `max_hashes_per_host`, or
/// Maglev's `maglev_lb.min_entries_per_host`, `max_entries_per_host`: shown for a cluster of
/// that policy only, as Envoy creates them. Set by one worker (the one that publishes the
/// membership gauges), so the merged value is the table's.
#[derive(Debug, Default)]
pub struct LbGauges {
    /// 0: none; 1: ring hash; 2: Maglev.
    kind: std::sync::atomic::AtomicU8,
    size: Gauge,
    min: Gauge,
    max: Gauge,
}

impl LbGauges {
    pub const RING_HASH: u8 = 1;
    pub const MAGLEV: u8 = 2;

    /// Records a table: its kind, size (ring only) and the fewest and most entries a host has.
    pub fn set(&self, kind: u8, size: u64, min: u64, max: u64) {
        self.kind.store(kind, std::sync::atomic::Ordering::Relaxed);
        self.size.set(size);
        self.min.set(min);
        self.max.set(max);
    }

    fn visit(&self, v: &mut dyn Visitor) {
        let g = |v: &mut dyn Visitor, name: &str, x: &Gauge| {
            v.stat(name, StatKind::Gauge, x.get(), true)
        };
        match self.kind.load(std::sync::atomic::Ordering::Relaxed) {
            Self::RING_HASH => {
                g(v, "ring_hash_lb.max_hashes_per_host", &self.max);
                g(v, "ring_hash_lb.min_hashes_per_host", &self.min);
                g(v, "ring_hash_lb.size", &self.size);
            }
            Self::MAGLEV => {
                g(v, "maglev_lb.max_entries_per_host", &self.max);
                g(v, "maglev_lb.min_entries_per_host", &self.min);
            }
            _ => {}
        }
    }
}

/// Visits `<prefix><N>xx` for each class counted.
fn visit_classes(class: &[Counter; 5], prefix: &str, v: &mut dyn Visitor) {
    for (i, c) in class.iter().enumerate() {
        let n = c.get();
        if n > 0 {
            v.stat(&format!("{prefix}{}xx", i + 1), StatKind::Counter, n, true);
        }
    }
}

/// `external.upstream_rq_<code>`, `_<N>xx` and `_completed`: Envoy's copy of the response
/// counts for requests from outside, which every request is here (pyproxy has no
/// `internal_address_config`, and drops a client's `x-envoy-internal`). Created on first use.
/// The same set under `retry.` counts the responses a retry policy tried again.
#[derive(Debug, Default)]
pub struct ExternalCodes {
    codes: CodeCounters,
    class: [Counter; 5],
    completed: Counter,
}

impl ExternalCodes {
    /// Counts a response by code and class, and as completed.
    #[inline]
    pub fn count(&self, code: u16) {
        self.codes.inc(code);
        let c = &self.class;
        of_class!(code, &c[0], &c[1], &c[2], &c[3], &c[4]).inc();
        self.completed.inc();
    }

    /// Visits the set under `<scope>.upstream_rq_`.
    fn visit(&self, scope: &str, v: &mut dyn Visitor) {
        if !self.codes.used() {
            return;
        }
        let prefix = format!("{scope}.upstream_rq_");
        self.codes.visit(&prefix, v);
        visit_classes(&self.class, &prefix, v);
        let n = self.completed.get();
        v.stat(&format!("{prefix}completed"), StatKind::Counter, n, n > 0);
    }
}

impl ClusterScope {
    /// Counts a completed upstream response by code and class (`upstream_rq_completed` too:
    /// Envoy charges it with every code, its own 503 and 504 included), and its external copy.
    #[inline]
    pub fn count_response(&self, code: u16) {
        self.external.count(code);
        self.codes.inc(code);
        self.s.upstream_rq_completed.inc();
        let c = &self.class;
        of_class!(code, &c[0], &c[1], &c[2], &c[3], &c[4]).inc();
    }
}

impl Scope for ClusterScope {
    fn visit(&self, v: &mut dyn Visitor) {
        self.s.visit_declared(v);
        self.codes.visit("upstream_rq_", v);
        visit_classes(&self.class, "upstream_rq_", v);
        self.external.visit("external", v);
        self.retry.visit("retry", v);
        self.lb.visit(v);
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = breakers.as_ref() {
            b.visit(v);
        }
    }
}
