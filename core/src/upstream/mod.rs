//! Upstream clusters as a worker sees them: hosts with their connection pools and balancer.
//!
//! Everything here is per worker (`Rc`, `Cell`): a worker's pool holds connections only it
//! uses, so checkout and return are a `Vec` pop and push with no lock.

pub mod breaker;
pub mod health;
pub mod outlier;
pub mod pool;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use crate::lb::{Balancer, LbHost};
use crate::snapshot::{CompiledCluster, HostAddr};
use crate::stats::{Buffered, ClusterScope, DestroySplit};
use breaker::Breakers;
use pool::{Pool, Waiters};

crate::stat_scope! {
    /// Per-host stats for `/clusters` (not in `/stats`, as Envoy).
    pub struct HostStats {
        counters { cx_total, cx_connect_fail, rq_total, rq_error, rq_success, rq_timeout }
        gauges { cx_active, rq_active }
        histograms {}
    }
}

impl crate::stats::Scope for HostStats {
    fn visit(&self, v: &mut dyn crate::stats::Visitor) {
        self.visit_declared(v);
    }
}

/// Counts an upstream connection open for as long as it lives, and how it ended.
pub struct CxGuard {
    cluster: Arc<ClusterScope>,
    host: Arc<HostStats>,
    /// The upstream closed it (`upstream_cx_destroy_remote`), else we did (`_local`).
    pub remote: bool,
    /// It ended with a request on it (`upstream_cx_destroy_with_active_rq`).
    pub active_rq: bool,
    /// Its share of `upstream_cx_{rx,tx}_bytes_buffered`.
    pub held: Buffered,
    /// The circuit breakers it counts against (`max_connections`), and its pool's line,
    /// which its close wakes (once it came up: a failed attempt fails the line instead).
    limits: Option<(Arc<Breakers>, Rc<Waiters>)>,
    /// It is of a `HIGH` priority pool (counted by those breakers).
    high: bool,
    /// Whether its end wakes the first request in its pool's line, to decide again: yes but
    /// for an attempt that failed, whose request fails the whole line instead (an attempt
    /// dropped unfinished, at a stop, wakes it too).
    pub wakes: bool,
}

impl CxGuard {
    /// Counts a connection from its attempt on (`upstream_cx_active`, as Envoy's); its drop
    /// counts the destroy, also of an attempt that never came up. `upstream_cx_total` and
    /// `upstream_cx_http1_total` are counted by the caller.
    /// `limits`: the cluster's breakers, where it takes a connection until dropped, and the
    /// pool's line.
    pub fn new(
        cluster: Arc<ClusterScope>,
        host: Arc<HostStats>,
        limits: Option<(Arc<Breakers>, Rc<Waiters>)>,
        high: bool,
    ) -> CxGuard {
        cluster.s.upstream_cx_active.inc();
        host.cx_active.inc();
        if let Some((b, _)) = &limits {
            b.of(high).cx.take();
        }
        CxGuard {
            cluster,
            host,
            remote: false,
            active_rq: false,
            held: Buffered::default(),
            limits,
            high,
            wakes: true,
        }
    }

    /// Whether it counts against `breakers` (always, for a connection counted by none).
    #[inline]
    pub fn counts_in(&self, breakers: &Arc<Breakers>) -> bool {
        self.limits
            .as_ref()
            .is_none_or(|(b, _)| Arc::ptr_eq(b, breakers))
    }
}

/// Counts a request in flight to a host (`upstream_rq_active`, the host's `rq_active`, which
/// least-request reads) for as long as it lives, so the gauges come back down however the
/// request ends, a panicking task included.
pub struct RqGuard {
    host: Rc<HostRt>,
    cluster: Arc<ClusterScope>,
}

impl RqGuard {
    /// Counts a request started on `host` (`rq_total` is counted once it has a connection).
    pub fn new(host: Rc<HostRt>, cluster: Arc<ClusterScope>) -> RqGuard {
        host.stats.rq_active.inc();
        cluster.s.upstream_rq_active.inc();
        RqGuard { host, cluster }
    }
}

impl Drop for RqGuard {
    fn drop(&mut self) {
        self.host.stats.rq_active.dec();
        self.cluster.s.upstream_rq_active.dec();
    }
}

