//! A worker's thread-local state: its current snapshot view, stat scopes and host pools.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{DrainState, Shared, Stores};
use crate::overload::OverloadNow;
use crate::snapshot::{Compiled, CompiledListener, HostAddr};
use crate::stats::{
    ClusterScope, Http1Stats, HttpStats, ListenerHttpStats, ListenerStats, ListenerWorkerStats,
    Scope,
};
use crate::upstream::outlier::OutlierState;
use crate::upstream::{ClusterRt, HostRt, HostStats};

/// A listener as a worker serves it.
pub struct ListenerRt {
    /// The compiled listener (config and routes).
    pub c: Arc<CompiledListener>,
    /// `http.<stat_prefix>.*`.
    pub http: Arc<HttpStats>,
    /// `listener.<address>.*`.
    pub stats: Arc<ListenerStats>,
    /// `listener.<address>.worker_<n>.*`.
    pub worker: Arc<ListenerWorkerStats>,
    /// `listener.<address>.http.<stat_prefix>.*`.
    pub lhttp: Arc<ListenerHttpStats>,
    /// The worker's counters the engine reads (open connections): reached from here so that a
    /// connection does not hold a pointer of its own to them.
    pub shared: Arc<super::Shared>,
    /// Whether a later snapshot removed this listener, shared by every version of it the
    /// worker has had (a connection may hold an older one).
    pub removal: Rc<Removal>,
}

/// How far a listener's removal has gone. Draining: each of its connections closes after the
/// response it is writing (with the gradual strategy, with a chance that grows over the drain
/// time), as Envoy's listener drain. Closed, once the drain time has passed (Envoy then
/// destroys the listener and its connections): idle connections close too.
#[derive(Debug, Default)]
pub struct Removal {
    state: Cell<u8>,
    /// When the listener was removed.
    since: Cell<Option<Instant>>,
}

impl Removal {
    const DRAINING: u8 = 1;
    const CLOSED: u8 = 2;

    /// Removed: responses close their connections.
    #[inline]
    pub fn draining(&self) -> bool {
        self.state.get() != 0
    }

    /// Removed and the drain time has passed: idle connections close.
    #[inline]
    pub fn closed(&self) -> bool {
        self.state.get() == Self::CLOSED
    }
}

impl ListenerRt {
    /// Counts a response sent to a client (`downstream_rq_<class>xx`, `downstream_rq_completed`)
    /// in the connection manager's stats and in the listener's copy of them.
    #[inline]
    pub fn count_completed(&self, status: u16) {
        self.http.count_response(status);
        self.http.downstream_rq_completed.inc();
        self.lhttp.count_response(status);
    }
}

/// A worker's view of one snapshot. Requests hold an `Rc` to the view they started on, so a
/// swap never changes a request in flight.
pub struct WorkerSnap {
    /// The engine-wide compiled snapshot.
    pub compiled: Arc<Compiled>,
    /// Listeners by name.
    pub listeners: HashMap<Arc<str>, Rc<ListenerRt>>,
    /// Clusters, indexed like `compiled.clusters`.
    pub clusters: Vec<Rc<ClusterRt>>,
}

/// A connection not on the drain list.
pub(super) const NO_DRAIN_KEY: u32 = u32::MAX;

/// The wakers of the worker's connection tasks, woken all at once when draining starts. Each
/// connection is listed once, at its first idle wait, and leaves when it ends: waiting between
/// requests costs no registration (a `tokio::sync::Notify` waiter, locked in and out on every
/// idle wait, was ~180 instructions per request: callgrind). A listed connection that is busy
/// when draining starts gets a spurious wake, which its futures tolerate.
#[derive(Default)]
struct DrainWaiters {
    slots: Vec<Option<Waker>>,
    free: Vec<u32>,
}

