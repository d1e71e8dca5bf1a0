//! Active health checking: Envoy's cluster `health_checks` (one HTTP or TCP checker).
//!
//! As in Envoy, checks run off the workers: one thread (`pyproxy-hc`) with its own event loop
//! runs a session per host of every cluster that has a health check. A session's result
//! changes the host's flags in the cluster's [`HealthState`], which is shared (it lives in the
//! compiled cluster and is kept across applies that leave the cluster as it was); when a host
//! turns healthy or unhealthy the thread tells every worker, which rebuilds its balancer over
//! the healthy hosts (`ClusterRt::refresh_health`). Requests never wait on a check, and a
//! cluster without a health check pays nothing.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[cfg(test)]
use crate::config::HeaderAdd;
use crate::config::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use crate::http1::body::{Decoded, Decoder};
use crate::http1::codec::response_framing;
use crate::http1::head::parse_response;
use crate::snapshot::{Compiled, HostAddr};
use crate::stats::{Scope, Visitor};
use crate::upstream::outlier::{Kind, OutlierState};
use crate::worker::{Cmd, Stores};

crate::stat_scope! {
    /// `cluster.<name>.health_check.*`.
    pub struct HealthStats {
        counters { attempt, success, failure, network_failure, passive_failure, verify_cluster }
        gauges { healthy, degraded }
        histograms {}
    }
}

impl Scope for HealthStats {
    fn visit(&self, v: &mut dyn Visitor) {
        self.visit_declared(v);
    }
}

/// A host's health flags (Envoy's `Host::HealthFlag`s that active checking sets).
pub mod flag {
    /// `/failed_active_hc`: out of the balancer (also a host not yet checked).
    pub const FAILED: u8 = 1;
    /// `/failed_outlier_check`: ejected by outlier detection (not kept in the health check's
    /// map: the cluster's outlier state has it).
    pub const OUTLIER: u8 = 2;
    /// `/degraded_active_hc`: the upstream said `x-envoy-degraded`.
    pub const DEGRADED: u8 = 4;
    /// `/active_hc_timeout`: a failed host whose latest check timed out.
    pub const TIMEOUT: u8 = 8;
    /// `/excluded_via_immediate_hc_fail`: a proxied response said
    /// `x-envoy-immediate-health-check-fail` (failed too, until its checks pass again).
    pub const EXCLUDED: u8 = 16;
}

/// A host's flags before its first check: failed (so not picked while others are healthy).
const UNCHECKED: u8 = flag::FAILED;

/// One cluster's health check and what it found, shared by the checker thread (the only
/// writer), the workers and the admin.
#[derive(Debug)]
pub struct HealthState {
    /// The check.
    pub cfg: HealthCheck,
    /// The cluster's name (the HTTP check's default `host`).
    pub cluster: Arc<str>,
    /// `health_check.*`.
    pub stats: Arc<HealthStats>,
    /// Each checked host's flags.
    flags: Mutex<HashMap<SocketAddr, u8>>,
    /// The cluster has made a connection for a request: checks leave the no-traffic interval.
    pub traffic: AtomicBool,
    /// The checker thread, for a worker's passive failure (set once the thread has the state).
    checker: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<HcCmd>>,
}

impl HealthState {
    /// A state with every host unchecked.
    pub fn new(cfg: HealthCheck, cluster: Arc<str>) -> HealthState {
        HealthState {
            cfg,
            cluster,
            stats: Arc::default(),
            flags: Mutex::default(),
            traffic: AtomicBool::new(false),
            checker: std::sync::OnceLock::new(),
        }
    }

    /// The state of a changed check for a cluster of the same name: its stats go on (as the
    /// cluster's other stats do), and its hosts start as the old check last found them, so
    /// that requests are not sent to hosts known to be down while the new checks begin.
    pub fn succeed(cfg: HealthCheck, old: &HealthState) -> HealthState {
        HealthState {
            cfg,
            cluster: old.cluster.clone(),
            stats: old.stats.clone(),
            flags: Mutex::new(old.lock().clone()),
            traffic: AtomicBool::new(old.traffic.load(Ordering::Relaxed)),
            checker: std::sync::OnceLock::new(),
        }
    }