impl Drop for CxGuard {
    fn drop(&mut self) {
        let s = &self.cluster.s;
        self.held.release(s.buffered());
        s.upstream_cx_active.dec();
        s.upstream_cx_destroy.inc();
        DestroySplit {
            local: &s.upstream_cx_destroy_local,
            remote: &s.upstream_cx_destroy_remote,
            active_rq: &s.upstream_cx_destroy_with_active_rq,
            local_active_rq: &s.upstream_cx_destroy_local_with_active_rq,
            remote_active_rq: &s.upstream_cx_destroy_remote_with_active_rq,
        }
        .count(self.remote, self.active_rq);
        self.host.cx_active.dec();
        if let Some((b, w)) = &self.limits {
            b.of(self.high).cx.give();
            // A request waiting for a connection of this pool may make one now.
            if self.wakes {
                w.retry_one();
            }
        }
    }
}

/// One upstream host on one worker.
pub struct HostRt {
    /// Resolved address.
    pub addr: SocketAddr,
    /// Envoy `load_balancing_weight`.
    pub weight: u32,
    /// The index of its endpoint in the cluster's config (its name, for a STRICT_DNS host).
    pub endpoint: u32,
    /// Idle keep-alive connections to this host, one pool per priority (`DEFAULT`, `HIGH`), as
    /// Envoy keeps them.
    pools: [Pool; 2],
    /// Per-host stats; this worker's `rq_active` is also the least-request input.
    pub stats: Arc<HostStats>,
    /// What outlier detection counts of it (shared by every worker), if its cluster has it.
    pub outlier: Option<Arc<outlier::HostMonitor>>,
}

impl HostRt {
    /// The pool of a priority's requests.
    #[inline]
    pub fn pool(&self, high: bool) -> &Pool {
        &self.pools[usize::from(high)]
    }

    /// Both pools.
    pub fn pools(&self) -> &[Pool; 2] {
        &self.pools
    }

    /// A host with an empty pool.
    pub fn new(
        a: HostAddr,
        stats: Arc<HostStats>,
        outlier: Option<Arc<outlier::HostMonitor>>,
    ) -> HostRt {
        HostRt {
            addr: a.addr,
            weight: a.weight,
            endpoint: a.endpoint,
            pools: Default::default(),
            stats,
            outlier,
        }
    }
}

impl LbHost for Rc<HostRt> {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn active_requests(&self) -> u32 {
        self.stats.rq_active.get() as u32
    }
    fn hash_key(&self) -> String {
        self.addr.to_string()
    }
}

/// A host set and its balancer, replaced together when DNS changes the hosts or a health
/// check changes which of them are healthy.
pub struct HostSet {
    /// The hosts.
    pub hosts: Vec<Rc<HostRt>>,
    /// The balancer over `hosts`.
    pub lb: Balancer,
    /// Which hosts a request may go to under an active health check.
    pub health: Health,
}

/// The hosts a balancer picks among, given their health.
pub enum Health {
    /// Every host (no health check, or every host healthy).
    All,
    /// Only the healthy ones (and their balancer), fewer than all.
    Healthy(Vec<Rc<HostRt>>, Balancer),
    /// Healthy hosts and degraded ones, each with its balancer: a pick goes to the healthy
    /// ones `healthy_load` percent of the time (Envoy's load between healthy and degraded).
    Split {
        healthy: (Vec<Rc<HostRt>>, Balancer),
        degraded: (Vec<Rc<HostRt>>, Balancer),
        healthy_load: u32,
    },
    /// Fewer hosts are healthy than the panic threshold: every host, each pick counted as
    /// `lb_healthy_panic`.
    Panic,
    /// No host is healthy and the panic threshold is 0: none.
    None,
}

/// One cluster on one worker.
pub struct ClusterRt {
    /// The compiled, engine-wide cluster.
    pub cfg: Arc<CompiledCluster>,
    /// `cluster.<name>.*`.
    pub stats: Arc<ClusterScope>,
    /// Current hosts; swapped whole on a DNS update.
    pub hosts: RefCell<Rc<HostSet>>,
    /// Whether this worker publishes the cluster-wide gauges (`membership_*`): exactly one
    /// worker does, so the merge (a sum) reports the cluster's value, not N times it.
    publishes_membership: bool,
}