impl DrainWaiters {
    fn insert(&mut self, w: Waker) -> u32 {
        match self.free.pop() {
            Some(k) => {
                self.slots[k as usize] = Some(w);
                k
            }
            None => {
                self.slots.push(Some(w));
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// Replaces the waker listed under `key` if `w` wakes another task. A free slot stays
    /// free: its key may already be handed out again.
    #[inline]
    fn update(&mut self, key: u32, w: &Waker) {
        if let Some(Some(old)) = self.slots.get_mut(key as usize) {
            if !old.will_wake(w) {
                *old = w.clone();
            }
        }
    }

    /// Gives back the room of a past spike of connections: trailing free slots are dropped
    /// (their keys leave the free list) and the lists shrink to twice what remains.
    fn trim(&mut self) {
        let before = self.slots.len();
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        let len = self.slots.len();
        if len < before {
            self.free.retain(|k| (*k as usize) < len);
        }
        if self.slots.capacity() > 2 * len.max(32) {
            self.slots.shrink_to(2 * len.max(32));
            self.free.shrink_to(2 * len.max(32));
        }
    }

    fn remove(&mut self, key: u32) {
        if let Some(slot) = self.slots.get_mut(key as usize) {
            if slot.take().is_some() {
                self.free.push(key);
            }
        }
    }

    fn wake_all(&self) {
        for w in self.slots.iter().flatten() {
            w.wake_by_ref();
        }
    }
}

/// Per-worker state.
pub struct Ctx {
    /// Worker index.
    pub id: usize,
    snap: RefCell<Rc<WorkerSnap>>,
    draining: Cell<bool>,
    /// Connection tasks to wake when draining starts, so idle keep-alive ones close at once.
    drain_waiters: RefCell<DrainWaiters>,
    stores: Arc<Stores>,
    /// Published to the engine.
    pub shared: Arc<Shared>,
    /// The engine's drain state ([`Ctx::drain_close`]).
    drain: Arc<DrainState>,
    /// The overload manager's actions as last heard.
    overload: Cell<OverloadNow>,
    /// Woken when they change (the accept loops pause and resume on it).
    overload_changed: tokio::sync::Notify,
    /// `global_downstream_max_connections`, shared by the workers.
    global: Arc<crate::overload::GlobalConnections>,
    /// `http1.*`.
    pub http1: Arc<Http1Stats>,
    http_scopes: RefCell<HashMap<String, Arc<HttpStats>>>,
    listener_scopes: RefCell<HashMap<String, Arc<ListenerStats>>>,
    listener_worker_scopes: RefCell<HashMap<String, Arc<ListenerWorkerStats>>>,
    listener_http_scopes: RefCell<HashMap<String, Arc<ListenerHttpStats>>>,
    cluster_scopes: RefCell<HashMap<String, Arc<ClusterScope>>>,
    hosts: RefCell<HashMap<(String, HostAddr), Rc<HostRt>>>,
    listener_addrs: RefCell<HashMap<Arc<str>, String>>,
    accepts: RefCell<HashMap<Arc<str>, JoinHandle<()>>>,
    date: RefCell<(u64, Vec<u8>)>,
    /// Recycled read buffers and write buffers: a request borrows them instead of allocating
    /// 16 KiB twice (saved ~2 mallocs and frees of 16 KiB per request, callgrind).
    read_bufs: RefCell<Vec<BytesMut>>,
    write_bufs: RefCell<Vec<Vec<u8>>>,
    /// Recycled heap slots of request futures.
    pub request_slots: super::slots::FutureSlots,
    /// Access log lines not yet handed to their writers.
    pub log_bufs: crate::accesslog::LogBufs,
    /// Recycled access log records (a malloc and free fewer per logged request; boxed, as a
    /// connection holds one).
    #[allow(clippy::vec_box)]
    log_records: RefCell<Vec<Box<crate::accesslog::Record>>>,
}

/// Buffers kept per worker for reuse; beyond this, returned buffers are freed.
const POOLED_BUFFERS: usize = 64;
/// Write buffers that grew past this (a large head) are freed rather than kept.
const MAX_POOLED_WRITE_BUF: usize = 2 * super::conn::BODY_CHUNK;
/// The most room a read buffer kept for reuse may have: a body piece's and a little over.
const MAX_POOLED_READ_BUF: usize = 2 * super::conn::BODY_CHUNK;

fn register<T: Scope + Default + 'static>(
    map: &RefCell<HashMap<String, Arc<T>>>,
    store: &crate::stats::Store,
    prefix: String,
) -> Arc<T> {
    map.borrow_mut()
        .entry(prefix.clone())
        .or_insert_with(|| {
            let s = Arc::new(T::default());
            let d: Arc<dyn Scope> = s.clone();
            store.register(prefix, &d);
            s
        })
        .clone()
}

impl Ctx {
    /// A worker context with an empty view of `compiled` (listeners come with `apply`).
    pub fn new(
        id: usize,
        stores: Arc<Stores>,
        shared: Arc<Shared>,
        drain: Arc<DrainState>,
        global: Arc<crate::overload::GlobalConnections>,
        compiled: Arc<Compiled>,
    ) -> Rc<Ctx> {
        let empty = Rc::new(WorkerSnap {
            compiled,
            listeners: HashMap::new(),
            clusters: Vec::new(),
        });
        let http1 = Arc::new(Http1Stats::default());
        let scope: Arc<dyn Scope> = http1.clone();
        stores.stats.register("http1.".to_string(), &scope);
        let fs = Arc::new(crate::stats::FsStats::default());
        let scope: Arc<dyn Scope> = fs.clone();
        stores.stats.register("filesystem.".to_string(), &scope);
        Rc::new(Ctx {
            id,
            http1,
            snap: RefCell::new(empty),
            draining: Cell::new(false),
            drain_waiters: RefCell::default(),
            stores,
            shared,
            drain,
            overload: Cell::default(),
            overload_changed: tokio::sync::Notify::new(),
            global,
            http_scopes: RefCell::default(),
            listener_scopes: RefCell::default(),
            listener_worker_scopes: RefCell::default(),
            listener_http_scopes: RefCell::default(),
            cluster_scopes: RefCell::default(),
            hosts: RefCell::default(),
            listener_addrs: RefCell::default(),
            accepts: RefCell::default(),
            date: RefCell::new((0, Vec::new())),
            read_bufs: RefCell::default(),
            write_bufs: RefCell::default(),
            request_slots: Default::default(),
            log_bufs: crate::accesslog::LogBufs::new(fs),
            log_records: RefCell::default(),
        })
    }

    /// A fresh access log record for a request that began at `start`.
    pub fn take_log_record(&self, start: Instant) -> Box<crate::accesslog::Record> {
        match self.log_records.borrow_mut().pop() {
            Some(mut r) => {
                *r = crate::accesslog::Record::new(start);
                r
            }
            None => Box::new(crate::accesslog::Record::new(start)),
        }
    }

    /// Gives a written record back for reuse. What it holds goes now: the request's head
    /// shares the connection's read buffer, which cannot be reused in place while it is held.
    pub fn put_log_record(&self, mut r: Box<crate::accesslog::Record>) {
        r.request = None;
        r.response = None;
        let mut pool = self.log_records.borrow_mut();
        if pool.len() < POOLED_BUFFERS {
            pool.push(r);
        }
    }

    /// The current snapshot view.
    #[inline]
    pub fn current(&self) -> Rc<WorkerSnap> {
        self.snap.borrow().clone()
    }

    /// Whether `snap` is still the worker's current snapshot.
    #[inline]
    pub fn is_current(&self, snap: &Rc<WorkerSnap>) -> bool {
        Rc::ptr_eq(&self.snap.borrow(), snap)
    }

    /// Whether a response written now on `l` ends its connection for a drain, as Envoy's
    /// connection manager asks its drain decision at each response head: health checks fail
    /// (`/healthcheck/fail`) and the listener's `drain_type` is DEFAULT, the server drains
    /// (`/drain_listeners`, shutdown) or a new snapshot removed the listener. A drain closes
    /// every response's connection under `--drain-strategy immediate` and before the process
    /// exits, and under `gradual` (Envoy's default) with a chance that grows over the drain
    /// time.
    #[inline]
    pub fn drain_close(&self, l: &ListenerRt) -> bool {
        let f = self.drain.get();
        if f & DrainState::HEALTH_CHECK_FAILED != 0
            && l.c.cfg.drain_type == crate::config::DrainType::Default
        {
            return true;
        }
        if f & DrainState::DRAINING == 0 && !l.removal.draining() {
            return false;
        }
        self.drain_decision(f, l)
    }

    /// [`Ctx::drain_close`] once a drain is under way.
    #[cold]
    #[inline(never)]
    fn drain_decision(&self, f: u8, l: &ListenerRt) -> bool {
        // The worker has stopped its listeners: its connections end after their response,
        // which says so, whatever the strategy.
        if self.draining.get() {
            return true;
        }
        let gradual = f & DrainState::GRADUAL != 0;
        let now = super::clock::now();
        let by_server = f & DrainState::DRAINING != 0
            && (!gradual
                || f & DrainState::SHUTDOWN != 0
                || self
                    .drain
                    .gradual_close(now.saturating_duration_since(self.drain.started())));
        by_server
            || l.removal.since.get().is_some_and(|since| {
                !gradual
                    || self
                        .drain
                        .gradual_close(now.saturating_duration_since(since))
            })
    }

    /// Starts the drain of a listener a snapshot removed; once the drain time has passed, its
    /// idle connections are closed.
    fn remove_listener(self: &Rc<Self>, removal: Rc<Removal>) {
        removal.state.set(Removal::DRAINING);
        removal.since.set(Some(super::clock::now()));
        let ctx = self.clone();
        let after = self.drain.drain_time();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(after).await;
            removal.state.set(Removal::CLOSED);
            ctx.drain_waiters.borrow().wake_all();
        });
    }

