//! The engine: owns the workers, binds listener sockets, publishes snapshots, runs DNS
//! refresh, and answers the admin's reads. Every method is called from a control thread
//! (Python with the GIL released, or a test), never from a worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Snapshot;
use crate::snapshot::{compile_with, system_resolver, Compiled, Discovery, HostAddr, Resolver};
use crate::stats::render::{render, Format, RenderOptions};
use crate::stats::{StatKind, StatsSnapshot};
use crate::upstream::health::HcCmd;
use crate::worker::{Cmd, DrainState, Stores, Worker};
use crate::Error;

/// A listener's bound sockets: one per worker, all on the same port.
struct Bound {
    name: Arc<str>,
    requested: SocketAddr,
    bound: SocketAddr,
}

struct Dns {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

struct Running {
    workers: Vec<Worker>,
    compiled: Arc<Mutex<Arc<Compiled>>>,
    bound: Vec<Bound>,
    dns: Dns,
    /// The active health checks' thread.
    health: crate::upstream::health::Checker,
    /// The overload manager's thread.
    overload: crate::overload::Manager,
    /// When the drain of each listener removed by an apply ends (None: a drain time too long
    /// to reach); `listener_manager.total_listeners_draining` counts those still to come.
    drains_end: Vec<Option<Instant>>,
    /// When a drain stops the listeners (None: never, the drain time is too long to reach)
    /// and how many it stops (`listener_manager.listener_stopped` once that time has come).
    listeners_stop: Option<(Option<Instant>, u64)>,
    /// This run's drain state, which its workers read (a later run has its own, so a shutdown
    /// still draining never touches it).
    drain: Arc<DrainState>,
}

/// When a drain stops the listeners ([`Engine::drain_listeners`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// At once.
    Now,
    /// Once the drain time has passed (`/drain_listeners?graceful`).
    AfterDrainTime,
    /// Never: the connections drain, the listeners go on accepting (`skip_exit`).
    Never,
}

impl Running {
    /// Whether a drain has stopped the listeners by now.
    fn stopped(&self) -> bool {
        self.listeners_stop
            .is_some_and(|(at, _)| at.is_some_and(|at| at <= Instant::now()))
    }
}

/// Per-host figures for `/clusters`.
#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    /// Host address.
    pub addr: String,
    /// Envoy `load_balancing_weight`.
    pub weight: u32,
    /// Envoy's `hostname`: a STRICT_DNS host's endpoint name, empty for a STATIC one.
    pub hostname: String,
    /// Stat name (`cx_active`, `rq_total`, ...) to value, summed over workers.
    pub stats: Vec<(String, u64)>,
    /// Its flags (`upstream::health::flag`: the active health check's and the outlier
    /// ejection; 0: healthy or unchecked).
    pub health: u8,
    /// Its success rate (external, local origin) in outlier detection's last interval with
    /// enough requests; -1 where none.
    pub success_rate: [f64; 2],
}

/// One cluster for `/clusters`.
#[derive(Debug, Clone, Default)]
pub struct ClusterInfo {
    /// Cluster name.
    pub name: String,
    /// Its hosts, in config order.
    pub hosts: Vec<HostInfo>,
    /// Its outlier detector's success-rate figures, if it has one.
    pub outlier: Option<crate::upstream::outlier::ClusterRates>,
}

/// The data plane.
pub struct Engine {
    concurrency: usize,
    resolver: Resolver,
    stores: Arc<Stores>,
    started: Instant,
    state: Mutex<Option<Running>>,
    /// `cluster_manager.*` and `listener_manager.*` counters (the gauges are read off the
    /// running state).
    managers: Mutex<Managers>,
    /// The drain state of the current run, or of the next one before a start: health checks
    /// failing and the drain time carry over from one run to the next.
    drain: Mutex<Arc<DrainState>>,
}

/// What Envoy's cluster and listener managers count of config changes: every cluster and
/// listener of the first config is added, and each apply adds, modifies (same name, another
/// config) and removes by name, as CDS and LDS updates do.
#[derive(Debug, Default)]
struct Managers {
    cluster_added: u64,
    cluster_modified: u64,
    cluster_removed: u64,
    listener_added: u64,
    listener_modified: u64,
    listener_in_place_updated: u64,
    listener_removed: u64,
    /// Listeners added to workers: one per worker per added or modified listener.
    listener_create_success: u64,
}