impl ClusterRt {
    /// A cluster runtime with `hosts`; `changed`: whether they count as a membership change
    /// (a new or changed cluster's first hosts, if any, or an unchanged cluster's that differ
    /// from those it had).
    pub fn new(
        cfg: Arc<CompiledCluster>,
        stats: Arc<ClusterScope>,
        hosts: Vec<Rc<HostRt>>,
        publishes_membership: bool,
        changed: bool,
    ) -> ClusterRt {
        let empty = Rc::new(HostSet {
            lb: Balancer::new(cfg.policy, &[] as &[Rc<HostRt>]),
            hosts: Vec::new(),
            health: Health::All,
        });
        let c = ClusterRt {
            cfg,
            stats,
            hosts: RefCell::new(empty),
            publishes_membership,
        };
        c.replace_hosts(hosts, changed);
        c
    }

    /// Whether the cluster has exactly `hosts`, in any order.
    pub fn same_hosts(&self, hosts: &[HostAddr]) -> bool {
        let set = self.hosts.borrow();
        let mut have: Vec<_> = set
            .hosts
            .iter()
            .map(|h| (h.addr, h.weight, h.endpoint))
            .collect();
        let mut want: Vec<_> = hosts
            .iter()
            .map(|a| (a.addr, a.weight, a.endpoint))
            .collect();
        have.sort_unstable();
        want.sort_unstable();
        have == want
    }

    /// Replaces the host set with a different one (a DNS refresh that changed it).
    pub fn set_hosts(&self, hosts: Vec<Rc<HostRt>>) {
        self.replace_hosts(hosts, true);
    }

    /// Rebuilds the balancer from the health check's latest findings.
    pub fn refresh_health(&self) {
        let hosts = self.hosts.borrow().hosts.clone();
        self.replace_hosts(hosts, false);
    }

    fn replace_hosts(&self, hosts: Vec<Rc<HostRt>>, changed: bool) {
        let (health, healthy, degraded, excluded) = match (&self.cfg.health, &self.cfg.outlier) {
            (None, None) => (Health::All, hosts.len(), 0, 0),
            (h, o) => self.health_of(h.as_deref(), o.as_deref(), &hosts),
        };
        let set = Rc::new(HostSet {
            lb: Balancer::new(self.cfg.policy, &hosts),
            hosts,
            health,
        });
        if self.publishes_membership {
            let s = &self.stats.s;
            let n = set.hosts.len() as u64;
            // Without a health check every host is healthy and none excluded.
            if changed {
                s.membership_change.inc();
            }
            s.membership_total.set(n);
            s.membership_healthy.set(healthy as u64);
            s.membership_degraded.set(degraded as u64);
            s.membership_excluded.set(excluded as u64);
            // Envoy 1.40 reports a STRICT_DNS cluster's largest weight and 0 for a STATIC one
            // (checked with the envoy binary).
            let max_weight = match self.cfg.discovery {
                crate::snapshot::Discovery::StrictDns => {
                    set.hosts.iter().map(|h| h.weight).max().unwrap_or(0)
                }
                _ => 0,
            };
            s.max_host_weight.set(u64::from(max_weight));
            *self
                .stats
                .breakers
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(self.cfg.breakers.clone());
            if let Some((kind, size, min, max)) = set.lb.table_stats() {
                self.stats.lb.set(kind, size, min, max);
            }
        }
        *self.hosts.borrow_mut() = set;
    }