    /// Whether the worker is draining.
    #[inline]
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    fn host(
        &self,
        cluster: &str,
        a: HostAddr,
        outlier: Option<&OutlierState>,
        keep: &mut HashMap<(String, HostAddr), Rc<HostRt>>,
    ) -> Rc<HostRt> {
        let key = (cluster.to_string(), a);
        let monitor = outlier.map(|o| o.monitor(a.addr));
        let old = self.hosts.borrow().get(&key).cloned();
        let h = match old {
            // A host kept from before counts into its cluster's outlier detector.
            Some(h)
                if match (&h.outlier, &monitor) {
                    (None, None) => true,
                    (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                    _ => false,
                } =>
            {
                h
            }
            // Its cluster's detector is another now (Envoy builds a changed cluster's hosts
            // anew): a new host, with a new pool, whose stats go on.
            Some(h) => Rc::new(HostRt::new(a, h.stats.clone(), monitor)),
            None => {
                let stats = Arc::new(HostStats::default());
                let d: Arc<dyn Scope> = stats.clone();
                let HostAddr {
                    addr,
                    weight,
                    endpoint,
                } = a;
                self.stores
                    .hosts
                    .register(format!("{cluster}\0{addr}\0{weight}\0{endpoint}\0"), &d);
                Rc::new(HostRt::new(a, stats, monitor))
            }
        };
        keep.insert(key, h.clone());
        h
    }

    /// Switches to `compiled`, starting and stopping accept loops as listed.
    pub fn apply(
        self: &Rc<Self>,
        compiled: Arc<Compiled>,
        add: Vec<(Arc<str>, std::net::TcpListener, String)>,
        remove: Vec<Arc<str>>,
    ) {
        for name in &remove {
            if let Some(h) = self.accepts.borrow_mut().remove(name) {
                h.abort();
            }
            self.listener_addrs.borrow_mut().remove(name);
        }
        for (name, sock, stat_addr) in add {
            self.listener_addrs
                .borrow_mut()
                .insert(name.clone(), stat_addr);
            if self.draining.get() {
                continue;
            }
            match TcpListener::from_std(sock) {
                Ok(l) => {
                    let h = tokio::task::spawn_local(accept_loop(self.clone(), name.clone(), l));
                    if let Some(old) = self.accepts.borrow_mut().insert(name, h) {
                        old.abort();
                    }
                }
                Err(e) => eprintln!("pyproxy: worker {}: listener {name}: {e}", self.id),
            }
        }
        let mut keep_hosts = HashMap::new();
        let mut clusters = Vec::with_capacity(compiled.clusters.len());
        let before = self.current();
        let mut new_cluster_scopes = HashMap::new();
        for c in &compiled.clusters {
            let name = &c.cfg.name;
            let scope: Arc<ClusterScope> = register(
                &self.cluster_scopes,
                &self.stores.stats,
                format!("cluster.{name}."),
            );
            new_cluster_scopes.insert(format!("cluster.{name}."), scope.clone());
            // Hosts come from the snapshot (a DNS cluster was resolved again when it compiled);
            // a host with the same cluster, address and weight keeps its pool and stats.
            let hosts = c
                .hosts
                .iter()
                .map(|a| self.host(name, *a, c.outlier.as_deref(), &mut keep_hosts))
                .collect();
            // Envoy keeps a cluster an update leaves as it was, hosts and all: its membership
            // changes only if its hosts did. A new or changed cluster starts from none, so
            // its first hosts are a change if there are any.
            let changed = match before.clusters.iter().find(|o| o.cfg.cfg.name == *name) {
                Some(o) if o.cfg.cfg == c.cfg => !o.same_hosts(&c.hosts),
                _ => !c.hosts.is_empty(),
            };
            clusters.push(Rc::new(ClusterRt::new(
                c.clone(),
                scope,
                hosts,
                self.id == 0,
                changed,
            )));
        }
        let mut listeners = HashMap::new();
        let mut new_http = HashMap::new();
        let mut new_lis = HashMap::new();
        let mut new_lw = HashMap::new();
        let mut new_lh = HashMap::new();
        for l in &compiled.listeners {
            let Some(addr) = self.listener_addrs.borrow().get(&l.name).cloned() else {
                continue;
            };
            let http: Arc<HttpStats> = register(
                &self.http_scopes,
                &self.stores.stats,
                format!("http.{}.", l.cfg.hcm.stat_prefix),
            );
            let stats: Arc<ListenerStats> = register(
                &self.listener_scopes,
                &self.stores.stats,
                format!("listener.{addr}."),
            );
            new_http.insert(format!("http.{}.", l.cfg.hcm.stat_prefix), http.clone());
            let wp = format!("listener.{addr}.worker_{}.", self.id);
            let worker: Arc<ListenerWorkerStats> =
                register(&self.listener_worker_scopes, &self.stores.stats, wp.clone());
            new_lis.insert(format!("listener.{addr}."), stats.clone());
            new_lw.insert(wp, worker.clone());
            let lp = format!("listener.{addr}.http.{}.", l.cfg.hcm.stat_prefix);
            let lhttp: Arc<ListenerHttpStats> =
                register(&self.listener_http_scopes, &self.stores.stats, lp.clone());
            new_lh.insert(lp, lhttp.clone());
            listeners.insert(
                l.name.clone(),
                Rc::new(ListenerRt {
                    c: l.clone(),
                    http,
                    stats,
                    worker,
                    lhttp,
                    shared: self.shared.clone(),
                    // The same listener (by name) as before keeps its removal state.
                    removal: before
                        .listeners
                        .get(&l.name)
                        .map(|o| o.removal.clone())
                        .unwrap_or_default(),
                }),
            );
        }
        *self.cluster_scopes.borrow_mut() = new_cluster_scopes;
        *self.http_scopes.borrow_mut() = new_http;
        *self.listener_scopes.borrow_mut() = new_lis;
        *self.listener_worker_scopes.borrow_mut() = new_lw;
        *self.listener_http_scopes.borrow_mut() = new_lh;
        *self.hosts.borrow_mut() = keep_hosts;
        for (name, l) in &before.listeners {
            if !listeners.contains_key(name) {
                self.remove_listener(l.removal.clone());
            }
        }
        *self.snap.borrow_mut() = Rc::new(WorkerSnap {
            compiled,
            listeners,
            clusters,
        });
    }

    /// Replaces the hosts of a DNS cluster in the current view: those resolved for the
    /// compiled cluster `id` (an answer for one an apply has since replaced is dropped; the
    /// new one was resolved as it compiled, and its checks look at its own hosts).
    pub fn set_hosts(&self, cluster: &str, id: usize, hosts: &[HostAddr]) {
        let snap = self.current();
        let Some(c) = snap
            .clusters
            .iter()
            .find(|c| c.cfg.cfg.name == cluster && Arc::as_ptr(&c.cfg) as usize == id)
        else {
            return;
        };
        // The same hosts in another order (DNS answers rotate), or an answer an apply has
        // already taken: no change.
        if c.same_hosts(hosts) {
            return;
        }
        let mut keep = HashMap::new();
        let new: Vec<_> = hosts
            .iter()
            .map(|a| self.host(cluster, *a, c.cfg.outlier.as_deref(), &mut keep))
            .collect();
        let mut all = self.hosts.borrow_mut();
        all.retain(|(c, _), _| c != cluster);
        all.extend(keep);
        drop(all);
        c.set_hosts(new);
    }

    /// Rebuilds the balancer of the cluster whose health check or outlier detector this is,
    /// in the current view.
    pub fn set_health(&self, state: usize) {
        let snap = self.current();
        for c in &snap.clusters {
            let is = |p: usize| p == state;
            if c.cfg
                .health
                .as_ref()
                .is_some_and(|h| is(Arc::as_ptr(h) as usize))
                || c.cfg
                    .outlier
                    .as_ref()
                    .is_some_and(|o| is(Arc::as_ptr(o) as usize))
            {
                c.refresh_health();
            }
        }
    }

    /// Drains the pools of the host at `addr` of the cluster whose outlier state is at
    /// `state` (an ejection), in the current view.
    pub fn drain_host(&self, state: usize, addr: std::net::SocketAddr) {
        let snap = self.current();
        for c in &snap.clusters {
            if c.cfg
                .outlier
                .as_ref()
                .is_some_and(|o| Arc::as_ptr(o) as usize == state)
            {
                for h in c.hosts.borrow().hosts.iter().filter(|h| h.addr == addr) {
                    for p in h.pools() {
                        p.drain();
                    }
                }
            }
        }
    }

    /// Stops accepting and asks idle connections to close.
    pub fn drain(&self) {
        self.draining.set(true);
        for (_, h) in self.accepts.borrow_mut().drain() {
            h.abort();
        }
        self.drain_waiters.borrow().wake_all();
    }

    /// Keeps `waker`'s task (a connection's) on the list woken when draining starts, under
    /// `*key` ([`NO_DRAIN_KEY`]: not yet listed). A task's waker stays the same, so after the
    /// first call this is a compare; the connection leaves with [`Ctx::unwatch_drain`].
    #[inline]
    pub(super) fn watch_drain(&self, key: &mut u32, waker: &Waker) {
        let mut w = self.drain_waiters.borrow_mut();
        if *key == NO_DRAIN_KEY {
            *key = w.insert(waker.clone());
        } else {
            w.update(*key, waker);
        }
    }

    /// Takes a connection off the drain list (a no-op for [`NO_DRAIN_KEY`]).
    pub(super) fn unwatch_drain(&self, key: u32) {
        if key != NO_DRAIN_KEY {
            // The worker may be tearing down; a list already borrowed is left as it is.
            if let Ok(mut w) = self.drain_waiters.try_borrow_mut() {
                w.remove(key);
            }
        }
    }

    /// Closes every idle upstream connection.
    pub fn close_pools(&self) {
        for h in self.hosts.borrow().values() {
            for p in h.pools() {
                p.clear();
            }
        }
    }

    /// A read buffer from the worker's pool, or a new one of `READ_CHUNK` bytes; readers
    /// reserve the room they need (`read_more`).
    #[inline]
    pub fn take_read_buf(&self) -> BytesMut {
        self.read_bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(super::conn::READ_CHUNK))
    }