impl Managers {
    /// Counts the change from `old` (none at start) to `new`, on `workers` workers; a listener
    /// not `bound` (a new one while the engine drains) was not added.
    fn count(
        &mut self,
        old: Option<&Compiled>,
        new: &Compiled,
        workers: usize,
        bound: &dyn Fn(&str) -> bool,
    ) {
        let clusters = by_name(
            old.map_or(&[][..], |o| &o.clusters[..]),
            &new.clusters,
            |c| (&c.cfg.name, &c.cfg),
        );
        self.cluster_added += clusters.added.len() as u64;
        self.cluster_modified += clusters.modified.len() as u64;
        self.cluster_removed += clusters.removed;
        let mut listeners = by_name(
            old.map_or(&[][..], |o| &o.listeners[..]),
            &new.listeners,
            |l| (&l.cfg.name, &l.cfg),
        );
        listeners.added.retain(|l| bound(&l.cfg.name));
        listeners.modified.retain(|(_, l)| bound(&l.cfg.name));
        let added = listeners.added.len();
        self.listener_added += added as u64;
        self.listener_modified += listeners.modified.len() as u64;
        // Only its filter chain (the connection manager) changed: Envoy updates such a
        // listener in place, keeping its sockets and connections.
        self.listener_in_place_updated += listeners
            .modified
            .iter()
            .filter(|(a, b)| {
                let (a, b) = (&a.cfg, &b.cfg);
                a.address == b.address
                    && a.port == b.port
                    && a.per_connection_buffer_limit_bytes == b.per_connection_buffer_limit_bytes
                    && a.drain_type == b.drain_type
            })
            .count() as u64;
        self.listener_create_success += ((added + listeners.modified.len()) * workers) as u64;
        self.listener_removed += listeners.removed;
    }
}

/// What an update did to a list of named resources: the new ones, the (old, new) pairs whose
/// config changed, and how many went.
struct ByName<'a, T> {
    added: Vec<&'a T>,
    modified: Vec<(&'a T, &'a T)>,
    removed: u64,
}

/// Compares `old` and `new` by name; `key` gives a resource's name and its config.
fn by_name<'a, T, C: PartialEq + 'a>(
    old: &'a [T],
    new: &'a [T],
    key: impl Fn(&'a T) -> (&'a String, &'a C),
) -> ByName<'a, T> {
    let mut d = ByName {
        added: Vec::new(),
        modified: Vec::new(),
        removed: 0,
    };
    for n in new {
        let (name, cfg) = key(n);
        match old.iter().find(|o| key(o).0 == name) {
            None => d.added.push(n),
            Some(o) if key(o).1 != cfg => d.modified.push((o, n)),
            Some(_) => {}
        }
    }
    d.removed = old
        .iter()
        .filter(|o| !new.iter().any(|n| key(n).0 == key(o).0))
        .count() as u64;
    d
}

/// Creates the `count` SO_REUSEPORT sockets of one listener on one port (the first bind picks
/// the port when `addr` asks for port 0).
fn bind_listener(
    name: &str,
    addr: SocketAddr,
    count: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), Error> {
    let err =
        |e: std::io::Error| Error::bind(format!("listener {name:?}: cannot bind {addr}: {e}"));
    let mut out = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count {
        let s =
            Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
        s.set_reuse_address(true).map_err(err)?;
        s.set_reuse_port(true).map_err(err)?;
        s.set_nonblocking(true).map_err(err)?;
        // Accepted sockets inherit TCP_NODELAY on Linux: no setsockopt per connection (elsewhere
        // `serve` sets it on each). A response never waits on Nagle for the previous one's ACK.
        #[cfg(target_os = "linux")]
        s.set_nodelay(true).map_err(err)?;
        if at.is_ipv6() {
            s.set_only_v6(true).map_err(err)?;
        }
        s.bind(&at.into()).map_err(err)?;
        s.listen(1024).map_err(err)?;
        // TCP_QUICKACK off, as HAProxy's HTTP listeners, and after listen() (which resets it):
        // the kernel then does not ACK a new connection's request at once but lets the response
        // carry the ACK, one TCP segment fewer per connection (scenario 3, `nstat`). A client
        // with Nagle on that writes head and body apart sees no stall (checked with
        // http.client: 0.1-0.5 ms). Best effort: a kernel that refuses it changes nothing else.
        #[cfg(target_os = "linux")]
        let _ = s.set_quickack(false);
        if at.port() == 0 {
            at = s
                .local_addr()
                .map_err(err)?
                .as_socket()
                .ok_or_else(|| Error::bind("no socket address"))?;
        }
        out.push(s.into());
    }
    Ok((at, out))
}