    /// A host's flags (unchecked for one the checker has not seen).
    pub fn flags(&self, addr: SocketAddr) -> u8 {
        self.lock().get(&addr).copied().unwrap_or(UNCHECKED)
    }

    /// Whether every one of `hosts` has had its first check.
    pub fn checked(&self, hosts: &[HostAddr]) -> bool {
        let m = self.lock();
        hosts.iter().all(|h| m.contains_key(&h.addr))
    }

    /// A proxied response from `addr` said `x-envoy-immediate-health-check-fail`: the checker
    /// fails and excludes the host (its thread writes the flags and stats).
    #[cold]
    pub fn passive_fail(&self, addr: SocketAddr) {
        if let Some(tx) = self.checker.get() {
            let _ = tx.send(HcCmd::PassiveFail {
                state: self as *const HealthState as usize,
                addr,
            });
        }
    }

    /// Notes that the cluster carries requests (a connection was made for one).
    #[inline]
    pub fn note_traffic(&self) {
        if !self.traffic.load(Ordering::Relaxed) {
            self.traffic.store(true, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, u8>> {
        self.flags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets a host's flags, changed from `before`: when its being picked or degraded changed,
    /// the gauges follow and every worker rebuilds its balancer.
    fn record(&self, addr: SocketAddr, before: u8, f: u8, workers: &Workers) {
        self.lock().insert(addr, f);
        if (before ^ f) & (flag::FAILED | flag::DEGRADED) != 0 {
            self.publish();
            tell(&workers.borrow(), self as *const HealthState as usize);
        }
    }

    /// Keeps only `hosts`' flags and sets the gauges from them.
    fn retain(&self, hosts: &HashSet<SocketAddr>) {
        self.lock().retain(|a, _| hosts.contains(a));
        self.publish();
    }

    /// `health_check.healthy` and `.degraded` for the checked hosts (one not yet checked is
    /// neither).
    fn publish(&self) {
        let m = self.lock();
        let healthy = m.values().filter(|f| *f & flag::FAILED == 0).count();
        let degraded = m.values().filter(|f| *f & flag::DEGRADED != 0).count();
        self.stats.healthy.set(healthy as u64);
        // Shown once a host was degraded (Envoy creates it used then).
        if degraded > 0 || self.stats.degraded.used() {
            self.stats.degraded.set(degraded as u64);
        }
    }
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Healthy {
        degraded: bool,
    },
    /// A status it does not take: unhealthy at once.
    Active,
    /// A retriable status: counted toward `unhealthy_threshold`, not as a network failure.
    Retriable,
    /// No answer (connect failure, a reset, a broken response): toward the threshold.
    Network,
    /// No answer within the timeout: toward the threshold.
    Timeout,
}

/// The checker thread's orders.
pub enum HcCmd {
    /// A new snapshot: check its clusters' hosts; the sender hears once the thread has taken
    /// it (its states know the thread and their stats are shown).
    Snapshot(Arc<Compiled>, std::sync::mpsc::SyncSender<()>),
    /// New hosts of a STRICT_DNS cluster (`id`: its compiled cluster).
    Hosts {
        id: usize,
        hosts: Arc<Vec<HostAddr>>,
    },
    /// The workers to tell of changes (given once they are started; each is told of every
    /// cluster then, for what changed while they were being built).
    Workers(Vec<tokio::sync::mpsc::UnboundedSender<Cmd>>),
    /// A worker saw `x-envoy-immediate-health-check-fail` from `addr` of the cluster whose
    /// state is at `state` (looked up among the checked clusters; gone: ignored).
    PassiveFail { state: usize, addr: SocketAddr },
    /// A consecutive-failure counter of `addr` reached its threshold, in the cluster whose
    /// outlier state is at `state` (gone: ignored).
    Outlier {
        state: usize,
        addr: SocketAddr,
        kind: Kind,
    },
    /// Stop every session and end the thread.
    Stop,
}

/// The checker thread: its orders' sender and its handle.
pub struct Checker {
    tx: tokio::sync::mpsc::UnboundedSender<HcCmd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checker {
    /// Starts the thread; `stores` shows each cluster's `health_check.*`.
    pub fn spawn(stores: Arc<Stores>) -> std::io::Result<Checker> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // The thread's own sender, which it hands to each state it checks (for passive
        // failures); the thread ends on `Stop`, not when the senders are gone.
        let me = tx.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("pyproxy-hc".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, run(rx, me, stores));
            })?;
        Ok(Checker {
            tx,
            thread: Some(thread),
        })
    }

    /// Waits until every host of `compiled`'s checked clusters has had its first check, at
    /// most as long as those checks may take.
    pub fn wait_first_checks(&self, compiled: &Compiled) {
        let checked: Vec<_> = compiled
            .clusters
            .iter()
            .filter_map(|c| c.health.as_ref().map(|h| (h, &c.hosts)))
            .collect();
        let Some(longest) = checked
            .iter()
            .map(|(h, _)| h.cfg.timeout_ms + h.cfg.initial_jitter_ms)
            .max()
        else {
            return;
        };
        // A check ends by its timeout; the margin covers the thread's start.
        let deadline = std::time::Instant::now() + Duration::from_millis(longest + 1000);
        while !checked.iter().all(|(h, hosts)| h.checked(hosts))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Hands the thread a snapshot and waits until it has taken it: only then may a worker
    /// see it, so that a detector's first threshold crossing reaches the thread and its stats
    /// are shown from the first request on.
    pub fn snapshot(&self, compiled: &Arc<Compiled>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(HcCmd::Snapshot(compiled.clone(), tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Sends an order (dropped once the thread has ended).
    pub fn send(&self, cmd: HcCmd) {
        let _ = self.tx.send(cmd);
    }

    /// A sender for the DNS thread.
    pub fn sender(&self) -> tokio::sync::mpsc::UnboundedSender<HcCmd> {
        self.tx.clone()
    }

    /// Stops the sessions and waits for the thread.
    pub fn stop(&mut self) {
        let _ = self.tx.send(HcCmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cluster the thread checks, actively or passively.
struct Checked {
    state: Option<Arc<HealthState>>,
    outlier: Option<Arc<OutlierState>>,
    hosts: Vec<HostAddr>,
}

/// The workers' senders, given once they have started.
type Workers = Rc<RefCell<Vec<tokio::sync::mpsc::UnboundedSender<Cmd>>>>;

async fn run(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<HcCmd>,
    me: tokio::sync::mpsc::UnboundedSender<HcCmd>,
    stores: Arc<Stores>,
) {
    let workers: Workers = Rc::default();
    // Keyed by the compiled cluster (its address), as the DNS thread names it.
    let mut clusters: HashMap<usize, Checked> = HashMap::new();
    // (state, host) -> its session.
    let mut sessions: HashMap<(usize, SocketAddr), tokio::task::JoinHandle<()>> = HashMap::new();
    // Outlier state -> its interval timer.
    let mut tickers: HashMap<usize, tokio::task::JoinHandle<()>> = HashMap::new();
    // Stats shown (a state kept or succeeded keeps its cluster's, registered once).
    let mut registered: Vec<std::sync::Weak<dyn Scope>> = Vec::new();
    while let Some(cmd) = rx.recv().await {
        let mut ack = None;
        match cmd {
            HcCmd::Stop => break,
            HcCmd::Workers(w) => {
                *workers.borrow_mut() = w;
                // What the checks found while the workers were being built (nothing is ejected
                // before a worker has carried a request).
                for k in clusters.values() {
                    if let Some(s) = &k.state {
                        tell(&workers.borrow(), Arc::as_ptr(s) as usize);
                    }
                }
                continue;
            }
            HcCmd::Snapshot(c, taken) => {
                ack = Some(taken);
                let mut next = HashMap::new();
                for cl in &c.clusters {
                    if cl.health.is_none() && cl.outlier.is_none() {
                        continue;
                    }
                    let id = Arc::as_ptr(cl) as usize;
                    // Its hosts as compiled (a STRICT_DNS cluster was resolved again then); the
                    // DNS thread sends later changes.
                    let hosts = cl.hosts.clone();
                    next.insert(
                        id,
                        Checked {
                            state: cl.health.clone(),
                            outlier: cl.outlier.clone(),
                            hosts,
                        },
                    );
                }
                clusters = next;
            }
            HcCmd::PassiveFail { state, addr } => {
                let Some(st) = clusters
                    .values()
                    .filter_map(|k| k.state.as_ref())
                    .find(|s| Arc::as_ptr(s) as usize == state)
                else {
                    continue;
                };
                // Envoy's passive failure: failed and excluded at once, whatever the
                // threshold, until healthy_threshold checks pass.
                let before = st.flags(addr);
                st.stats.failure.inc();
                st.stats.passive_failure.inc();
                st.record(
                    addr,
                    before,
                    before | flag::FAILED | flag::EXCLUDED,
                    &workers,
                );
                continue;
            }
            HcCmd::Outlier { state, addr, kind } => {
                let Some(o) = clusters
                    .values()
                    .filter_map(|k| k.outlier.as_ref())
                    .find(|o| Arc::as_ptr(o) as usize == state)
                else {
                    continue;
                };
                if o.on_consecutive(addr, kind, std::time::Instant::now()) {
                    tell_ejections(&workers.borrow(), o);
                }
                continue;
            }
            HcCmd::Hosts { id, hosts } => match clusters.get_mut(&id) {
                Some(k) => k.hosts = (*hosts).clone(),
                None => continue,
            },
        }
        registered.retain(|w| w.strong_count() > 0);
        let mut register = |name: &str, what: &str, stats: Arc<dyn Scope>| {
            if !registered
                .iter()
                .any(|w| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(&stats)))
            {
                stores
                    .stats
                    .register(format!("cluster.{name}.{what}."), &stats);
                registered.push(Arc::downgrade(&stats));
            }
        };
        let mut want = HashSet::new();
        let mut want_tickers = HashSet::new();
        for k in clusters.values() {
            let addrs: HashSet<SocketAddr> = k.hosts.iter().map(|h| h.addr).collect();
            if let Some(o) = &k.outlier {
                let _ = o.thread.set(me.clone());
                register(&o.cluster, "outlier_detection", o.stats.clone());
                let oid = Arc::as_ptr(o) as usize;
                if o.retain(&addrs) {
                    tell(&workers.borrow(), oid);
                }
                want_tickers.insert(oid);
                tickers.entry(oid).or_insert_with(|| {
                    tokio::task::spawn_local(ticker(o.clone(), workers.clone()))
                });
            }
            let Some(state) = &k.state else {
                continue;
            };
            let _ = state.checker.set(me.clone());
            let sid = Arc::as_ptr(state) as usize;
            register(&state.cluster, "health_check", state.stats.clone());
            state.retain(&addrs);
            for a in addrs {
                want.insert((sid, a));
                sessions.entry((sid, a)).or_insert_with(|| {
                    tokio::task::spawn_local(session(
                        state.clone(),
                        k.outlier.clone(),
                        a,
                        workers.clone(),
                    ))
                });
            }
        }
        sessions.retain(|key, task| {
            let keep = want.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        tickers.retain(|key, task| {
            let keep = want_tickers.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        if let Some(a) = ack {
            let _ = a.send(());
        }
    }
    for t in sessions.into_values().chain(tickers.into_values()) {
        t.abort();
    }
}

/// Tells every worker to rebuild the balancer of the cluster whose health or outlier state is
/// at `state` (each worker finds the cluster by that address).
fn tell(workers: &[tokio::sync::mpsc::UnboundedSender<Cmd>], state: usize) {
    for w in workers {
        let _ = w.send(Cmd::Health { state });
    }
}

/// Tells every worker of a change in an outlier detector: the pools of the hosts it ejected
/// are drained (Envoy closes an ejected host's connections), and the balancer rebuilt.
fn tell_ejections(workers: &[tokio::sync::mpsc::UnboundedSender<Cmd>], o: &OutlierState) {
    let state = o as *const OutlierState as usize;
    for addr in o.take_ejected() {
        for w in workers {
            let _ = w.send(Cmd::DrainHost { state, addr });
        }
    }
    tell(workers, state);
}

/// A cluster's outlier detection interval: Envoy's timer, every `interval`.
async fn ticker(state: Arc<OutlierState>, workers: Workers) {
    let every = Duration::from_millis(state.cfg.interval_ms.max(1));
    loop {
        tokio::time::sleep(every).await;
        if state.tick(std::time::Instant::now()) {
            tell_ejections(&workers.borrow(), &state);
        }
    }
}

/// A random whole number of ms below `n` (0 for 0).
fn below(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        fastrand::u64(0..n)
    }
}

/// One host's checks, for as long as it is in the cluster.
async fn session(
    state: Arc<HealthState>,
    outlier: Option<Arc<OutlierState>>,
    addr: SocketAddr,
    workers: Workers,
) {
    let cfg = &state.cfg;
    let initial = below(cfg.initial_jitter_ms);
    if initial > 0 {
        tokio::time::sleep(Duration::from_millis(initial)).await;
    }
    let mut conn: Option<TcpStream> = None;
    // An HTTP check sends the same request every time.
    let request = cfg.http.as_ref().map(|h| http_request(h, &state.cluster));
    let (mut healthy_run, mut unhealthy_run) = (0u32, 0u32);
    // The flags this session last wrote (none yet: its first check).
    let mut last: Option<u8> = None;
    let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
    loop {
        state.stats.attempt.inc();
        let verdict =
            match tokio::time::timeout(timeout, check(&state, request.as_deref(), addr, &mut conn))
                .await
            {
                Ok(v) => v,
                Err(_) => {
                    // The connection of a check that timed out is closed (Envoy's too).
                    conn = None;
                    Verdict::Timeout
                }
            };
        let before = state.flags(addr);
        // A passive failure since the last check starts the streaks over.
        if last.is_some_and(|l| l != before) {
            healthy_run = 0;
            unhealthy_run = 0;
        }
        let mut f = before;
        // Whether the host is now on its way to a change (a threshold not yet reached).
        let mut pending = false;
        match verdict {
            Verdict::Healthy { degraded } => {
                unhealthy_run = 0;
                if f & flag::FAILED != 0 {
                    healthy_run += 1;
                    // A host's first answer makes it healthy at once (Envoy's start-up rule).
                    // A threshold of 0 is never reached, as in Envoy.
                    if last.is_none() || healthy_run == cfg.healthy_threshold {
                        f &= !(flag::FAILED | flag::TIMEOUT | flag::EXCLUDED);
                        healthy_run = 0;
                    } else {
                        pending = true;
                    }
                }
                if degraded {
                    f |= flag::DEGRADED;
                } else {
                    f &= !flag::DEGRADED;
                }
                state.stats.success.inc();
            }
            Verdict::Active | Verdict::Retriable | Verdict::Network | Verdict::Timeout => {
                healthy_run = 0;
                // A failure leaves the degraded flag as it was (Envoy's does).
                if f & flag::FAILED == 0 {
                    unhealthy_run += 1;
                    if verdict == Verdict::Active || unhealthy_run == cfg.unhealthy_threshold {
                        f |= flag::FAILED;
                        unhealthy_run = 0;
                    } else {
                        pending = true;
                    }
                }
                // A failed host shows whether its latest check timed out.
                if f & flag::FAILED != 0 && verdict == Verdict::Timeout {
                    f |= flag::TIMEOUT;
                } else {
                    f &= !flag::TIMEOUT;
                }
                if matches!(verdict, Verdict::Network | Verdict::Timeout) {
                    state.stats.network_failure.inc();
                }
                state.stats.failure.inc();
            }
        }
        last = Some(f);
        state.record(addr, before, f, &workers);
        let now_failed = f & flag::FAILED != 0;
        let passed = matches!(verdict, Verdict::Healthy { .. });
        // A host this check passes (and finds healthy) is no outlier any more (Envoy's
        // `successful_active_health_check_uneject_host`); a failed check below the threshold
        // leaves it ejected.
        if let Some(o) = &outlier {
            if passed
                && !now_failed
                && o.cfg.successful_active_health_check_uneject_host
                && o.uneject(addr, std::time::Instant::now())
            {
                tell(&workers.borrow(), Arc::as_ptr(o) as usize);
            }
        }
        if !cfg.reuse_connection {
            conn = None;
        }
        let wait = interval(cfg, &state, passed, now_failed, pending);
        tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
    }
}

/// The wait before the next check (Envoy's choice of interval, then its jitter): by whether
/// the check passed and whether its streak has yet to reach its threshold (`pending`; the
/// envoy binary waits the edge intervals then, not after the change itself); until the
/// cluster carries requests, the no-traffic interval.
fn interval(
    cfg: &HealthCheck,
    state: &HealthState,
    passed: bool,
    host_failed: bool,
    pending: bool,
) -> u64 {
    let unhealthy = cfg.unhealthy_interval_ms.unwrap_or(cfg.interval_ms);
    let base = if !state.traffic.load(Ordering::Relaxed) {
        // The healthy one only after a pass that leaves a healthy host as it was.
        if passed && !pending && !host_failed {
            cfg.no_traffic_healthy_interval_ms
                .unwrap_or(cfg.no_traffic_interval_ms)
        } else {
            cfg.no_traffic_interval_ms
        }
    } else if !passed {
        if pending {
            cfg.unhealthy_edge_interval_ms.unwrap_or(unhealthy)
        } else {
            unhealthy
        }
    } else if pending {
        cfg.healthy_edge_interval_ms.unwrap_or(cfg.interval_ms)
    } else {
        cfg.interval_ms
    };
    let percent = u64::from(cfg.interval_jitter_percent) * base / 100;
    base + below(percent) + below(cfg.interval_jitter_ms)
}

/// One check of `addr`, on `conn` if it is open (else a new connection, kept there).
async fn check(
    state: &HealthState,
    request: Option<&[u8]>,
    addr: SocketAddr,
    conn: &mut Option<TcpStream>,
) -> Verdict {
    // A kept connection the upstream closed meanwhile is no failure: the check goes on a new
    // one, as Envoy's does.
    if let Some(s) = conn.as_ref() {
        let mut probe = [0u8; 1];
        match s.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => *conn = None,
        }
    }
    if conn.is_none() {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                *conn = Some(s);
            }
            Err(_) => return Verdict::Network,
        }
    }
    let Some(s) = conn.as_mut() else {
        return Verdict::Network;
    };
    let cfg = &state.cfg;
    let v = if let (Some(h), Some(req)) = (&cfg.http, request) {
        http_check(h, req, s).await
    } else if let Some(t) = &cfg.tcp {
        tcp_check(t, s).await
    } else {
        Ok((Verdict::Healthy { degraded: false }, false))
    };
    match v {
        Ok((v, keep)) => {
            if !keep {
                *conn = None;
            }
            v
        }
        Err(()) => {
            *conn = None;
            Verdict::Network
        }
    }
}

/// The request an HTTP check sends.
pub fn http_request(h: &HttpHealthCheck, cluster: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(h.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(h.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = h.host.as_deref().unwrap_or(cluster);
    // `host` can be neither added nor removed (the loader refuses both).
    let mut headers: Vec<(&str, String)> = vec![("host", host.to_string())];
    if !h.remove.iter().any(|r| r == "user-agent") {
        headers.push(("user-agent", "Envoy/HC".to_string()));
    }
    // An added header replaces one already there (`overwrite`); else `user-agent` (one of
    // Envoy's inline headers) is joined with a comma, and others go on lines of their own.
    for a in &h.add {
        let there = headers.iter_mut().find(|(n, _)| *n == a.name);
        match there {
            Some((_, v)) if a.overwrite => *v = a.value.clone(),
            Some((_, v)) if a.name == "user-agent" => {
                v.push(',');
                v.push_str(&a.value);
            }
            _ => headers.push((&a.name, a.value.clone())),
        }
    }
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn in_ranges(ranges: &[(u16, u16)], status: u16) -> bool {
    ranges.iter().any(|&(a, b)| a <= status && status < b)
}

/// An HTTP check: the verdict, and whether the connection can carry the next one.
async fn http_check(
    h: &HttpHealthCheck,
    request: &[u8],
    s: &mut TcpStream,
) -> Result<(Verdict, bool), ()> {
    s.write_all(request).await.map_err(|_| ())?;
    let mut buf = BytesMut::with_capacity(4096);
    let head = loop {
        if let Some(head) = parse_response(&mut buf, 64 * 1024).map_err(|_| ())? {
            if (100..200).contains(&head.status) {
                continue;
            }
            break head;
        }
        if s.read_buf(&mut buf).await.map_err(|_| ())? == 0 {
            return Err(());
        }
    };
    let framing =
        response_framing(h.method == "HEAD", head.status, &head.headers).map_err(|_| ())?;
    // The body is read and dropped, so the connection is at the next response.
    let mut dec = Decoder::new(framing);
    let mut open = true;
    loop {
        match dec.decode(&mut buf, usize::MAX).map_err(|_| ())? {
            Decoded::End => break,
            Decoded::Data(n) => {
                let _ = buf.split_to(n);
            }
            Decoded::NeedMore => {
                if s.read_buf(&mut buf).await.map_err(|_| ())? == 0 {
                    dec.on_eof().map_err(|_| ())?;
                    open = false;
                    break;
                }
            }
        }
    }
    let conn = crate::http1::codec::ConnectionTokens::of(&head.headers);
    let keep = open && buf.is_empty() && conn.keep_alive(head.minor);
    let status = head.status;
    let expected = if h.expected.is_empty() {
        status == 200
    } else {
        in_ranges(&h.expected, status)
    };
    // (`x-envoy-immediate-health-check-fail` on a check's response changes nothing in Envoy.)
    let v = if expected {
        Verdict::Healthy {
            degraded: head.headers.contains(b"x-envoy-degraded"),
        }
    } else if in_ranges(&h.retriable, status) {
        Verdict::Retriable
    } else {
        Verdict::Active
    };
    Ok((v, keep))
}

/// A TCP check: send, then every block back in order (not necessarily adjacent).
async fn tcp_check(t: &TcpHealthCheck, s: &mut TcpStream) -> Result<(Verdict, bool), ()> {
    if t.receive.is_empty() {
        // A connect is the check, and the connection is closed at once: Envoy sends nothing
        // then, not even a `send` given without `receive`.
        return Ok((Verdict::Healthy { degraded: false }, false));
    }
    if !t.send.is_empty() {
        s.write_all(&t.send).await.map_err(|_| ())?;
    }
    let mut got: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if matches_in_order(&got, &t.receive) {
            return Ok((Verdict::Healthy { degraded: false }, true));
        }
        let n = s.read(&mut chunk).await.map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        got.extend_from_slice(&chunk[..n]);
    }
}

/// Whether every block is found in `data`, each after the one before.
fn matches_in_order(data: &[u8], blocks: &[Vec<u8>]) -> bool {
    let mut at = 0;
    for b in blocks {
        match memchr::memmem::find(&data[at..], b) {
            Some(i) => at += i + b.len(),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> HttpHealthCheck {
        HttpHealthCheck {
            path: "/healthz".into(),
            method: "GET".into(),
            host: None,
            expected: Vec::new(),
            retriable: Vec::new(),
            add: vec![HeaderAdd {
                name: "x-check".into(),
                value: "1".into(),
                overwrite: false,
            }],
            remove: Vec::new(),
        }
    }

    #[test]
    fn the_http_request_names_the_cluster_as_host_by_default() {
        let req = http_request(&http(), "backend");
        assert_eq!(
            req,
            b"GET /healthz HTTP/1.1\r\nhost: backend\r\nuser-agent: Envoy/HC\r\nx-check: 1\r\n\r\n"
        );
        let mut h = http();
        h.host = Some("svc.local".into());
        h.remove = vec!["user-agent".into()];
        let req = String::from_utf8(http_request(&h, "backend")).unwrap();
        assert!(req.contains("host: svc.local\r\n"));
        assert!(!req.contains("user-agent"));
    }

    #[test]
    fn an_added_user_agent_joins_envoys_unless_it_overwrites() {
        let mut h = http();
        let ua = |overwrite| HeaderAdd {
            name: "user-agent".into(),
            value: "mine".into(),
            overwrite,
        };
        h.add = vec![ua(false)];
        let req = String::from_utf8(http_request(&h, "c")).unwrap();
        assert!(req.contains("user-agent: Envoy/HC,mine\r\n"), "{req}");
        h.add = vec![ua(true)];
        let req = String::from_utf8(http_request(&h, "c")).unwrap();
        assert!(req.contains("user-agent: mine\r\n"), "{req}");
    }

    #[test]
    fn the_next_interval_follows_envoys_choice() {
        let cfg = HealthCheck {
            timeout_ms: 10,
            interval_ms: 100,
            initial_jitter_ms: 0,
            interval_jitter_ms: 0,
            interval_jitter_percent: 0,
            unhealthy_interval_ms: Some(200),
            unhealthy_edge_interval_ms: Some(30),
            healthy_edge_interval_ms: Some(40),
            no_traffic_interval_ms: 1000,
            no_traffic_healthy_interval_ms: Some(2000),
            unhealthy_threshold: 3,
            healthy_threshold: 3,
            reuse_connection: true,
            http: Some(http()),
            tcp: None,
        };
        let state = HealthState::new(cfg.clone(), Arc::from("c"));
        // No traffic yet: the no-traffic intervals, whatever the check found.
        assert_eq!(interval(&cfg, &state, false, true, false), 1000);
        assert_eq!(interval(&cfg, &state, false, false, true), 1000);
        assert_eq!(interval(&cfg, &state, true, true, true), 1000);
        assert_eq!(interval(&cfg, &state, true, false, false), 2000);
        state.note_traffic();
        // (passed, host failed, streak pending)
        assert_eq!(interval(&cfg, &state, true, false, false), 100);
        assert_eq!(interval(&cfg, &state, true, true, true), 40);
        assert_eq!(interval(&cfg, &state, false, false, true), 30);
        assert_eq!(interval(&cfg, &state, false, true, false), 200);
        // Jitter adds below its bound.
        let jittered = HealthCheck {
            interval_jitter_ms: 50,
            interval_jitter_percent: 10,
            ..cfg
        };
        for _ in 0..100 {
            let w = interval(&jittered, &state, true, false, false);
            assert!((100..160).contains(&w), "{w}");
        }
    }

    #[test]
    fn tcp_blocks_match_in_order_not_adjacent() {
        let blocks = vec![b"po".to_vec(), b"ng".to_vec()];
        assert!(matches_in_order(b"xxpoyyng", &blocks));
        assert!(!matches_in_order(b"ngpo", &blocks));
        assert!(matches_in_order(b"anything", &[]));
    }

    #[test]
    fn status_ranges_end_before_their_end() {
        assert!(in_ranges(&[(200, 300)], 299));
        assert!(!in_ranges(&[(200, 300)], 300));
    }
}