    /// Returns a read buffer its owner is done with; bytes still in it are dropped. One with
    /// no room (`BytesMut::new()`, or a buffer whose every byte was split off) or with more
    /// room than `MAX_POOLED_READ_BUF` (a body read grew it) is freed instead.
    #[inline]
    pub fn put_read_buf(&self, mut b: BytesMut) {
        b.clear();
        let mut pool = self.read_bufs.borrow_mut();
        if (1..=MAX_POOLED_READ_BUF).contains(&b.capacity()) && pool.len() < POOLED_BUFFERS {
            pool.push(b);
        }
    }

    /// An empty write buffer.
    #[inline]
    pub fn take_write_buf(&self) -> Vec<u8> {
        self.write_bufs.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a write buffer for reuse.
    #[inline]
    pub fn put_write_buf(&self, mut v: Vec<u8>) {
        let mut pool = self.write_bufs.borrow_mut();
        if v.capacity() <= MAX_POOLED_WRITE_BUF && pool.len() < POOLED_BUFFERS {
            v.clear();
            pool.push(v);
        }
    }

    /// The current `date` header value (IMF-fixdate), re-rendered once per second.
    #[inline]
    pub fn date(&self) -> std::cell::Ref<'_, Vec<u8>> {
        let now = SystemTime::now();
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.date.borrow().0 != secs {
            *self.date.borrow_mut() = (secs, httpdate::fmt_http_date(now).into_bytes());
        }
        std::cell::Ref::map(self.date.borrow(), |d| &d.1)
    }
}