/// Envoy's listener stat name part, from the *configured* address as Envoy names it:
/// `0.0.0.0_10000`, `127.0.0.1_0` for a port-0 listener, `[__]_10000` for `[::]:10000`.
fn stat_address(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => format!("{}_{}", v.ip(), v.port()),
        SocketAddr::V6(v) => format!("[{}]_{}", v.ip().to_string().replace(':', "_"), v.port()),
    }
}

/// Envoy's default `--drain-time-s`.
pub const DEFAULT_DRAIN_TIME: Duration = Duration::from_secs(600);

impl Engine {
    /// An engine with `concurrency` workers; nothing runs until [`Engine::start`].
    pub fn new(concurrency: usize) -> Engine {
        Engine::with_resolver(concurrency, system_resolver())
    }

    /// An engine that resolves STRICT_DNS clusters with `resolver` (tests use this to change
    /// what a name resolves to between refreshes).
    pub fn with_resolver(concurrency: usize, resolver: Resolver) -> Engine {
        Engine {
            resolver,
            concurrency: concurrency.max(1),
            stores: Arc::new(Stores::default()),
            started: Instant::now(),
            state: Mutex::new(None),
            managers: Mutex::new(Managers::default()),
            drain: Mutex::new(Arc::new({
                let d = DrainState::default();
                d.set_drain_time(DEFAULT_DRAIN_TIME);
                d.set(DrainState::GRADUAL, true);
                d
            })),
        }
    }

    /// Number of workers.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Compiles `snapshot`, binds every listener on every worker and starts the workers.
    pub fn start(&self, snapshot: &Snapshot) -> Result<(), Error> {
        let mut state = self.lock();
        if state.is_some() {
            return Err(Error::engine("the engine is already started"));
        }
        let compiled = Arc::new(compile_with(snapshot, &self.resolver)?);
        // As Envoy's start-up, the listeners open once every host of a cluster with a health
        // check has had its first check (passed or failed; each ends within its timeout).
        let health = crate::upstream::health::Checker::spawn(self.stores.clone())
            .map_err(|e| Error::engine(format!("cannot start the health checker: {e}")))?;
        health.snapshot(&compiled);
        health.wait_first_checks(&compiled);
        let global = Arc::new(crate::overload::GlobalConnections::default());
        let overload = crate::overload::Manager::spawn(global.clone())
            .map_err(|e| Error::engine(format!("cannot start the overload manager: {e}")))?;
        overload.configure(snapshot.overload.as_ref());
        let drain = {
            let mut cur = self.drain.lock().unwrap_or_else(|e| e.into_inner());
            *cur = Arc::new(cur.next_run());
            cur.clone()
        };
        let mut per_worker: Vec<Vec<(Arc<str>, std::net::TcpListener, String)>> =
            (0..self.concurrency).map(|_| Vec::new()).collect();
        let mut bound = Vec::new();
        for l in &compiled.listeners {
            let (at, socks) = bind_listener(&l.name, l.addr, self.concurrency)?;
            for (w, s) in socks.into_iter().enumerate() {
                per_worker[w].push((l.name.clone(), s, stat_address(l.addr)));
            }
            bound.push(Bound {
                name: l.name.clone(),
                requested: l.addr,
                bound: at,
            });
        }
        let mut workers = Vec::with_capacity(self.concurrency);
        for (id, ls) in per_worker.into_iter().enumerate() {
            let w = Worker::spawn(
                id,
                self.stores.clone(),
                compiled.clone(),
                ls,
                drain.clone(),
                global.clone(),
            )
            .map_err(|e| Error::engine(format!("cannot start worker {id}: {e}")))?;
            workers.push(w);
        }
        self.managers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count(None, &compiled, self.concurrency, &|_| true);
        health.send(HcCmd::Workers(workers.iter().map(|w| w.sender()).collect()));
        global.set_workers(workers.iter().map(|w| w.shared.clone()).collect());
        overload.set_workers(workers.iter().map(|w| w.sender()).collect());
        let compiled = Arc::new(Mutex::new(compiled));
        let dns = spawn_dns(
            self.resolver.clone(),
            compiled.clone(),
            workers.iter().map(|w| w.sender()).collect(),
            health.sender(),
        );
        *state = Some(Running {
            workers,
            compiled,
            bound,
            dns,
            health,
            overload,
            drains_end: Vec::new(),
            listeners_stop: None,
            drain,
        });
        Ok(())
    }