    /// Which of `hosts` a pick is among, as Envoy's balancer has it from the health check's
    /// flags and the outlier ejections, and the healthy, degraded and excluded counts (the
    /// membership gauges).
    fn health_of(
        &self,
        state: Option<&health::HealthState>,
        outlier: Option<&outlier::OutlierState>,
        hosts: &[Rc<HostRt>],
    ) -> (Health, usize, usize, usize) {
        use health::flag::{DEGRADED, EXCLUDED, FAILED, OUTLIER};
        let flags: Vec<u8> = hosts
            .iter()
            .map(|h| {
                let active = state.map_or(0, |s| s.flags(h.addr));
                let ejected = outlier.is_some_and(|o| o.ejected(h.addr));
                // An ejected host is out as a failed one is.
                active | if ejected { FAILED | OUTLIER } else { 0 }
            })
            .collect();
        // The hosts not failed, healthy and degraded apart (a failed host is not counted
        // degraded: Envoy's degraded set holds hosts that would otherwise be picked).
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for (h, f) in hosts.iter().zip(&flags) {
            match (f & FAILED != 0, f & DEGRADED != 0) {
                (true, _) => {}
                (false, false) => good.push(h.clone()),
                (false, true) => bad.push(h.clone()),
            }
        }
        // Hosts excluded by a passive failure count in neither the healthy nor the whole
        // (Envoy leaves them out of both).
        let excluded = flags.iter().filter(|f| *f & EXCLUDED != 0).count();
        let (n, degraded) = (good.len() + bad.len(), bad.len());
        let total = (hosts.len() - excluded).max(1);
        // Envoy's availability with its overprovisioning factor (1.4), healthy and degraded
        // apart; below 100% it compares the plain share of both with the panic threshold (a
        // whole percent). The degraded hosts get what the healthy ones cannot take: 1 healthy
        // and 1 degraded host, 70% and 30%.
        let (h_av, d_av) = (
            (140 * good.len() / total).min(100),
            (140 * degraded / total).min(100),
        );
        let available = (h_av + d_av).min(100);
        let share = 100.0 * n as f64 / total as f64;
        let healthy_load = (h_av * 100 / available.max(1)).min(100) as u32;
        let policy = self.cfg.policy;
        let health = if available < 100 && share < self.cfg.cfg.healthy_panic_threshold.round() {
            Health::Panic
        } else if n == 0 {
            Health::None
        } else if !good.is_empty() && !bad.is_empty() && healthy_load < 100 {
            let (good_lb, bad_lb) = (Balancer::new(policy, &good), Balancer::new(policy, &bad));
            Health::Split {
                healthy: (good, good_lb),
                degraded: (bad, bad_lb),
                healthy_load,
            }
        } else if n == hosts.len() && (good.is_empty() || bad.is_empty()) {
            Health::All
        } else {
            // Only healthy hosts, or only degraded ones if none is healthy.
            let ok = if good.is_empty() { bad } else { good };
            let lb = Balancer::new(policy, &ok);
            Health::Healthy(ok, lb)
        };
        (health, n - degraded, degraded, excluded)
    }

    /// Picks a host for a request.
    #[inline]
    pub fn pick(&self) -> Option<Rc<HostRt>> {
        let set = self.hosts.borrow();
        let (hosts, lb) = self.among(&set, None)?;
        lb.pick(hosts).map(|i| hosts[i].clone())
    }

    /// The hosts (and their balancer) a pick is among, given their health (`hash`: the
    /// request's, which chooses between healthy and degraded hosts as Envoy's does).
    #[inline]
    fn among<'s>(
        &self,
        set: &'s HostSet,
        hash: Option<u64>,
    ) -> Option<(&'s [Rc<HostRt>], &'s Balancer)> {
        match &set.health {
            Health::All => Some((&set.hosts, &set.lb)),
            Health::Healthy(ok, lb) => Some((ok, lb)),
            Health::Split {
                healthy,
                degraded,
                healthy_load,
            } => {
                let at = hash.unwrap_or_else(|| fastrand::u64(..)) % 100;
                let (hosts, lb) = if at < u64::from(*healthy_load) {
                    healthy
                } else {
                    degraded
                };
                Some((hosts, lb))
            }
            Health::Panic => {
                self.stats.s.lb_healthy_panic.inc();
                Some((&set.hosts, &set.lb))
            }
            Health::None => None,
        }
    }

    /// A hashing balancer's `attempt`-th pick for hash `h` (a retry picking again).
    pub fn pick_hashed_try(&self, h: u64, attempt: u32) -> Option<Rc<HostRt>> {
        let set = self.hosts.borrow();
        let (hosts, lb) = self.among(&set, Some(h))?;
        lb.pick_hashed_try(h, attempt).map(|i| hosts[i].clone())
    }

    /// Picks a host for a request by its hash (a hashing policy; `None`: a random point).
    pub fn pick_hashed(&self, hash: Option<u64>) -> Option<Rc<HostRt>> {
        let set = self.hosts.borrow();
        let (hosts, lb) = self.among(&set, hash)?;
        lb.pick_hashed(hosts, hash).map(|i| hosts[i].clone())
    }
}