impl Ctx {
    /// The overload manager's actions changed.
    pub fn set_overload(&self, now: OverloadNow) {
        let before = self.overload.replace(now);
        self.overload_changed.notify_waiters();
        // Idle connections work their deadline out again under the new scale.
        if (before.timer_scale, before.conn_idle) != (now.timer_scale, now.conn_idle) {
            self.drain_waiters.borrow().wake_all();
        }
    }

    /// The overload manager's actions as last heard.
    #[inline]
    pub fn overload(&self) -> OverloadNow {
        self.overload.get()
    }

    /// Whether a connection just accepted on `name` is to be served: the overload manager's
    /// `reject_incoming_connections` and the global connection limit may refuse it (counted
    /// on the listener; it is then closed at once, as Envoy closes it).
    fn admit(&self, name: &str) -> bool {
        // The global limit first, as Envoy's listener checks it.
        let refused = if !self.global.admit() {
            Some(false)
        } else if OverloadNow::draw(self.overload.get().reject) {
            Some(true)
        } else {
            None
        };
        let Some(reject) = refused else {
            return true;
        };
        if let Some(l) = self.current().listeners.get(name) {
            if reject {
                l.stats.downstream_cx_overload_reject.inc();
            } else {
                l.stats.downstream_global_cx_overflow.inc();
            }
        }
        // Closed at once: a client that then writes gets a reset, as from Envoy.
        false
    }
}