    /// Compiles and publishes a new snapshot. Listeners whose name and address are unchanged
    /// keep their sockets; new ones are bound first, so a bind failure changes nothing.
    pub fn apply(&self, snapshot: &Snapshot) -> Result<(), Error> {
        let mut guard = self.lock();
        let Some(run) = guard.as_mut() else {
            return Err(Error::engine("apply() before start()"));
        };
        let mut compiled = compile_with(snapshot, &self.resolver)?;
        compiled.keep_unchanged(&run.compiled.lock().unwrap_or_else(|e| e.into_inner()));
        let compiled = Arc::new(compiled);
        let mut add: Vec<Vec<(Arc<str>, std::net::TcpListener, String)>> =
            (0..run.workers.len()).map(|_| Vec::new()).collect();
        let mut new_bound = Vec::new();
        let mut remove = Vec::new();
        for l in &compiled.listeners {
            if let Some(b) = run
                .bound
                .iter()
                // Same name and the same address (as configured, or as bound when the config
                // asked for port 0 and now names the port it got): keep the sockets. Closing a
                // SO_REUSEPORT socket resets the connections still in its accept queue.
                .find(|b| b.name == l.name && (b.requested == l.addr || b.bound == l.addr))
            {
                new_bound.push(Bound {
                    name: b.name.clone(),
                    requested: b.requested,
                    bound: b.bound,
                });
                continue;
            }
            if let Some(b) = run.bound.iter().find(|b| b.name == l.name) {
                remove.push(b.name.clone());
            }
            // The listeners have stopped (a drain): nothing new is bound.
            if run.stopped() {
                continue;
            }
            let (at, socks) = bind_listener(&l.name, l.addr, run.workers.len())?;
            for (w, s) in socks.into_iter().enumerate() {
                add[w].push((l.name.clone(), s, stat_address(l.addr)));
            }
            new_bound.push(Bound {
                name: l.name.clone(),
                requested: l.addr,
                bound: at,
            });
        }
        let now = Instant::now();
        run.drains_end.retain(|end| end.is_none_or(|e| e > now));
        for b in &run.bound {
            if compiled.listener(&b.name).is_none() {
                remove.push(b.name.clone());
                run.drains_end.push(now.checked_add(run.drain.drain_time()));
            }
        }
        // Envoy warms a cluster before it takes requests: the hosts of a cluster whose health
        // check is new have their first check before the workers see it (a kept or changed
        // check's hosts have their results already).
        run.health.snapshot(&compiled);
        run.health.wait_first_checks(&compiled);
        run.overload.configure(snapshot.overload.as_ref());
        for (w, a) in run.workers.iter().zip(add) {
            w.send(Cmd::Apply {
                compiled: compiled.clone(),
                add: a,
                remove: remove.clone(),
            });
        }
        let mut current = run.compiled.lock().unwrap_or_else(|e| e.into_inner());
        self.managers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count(Some(&current), &compiled, run.workers.len(), &|name| {
                new_bound.iter().any(|b| &*b.name == name)
            });
        *current = compiled;
        drop(current);
        run.bound = new_bound;
        // A drain still waiting to stop the listeners stops the ones there are then.
        let stopped = run.stopped();
        if let Some((_, n)) = run.listeners_stop.as_mut().filter(|_| !stopped) {
            *n = run.bound.len() as u64;
        }
        Ok(())
    }

    /// (name, bound address) of every listener.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.lock()
            .as_ref()
            .map(|r| {
                r.bound
                    .iter()
                    .map(|b| (b.name.to_string(), b.bound))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drains: from now on responses close their connections (all of them, or under the
    /// gradual strategy more and more over the drain time), and the listeners stop accepting
    /// (idle connections close then) as `stop` says: at once, once the drain time has passed
    /// (Envoy's `/drain_listeners?graceful`), or never (`skip_exit`). With `shutdown` (the
    /// drain before the process exits) every response closes its connection and the server
    /// reports itself draining.
    pub fn drain_listeners(&self, shutdown: bool, stop: Stop) {
        let mut guard = self.lock();
        let Some(run) = guard.as_mut() else {
            return;
        };
        run.drain.start_drain(shutdown);
        let after = match stop {
            Stop::Never => return,
            Stop::Now => Duration::ZERO,
            Stop::AfterDrainTime => run.drain.drain_time(),
        };
        // A later drain that stops sooner overtakes one still waiting for its drain time.
        let at = Instant::now().checked_add(after);
        let sooner = match run.listeners_stop {
            None => true,
            Some((prev, _)) => at.is_some_and(|at| prev.is_none_or(|p| at < p)),
        };
        if sooner {
            run.listeners_stop = Some((at, run.bound.len() as u64));
            for w in &run.workers {
                w.send(Cmd::Drain { after });
            }
        }
    }

    /// Sets whether a failed health check is in force (the admin's `/healthcheck/fail` and
    /// `/healthcheck/ok`). While it is, every response on a listener whose `drain_type` is
    /// DEFAULT closes its connection (`connection: close`, counted as
    /// `downstream_cx_drain_close`), as Envoy's drain decision answers while health checks fail.
    pub fn set_health_check_failed(&self, failed: bool) {
        self.current_drain()
            .set(DrainState::HEALTH_CHECK_FAILED, failed);
    }

    /// Sets the drain time (`--drain-time-s`, Envoy's default 600 s): the idle connections of
    /// a listener an apply removes are closed once it has passed (the listener's responses
    /// close their connections from the removal on).
    pub fn set_drain_time(&self, t: Duration) {
        self.current_drain().set_drain_time(t);
    }

    /// Sets the drain strategy (`--drain-strategy`): gradual (Envoy's default), where a drain
    /// closes a response's connection with a chance that grows from 0 to 1 over the drain
    /// time, or immediate, where every response closes it at once. A failed health check and
    /// the drain before the process exits close at once either way.
    pub fn set_drain_gradual(&self, gradual: bool) {
        self.current_drain().set(DrainState::GRADUAL, gradual);
    }

    /// Whether a failed health check is in force.
    pub fn health_check_failed(&self) -> bool {
        self.current_drain().has(DrainState::HEALTH_CHECK_FAILED)
    }

    fn current_drain(&self) -> Arc<DrainState> {
        self.drain.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Open downstream connections, all workers.
    pub fn active_connections(&self) -> u64 {
        self.lock()
            .as_ref()
            .map(|r| r.workers.iter().map(|w| w.shared.active()).sum())
            .unwrap_or(0)
    }

    /// Drains, waits up to `timeout` for connections to finish, stops the workers. Idempotent.
    pub fn shutdown(&self, timeout: Duration) {
        let Some(mut run) = self.lock().take() else {
            return;
        };
        run.drain.start_drain(true);
        {
            let (lock, cv) = &*run.dns.stop;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(t) = run.dns.thread.take() {
            let _ = t.join();
        }
        run.health.stop();
        let deadline = Instant::now() + timeout;
        for w in &run.workers {
            w.send(Cmd::Shutdown { deadline });
        }
        for w in &mut run.workers {
            w.join();
        }
        // The workers handed their last access log lines over as they stopped.
        crate::accesslog::sink::wait_written();
    }

    /// Reopens every access log file (after log rotation); the errors of those that could
    /// not be reopened.
    pub fn reopen_logs(&self) -> Vec<String> {
        crate::accesslog::sink::reopen_all()
    }

    /// Envoy's `--file-flush-interval-msec` and `--file-flush-min-size-kb`, for the process.
    pub fn set_file_flush(&self, interval: Duration, min_bytes: u64) {
        crate::accesslog::sink::set_flush(interval.as_millis() as u64, min_bytes);
    }

    /// Every stat, merged across workers, with the `server.*` stats computed now.
    pub fn stats_snapshot(&self) -> StatsSnapshot {
        self.stores.stats.snapshot(&self.engine_stats())
    }

    /// The stats the engine keeps beside the workers' (`server.*`, the managers'), now.
    fn engine_stats(&self) -> Vec<(String, StatKind, u64)> {
        let now = Instant::now();
        let (server_draining, total, clusters, listeners, running, listeners_draining, stopped) = {
            let g = self.lock();
            let (clusters, listeners) = g.as_ref().map_or((0, 0), |r| {
                let c = r.compiled.lock().unwrap_or_else(|e| e.into_inner());
                (c.clusters.len() as u64, r.bound.len() as u64)
            });
            (
                // The shutdown's drain reports the server draining, as failing health checks
                // do; `/drain_listeners` alone leaves it live, as in Envoy.
                g.as_ref()
                    .is_some_and(|r| r.drain.has(DrainState::SHUTDOWN))
                    || self.health_check_failed(),
                g.as_ref()
                    .map(|r| r.workers.iter().map(|w| w.shared.active()).sum())
                    .unwrap_or(0),
                clusters,
                listeners,
                g.is_some(),
                g.as_ref().map_or(0, |r| {
                    r.drains_end
                        .iter()
                        .filter(|end| end.is_none_or(|e| e > now))
                        .count() as u64
                }),
                g.as_ref()
                    .and_then(|r| r.listeners_stop)
                    .filter(|(at, _)| at.is_some_and(|at| at <= now))
                    .map_or(0, |(_, n)| n),
            )
        };
        let m = self.managers.lock().unwrap_or_else(|e| e.into_inner());
        let (c, g) = (StatKind::Counter, StatKind::Gauge);
        let managers = [
            ("cluster_manager.active_clusters", g, clusters),
            // Clusters take their hosts when compiled: none waits to warm.
            ("cluster_manager.warming_clusters", g, 0),
            ("cluster_manager.cluster_added", c, m.cluster_added),
            ("cluster_manager.cluster_modified", c, m.cluster_modified),
            ("cluster_manager.cluster_removed", c, m.cluster_removed),
            ("listener_manager.total_listeners_active", g, listeners),
            ("listener_manager.total_listeners_warming", g, 0),
            (
                "listener_manager.total_listeners_draining",
                g,
                listeners_draining,
            ),
            ("listener_manager.listener_added", c, m.listener_added),
            ("listener_manager.listener_modified", c, m.listener_modified),
            (
                "listener_manager.listener_in_place_updated",
                c,
                m.listener_in_place_updated,
            ),
            ("listener_manager.listener_removed", c, m.listener_removed),
            (
                "listener_manager.listener_create_success",
                c,
                m.listener_create_success,
            ),
            ("listener_manager.listener_create_failure", c, 0),
            ("listener_manager.listener_stopped", c, stopped),
            ("listener_manager.workers_started", g, u64::from(running)),
        ];
        drop(m);
        let (allocated, heap) = memory();
        let mut extra: Vec<(String, StatKind, u64)> = managers
            .into_iter()
            .map(|(n, k, v)| (n.to_string(), k, v))
            .collect();
        extra.extend([
            (
                "server.concurrency".to_string(),
                StatKind::Gauge,
                self.concurrency as u64,
            ),
            (
                "server.live".to_string(),
                StatKind::Gauge,
                u64::from(!server_draining),
            ),
            (
                "server.memory_allocated".to_string(),
                StatKind::Gauge,
                allocated,
            ),
            ("server.memory_heap_size".to_string(), StatKind::Gauge, heap),
            (
                "server.state".to_string(),
                StatKind::Gauge,
                if server_draining { 1 } else { 0 },
            ),
            (
                "server.total_connections".to_string(),
                StatKind::Gauge,
                total,
            ),
            (
                "server.uptime".to_string(),
                StatKind::Gauge,
                self.started.elapsed().as_secs(),
            ),
        ]);
        // The access log writers' counts (process-wide; the workers add theirs).
        use crate::accesslog::sink::{REOPEN_FAILED, WRITE_COMPLETED, WRITE_FAILED};
        use std::sync::atomic::Ordering::Relaxed;
        for (name, v) in [
            ("filesystem.reopen_failed", &REOPEN_FAILED),
            ("filesystem.write_completed", &WRITE_COMPLETED),
            ("filesystem.write_failed", &WRITE_FAILED),
        ] {
            extra.push((name.to_string(), StatKind::Counter, v.load(Relaxed)));
        }
        // The overload manager's monitors and actions, and Envoy's counter of its
        // `reset_high_memory_stream` action, which every Envoy shows (pyproxy refuses it).
        if let Some(r) = self.lock().as_ref() {
            extra.extend(r.overload.stats());
        }
        extra.push((
            "envoy.overload_actions.reset_high_memory_stream.count".to_string(),
            StatKind::Counter,
            0,
        ));
        extra
    }

    /// Renders every stat in an Envoy admin format; `filter` is a regex on the name.
    pub fn render_stats(
        &self,
        format: &str,
        filter: Option<&str>,
        used_only: bool,
    ) -> Result<String, Error> {
        let format = match format {
            "text" => Format::Text,
            "json" => Format::Json,
            "prometheus" => Format::Prometheus,
            other => {
                return Err(Error::config(format!(
                    "stats format {other:?} is not one of text, json, prometheus"
                )))
            }
        };
        let filter = match filter {
            Some(f) => Some(
                regex::Regex::new(f)
                    .map_err(|e| Error::config(format!("invalid filter regex {f:?}: {e}")))?,
            ),
            None => None,
        };
        let snap = self.stats_snapshot();
        Ok(render(
            &snap,
            &RenderOptions {
                format,
                filter: filter.as_ref(),
                used_only,
            },
        ))
    }

    /// Counters and gauges by name.
    pub fn stat_values(&self) -> HashMap<String, u64> {
        self.stats_snapshot()
            .stats
            .into_iter()
            .map(|s| (s.name, s.value))
            .collect()
    }

    /// Envoy's `/reset_counters`.
    pub fn reset_counters(&self) {
        self.stores.stats.reset_counters(&self.engine_stats());
    }

    /// Clusters and their hosts' stats, for `/clusters`.
    pub fn clusters(&self) -> Vec<ClusterInfo> {
        let compiled = match self.lock().as_ref() {
            Some(r) => r.compiled.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            None => return Vec::new(),
        };
        let snap = self.stores.hosts.snapshot(&[]);
        // A host's stats are named `cluster\0address\0weight\0endpoint\0stat`.
        type HostKey = (String, String, u32, u32);
        let mut by_host: HashMap<HostKey, Vec<(String, u64)>> = HashMap::new();
        for s in snap.stats {
            let mut parts = s.name.splitn(5, '\0');
            let (Some(c), Some(a), Some(w), Some(e), Some(stat)) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                continue;
            };
            by_host
                .entry((
                    c.to_string(),
                    a.to_string(),
                    w.parse().unwrap_or(1),
                    e.parse().unwrap_or(0),
                ))
                .or_default()
                .push((stat.to_string(), s.value));
        }
        compiled
            .clusters
            .iter()
            .map(|c| {
                // Envoy's `hostname`: a STRICT_DNS host's endpoint name, none for STATIC.
                let hostname = |endpoint: u32| match c.discovery {
                    Discovery::StrictDns => c
                        .cfg
                        .endpoints
                        .get(endpoint as usize)
                        .map(|ep| ep.address.clone())
                        .unwrap_or_default(),
                    Discovery::Static => String::new(),
                };
                // A checked host's flags, as its cluster's health check has them now.
                let health = |addr: &str| {
                    let Ok(a) = addr.parse::<SocketAddr>() else {
                        return 0;
                    };
                    let active = c.health.as_ref().map_or(0, |h| h.flags(a));
                    let ejected = c.outlier.as_ref().is_some_and(|o| o.ejected(a));
                    active
                        | if ejected {
                            crate::upstream::health::flag::OUTLIER
                        } else {
                            0
                        }
                };
                let rates = |addr: &str| match (&c.outlier, addr.parse::<SocketAddr>()) {
                    (Some(o), Ok(a)) => o.success_rates(a),
                    _ => [-1.0; 2],
                };
                let mut hosts: Vec<(u32, HostInfo)> = by_host
                    .iter()
                    .filter(|((cn, ..), _)| *cn == c.cfg.name)
                    .map(|((_, a, w, e), stats)| {
                        let info = HostInfo {
                            addr: a.clone(),
                            weight: *w,
                            hostname: hostname(*e),
                            stats: stats.clone(),
                            health: health(a),
                            success_rate: rates(a),
                        };
                        (*e, info)
                    })
                    .collect();
                let order = |(e, h): &(u32, HostInfo)| {
                    c.hosts
                        .iter()
                        .position(|ha| ha.endpoint == *e && ha.addr.to_string() == h.addr)
                        .unwrap_or(usize::MAX)
                };
                // A host no worker has counted for yet (just configured: the workers build
                // their hosts as they take the snapshot) is listed with its stats at zero.
                for ha in &c.hosts {
                    let addr = ha.addr.to_string();
                    if !hosts
                        .iter()
                        .any(|(e, h)| *e == ha.endpoint && h.addr == addr)
                    {
                        let info = HostInfo {
                            health: health(&addr),
                            success_rate: rates(&addr),
                            addr,
                            weight: ha.weight,
                            hostname: hostname(ha.endpoint),
                            stats: zero_host_stats(),
                        };
                        hosts.push((ha.endpoint, info));
                    }
                }
                hosts.sort_by_key(order);
                if c.discovery == Discovery::Static {
                    hosts.retain(|h| order(h) != usize::MAX);
                }
                let hosts = hosts.into_iter().map(|(_, h)| h).collect();
                ClusterInfo {
                    name: c.cfg.name.clone(),
                    hosts,
                    outlier: c.outlier.as_ref().map(|o| o.rates()),
                }
            })
            .collect()
    }
}

/// A host's stats, every one at zero, in the order a worker's would list them.
fn zero_host_stats() -> Vec<(String, u64)> {
    struct Names(Vec<(String, u64)>);
    impl crate::stats::Visitor for Names {
        fn stat(&mut self, name: &str, _: crate::stats::StatKind, _: u64, _: bool) {
            self.0.push((name.to_string(), 0));
        }
        fn histogram(&mut self, _: &str, _: &crate::stats::Histogram) {}
    }
    let mut names = Names(Vec::new());
    crate::stats::Scope::visit(&crate::upstream::HostStats::default(), &mut names);
    names.0
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(Duration::from_millis(0));
    }
}

/// Bytes allocated and heap size, from glibc's allocator (Envoy reports tcmalloc's figures).
pub(crate) fn memory() -> (u64, u64) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 has no preconditions and returns a plain struct.
        let mi = unsafe { libc::mallinfo2() };
        (
            (mi.uordblks + mi.hblkhd) as u64,
            (mi.arena + mi.hblkhd) as u64,
        )
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        (0, 0)
    }
}

fn spawn_dns(
    resolver: Resolver,
    compiled: Arc<Mutex<Arc<Compiled>>>,
    senders: Vec<tokio::sync::mpsc::UnboundedSender<Cmd>>,
    health: tokio::sync::mpsc::UnboundedSender<HcCmd>,
) -> Dns {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let st = stop.clone();
    let thread = std::thread::Builder::new()
        .name("pyproxy-dns".into())
        .spawn(move || {
            let mut last: HashMap<String, (usize, Vec<HostAddr>)> = HashMap::new();
            let mut next_due: HashMap<String, Instant> = HashMap::new();
            loop {
                let c = compiled.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let now = Instant::now();
                let mut wait = Duration::from_secs(5);
                for cl in c
                    .clusters
                    .iter()
                    .filter(|c| c.discovery == Discovery::StrictDns)
                {
                    let rate = Duration::from_millis(cl.cfg.dns_refresh_rate_ms.max(1));
                    let key = cl.cfg.name.clone();
                    let id = Arc::as_ptr(cl) as usize;
                    let due = *next_due.entry(key.clone()).or_insert(now + rate);
                    if now >= due {
                        let hosts = resolver(&cl.cfg);
                        let prev = last
                            .get(&key)
                            .filter(|(pid, _)| *pid == id)
                            .map(|(_, h)| h)
                            .unwrap_or(&cl.hosts);
                        if *prev != hosts {
                            let shared = Arc::new(hosts.clone());
                            for s in &senders {
                                let _ = s.send(Cmd::Hosts {
                                    cluster: key.clone(),
                                    id,
                                    hosts: shared.clone(),
                                });
                            }
                            if cl.health.is_some() || cl.outlier.is_some() {
                                let _ = health.send(HcCmd::Hosts { id, hosts: shared });
                            }
                        }
                        last.insert(key.clone(), (id, hosts));
                        next_due.insert(key.clone(), now + rate);
                        wait = wait.min(rate);
                    } else {
                        wait = wait.min(due - now);
                    }
                }
                // The snapshot is not held while waiting: an apply's old one (its clusters'
                // stats and states) goes as soon as the workers are done with it.
                drop(c);
                let (lock, cv) = &*st;
                let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                if *stopped {
                    return;
                }
                let (stopped, _) = cv
                    .wait_timeout(stopped, wait)
                    .unwrap_or_else(|e| e.into_inner());
                if *stopped {
                    return;
                }
            }
        })
        .ok();
    Dns { stop, thread }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection setsockopt(TCP_NODELAY) was dropped because accepted sockets inherit
    /// it from the listening socket: check that this kernel does.
    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let (at, ls) = bind_listener("t", "127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let _c = std::net::TcpStream::connect(at).unwrap();
        ls[0].set_nonblocking(false).unwrap();
        let (accepted, _) = ls[0].accept().unwrap();
        assert!(accepted.nodelay().unwrap());
        assert!(!socket2::SockRef::from(&ls[0]).quickack().unwrap());
    }
}