async fn accept_loop(ctx: Rc<Ctx>, name: Arc<str>, l: TcpListener) {
    loop {
        // The overload manager's `stop_accepting_connections`: new connections wait in the
        // kernel's queue until it ends. A change of the actions ends the wait for a
        // connection, so that the loop looks again (a waiter registered per accepted
        // connection, not per request).
        let changed = ctx.overload_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if ctx.overload.get().stop_accepting {
            changed.await;
            continue;
        }
        let accepted = tokio::select! {
            biased;
            r = l.accept() => r,
            () = &mut changed => continue,
        };
        match accepted {
            Ok((s, peer)) => {
                if ctx.admit(&name) {
                    tokio::task::spawn_local(super::conn::serve(
                        ctx.clone(),
                        name.clone(),
                        s,
                        peer,
                    ));
                }
            }
            // Out of file descriptors or similar: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Once a second: closes upstream connections idle past their cluster's idle timeout, and
/// drops those their upstream closed.
pub async fn housekeeping(ctx: Rc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        ctx.request_slots.trim();
        ctx.drain_waiters.borrow_mut().trim();
        let snap = ctx.current();
        let now = Instant::now();
        for c in &snap.clusters {
            let idle = c.cfg.cfg.idle_timeout_ms;
            let max_idle = (idle > 0).then(|| Duration::from_millis(idle));
            let set = c.hosts.borrow().clone();
            for h in &set.hosts {
                for p in h.pools() {
                    let n = p.sweep(now, max_idle);
                    c.stats.s.upstream_cx_idle_timeout.add(n as u64);
                }
            }
        }
    }
}

/// Hands the worker's access log lines to their writers every `--file-flush-interval-msec`.
pub async fn flush_logs(ctx: Rc<Ctx>) {
    loop {
        let ms = crate::accesslog::sink::flush_interval_ms();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ctx.log_bufs.flush_by_timer();
    }
}

#[cfg(test)]
mod tests {
    use super::DrainWaiters;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn drain_wakes_every_listed_connection_and_none_that_left() {
        let mut w = DrainWaiters::default();
        let (a, wa) = counting();
        let (b, wb) = counting();
        let (c, wc) = counting();
        let ka = w.insert(wa.clone());
        let kb = w.insert(wb);
        w.remove(kb);
        // The slot of a connection that left is reused, and the waker it held released.
        let kc = w.insert(wc);
        assert_eq!(kc, kb);
        assert_eq!(Arc::strong_count(&b), 1);
        // Removing twice frees the slot once.
        w.remove(kc);
        w.remove(kc);
        assert_eq!(w.free, vec![kc]);
        let kc = w.insert(counting().1);
        w.update(kc, &Waker::from(c.clone()));
        // Listing the same waker again keeps the one held.
        w.update(ka, &wa);
        assert_eq!(Arc::strong_count(&a), 3);
        w.wake_all();
        assert_eq!(a.0.load(SeqCst), 1);
        assert_eq!(b.0.load(SeqCst), 0);
        assert_eq!(c.0.load(SeqCst), 1);
        // A freed slot is not filled by an update: its key may be someone else's next.
        w.remove(kc);
        w.update(kc, &wa);
        assert!(w.slots[kc as usize].is_none());
        assert_eq!(w.insert(counting().1), kc);
    }

    #[test]
    fn trim_gives_back_the_room_of_a_spike() {
        let mut w = DrainWaiters::default();
        let keys: Vec<u32> = (0..1000).map(|_| w.insert(counting().1)).collect();
        // All but the 10th leave; then the list keeps the slots up to it.
        for k in &keys {
            if *k != 9 {
                w.remove(*k);
            }
        }
        w.trim();
        assert_eq!(w.slots.len(), 10);
        assert!(w.slots.capacity() <= 64);
        let mut free = w.free.clone();
        free.sort_unstable();
        assert_eq!(free, (0..9).collect::<Vec<u32>>());
        // Keys handed out after the trim are in range and distinct.
        let a = w.insert(counting().1);
        let b = w.insert(counting().1);
        assert!(a < 10 && b < 10 && a != b);
        for k in 0..20 {
            w.remove(k);
        }
        w.trim();
        assert!(w.slots.is_empty() && w.free.is_empty());
    }
}
