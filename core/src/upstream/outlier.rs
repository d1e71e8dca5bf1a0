//! Outlier detection: Envoy's cluster `outlier_detection` (passive health checking).
//!
//! The workers report what each try on a host came to ([`HostMonitor`]: a response code, a
//! failed connect, a timeout). The counts are atomics shared by every worker, as Envoy's
//! per-host monitor is: the consecutive-failure counters cross their threshold exactly once,
//! on whichever worker, which then tells the health thread (`pyproxy-hc`). That thread alone
//! decides ejections ([`OutlierState::eject`]: the ejection limit, the enforcing percentages)
//! and, at every `interval`, brings back hosts whose ejection time is over and runs the
//! success-rate and failure-percentage checks over the interval's counts. An ejection or a
//! return rebuilds the workers' balancers, as an active health check's verdict does. A cluster
//! without `outlier_detection` pays one branch a try.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::OutlierDetection;
use crate::stats::{Counter, Scope, Visitor};

use super::health::HcCmd;

crate::stat_scope! {
    /// `cluster.<name>.outlier_detection.*`.
    pub struct OutlierStats {
        counters {
            ejections_consecutive_5xx,
            ejections_detected_consecutive_5xx,
            ejections_detected_consecutive_gateway_failure,
            ejections_detected_consecutive_local_origin_failure,
            ejections_detected_degradation,
            ejections_detected_failure_percentage,
            ejections_detected_local_origin_failure_percentage,
            ejections_detected_local_origin_success_rate,
            ejections_detected_success_rate,
            ejections_enforced_consecutive_5xx,
            ejections_enforced_consecutive_gateway_failure,
            ejections_enforced_consecutive_local_origin_failure,
            ejections_enforced_failure_percentage,
            ejections_enforced_local_origin_failure_percentage,
            ejections_enforced_local_origin_success_rate,
            ejections_enforced_success_rate,
            ejections_enforced_total,
            ejections_overflow,
            ejections_success_rate,
            ejections_total,
        }
        gauges { ejections_active }
        histograms {}
    }
}

impl Scope for OutlierStats {
    fn visit(&self, v: &mut dyn Visitor) {
        self.visit_declared(v);
    }
}

/// Why a host is ejected (Envoy's `EjectionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    LocalOriginSuccessRate,
    FailurePercentage,
    LocalOriginFailurePercentage,
}

/// What a try met before any response (Envoy's local-origin results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// The connect failed, or the connection was reset before a response.
    ConnectFailed,
    /// A timeout (the route's or the try's).
    Timeout,
}

/// Requests in an interval: the total in the high half, successes in the low half, so one
/// atomic add counts a request and one swap takes the interval's counts.
#[derive(Debug, Default)]
struct Bucket(AtomicU64);

impl Bucket {
    #[inline]
    fn add(&self, success: bool) {
        self.0.fetch_add((1 << 32) | u64::from(success), Relaxed);
    }

    /// The interval's (total, successes), starting the next.
    fn take(&self) -> (u64, u64) {
        let v = self.0.swap(0, Relaxed);
        (v >> 32, v & 0xffff_ffff)
    }
}

/// One host's counts, shared by every worker (each host's `HostRt` holds it).
#[derive(Debug, Default)]
pub struct HostMonitor {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// Responses (and, unless split, local failures as their codes).
    external: Bucket,
    /// Local-origin results, when split.
    local: Bucket,
}

/// Adds one to a consecutive counter: whether that reached `threshold` (only the try that
/// reaches it says so; a threshold of 0 is never reached).
#[inline]
fn bump(c: &AtomicU32, threshold: u32) -> bool {
    c.fetch_add(1, Relaxed).wrapping_add(1) == threshold
}

/// Zeroes a counter, writing only when it is not 0 already (most requests succeed).
#[inline]
fn zero(c: &AtomicU32) {
    if c.load(Relaxed) != 0 {
        c.store(0, Relaxed);
    }
}

impl HostMonitor {
    /// A response from the host with `code` (Envoy's `putHttpResponseCode`).
    #[inline]
    pub fn put_code(&self, code: u16, od: &OutlierState, addr: SocketAddr) {
        // Envoy's 5xx is 500 to 599; any other code is a success.
        if !(500..600).contains(&code) {
            self.external.add(true);
            zero(&self.consecutive_5xx);
            zero(&self.consecutive_gateway);
            return;
        }
        self.failure(code, od, addr);
    }

    #[cold]
    #[inline(never)]
    fn failure(&self, code: u16, od: &OutlierState, addr: SocketAddr) {
        let cfg = &od.cfg;
        self.external.add(false);
        if matches!(code, 502..=504) {
            if bump(&self.consecutive_gateway, cfg.consecutive_gateway_failure) {
                od.notify(addr, Kind::ConsecutiveGatewayFailure);
            }
        } else {
            zero(&self.consecutive_gateway);
        }
        if bump(&self.consecutive_5xx, cfg.consecutive_5xx) {
            od.notify(addr, Kind::Consecutive5xx);
        }
    }

    /// A try that met `what` before any response: without the split, Envoy's 503 (a failed
    /// connect or a reset) or 504 (a timeout); with it, a local-origin failure.
    #[cold]
    pub fn put_local(&self, what: Local, od: &OutlierState, addr: SocketAddr) {
        let cfg = &od.cfg;
        if !cfg.split_external_local_origin_errors {
            let code = match what {
                Local::ConnectFailed => 503,
                Local::Timeout => 504,
            };
            self.failure(code, od, addr);
            return;
        }
        self.local.add(false);
        if bump(
            &self.consecutive_local,
            cfg.consecutive_local_origin_failure,
        ) {
            od.notify(addr, Kind::ConsecutiveLocalOriginFailure);
        }
    }

    /// A try that has its connection (a new one or one from the pool): with the split, a
    /// local-origin success (Envoy's `LocalOriginConnectSuccess` at every pool-ready), which
    /// also ends a run of local failures.
    #[inline]
    pub fn put_connected(&self, od: &OutlierState) {
        if od.cfg.split_external_local_origin_errors {
            self.local.add(true);
            zero(&self.consecutive_local);
        }
    }

    /// Every run starts over (a host back from an ejection).
    fn reset_all(&self) {
        for c in [
            &self.consecutive_5xx,
            &self.consecutive_gateway,
            &self.consecutive_local,
        ] {
            c.store(0, Relaxed);
        }
    }

    fn reset(&self, kind: Kind) {
        match kind {
            Kind::Consecutive5xx => self.consecutive_5xx.store(0, Relaxed),
            Kind::ConsecutiveGatewayFailure => self.consecutive_gateway.store(0, Relaxed),
            Kind::ConsecutiveLocalOriginFailure => self.consecutive_local.store(0, Relaxed),
            _ => {}
        }
    }
}

/// The detector's record of one host.
#[derive(Debug)]
struct Record {
    monitor: Arc<HostMonitor>,
    /// The host is in the cluster (as the health thread last heard, or as a worker that
    /// asked for its monitor has it). A record of a host that left is kept while a worker's
    /// host still holds its monitor, so a host that comes back counts where it did.
    member: bool,
    /// When it was ejected, while it is.
    ejected_at: Option<Instant>,
    /// When it last came back.
    unejected_at: Option<Instant>,
    /// Envoy's ejection time multiplier: up by one at each ejection (to the cap), down by one
    /// at each interval the host spends back.
    backoff: u32,
    /// This ejection's random extra time.
    jitter: Duration,
    /// Its success rate in the last interval with enough requests (external, local origin),
    /// -1 without one, for `/clusters`.
    success_rate: [f64; 2],
}

impl Record {
    /// Ends its ejection at `now`: its runs start over; its multiplier stays (Envoy's).
    fn bring_back(&mut self, now: Instant) {
        self.ejected_at = None;
        self.unejected_at = Some(now);
        self.monitor.reset_all();
    }

    fn new() -> Record {
        Record {
            monitor: Arc::default(),
            member: true,
            ejected_at: None,
            unejected_at: None,
            backoff: 0,
            jitter: Duration::ZERO,
            success_rate: [-1.0; 2],
        }
    }
}

/// What the detector shows on `/clusters`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterRates {
    /// The mean success rate and the ejection threshold of the last interval that computed
    /// them (external origin), -1 otherwise.
    pub average: f64,
    pub threshold: f64,
    /// The same for local-origin results (with the split).
    pub local_average: f64,
    pub local_threshold: f64,
}

#[derive(Debug)]
struct Detector {
    hosts: HashMap<SocketAddr, Record>,
    /// Hosts ejected since the health thread last asked ([`OutlierState::take_ejected`]).
    ejected: Vec<SocketAddr>,
    /// (average, threshold) per origin, -1 when the last interval computed none.
    rates: [(f64, f64); 2],
}

/// One cluster's outlier detection: its config, stats and what it found, shared by the health
/// thread (the only writer of ejections), the workers (reading who is ejected, reporting) and
/// the admin.
#[derive(Debug)]
pub struct OutlierState {
    /// The config.
    pub cfg: OutlierDetection,
    /// The cluster's name.
    pub cluster: Arc<str>,
    /// `outlier_detection.*`.
    pub stats: Arc<OutlierStats>,
    inner: Mutex<Detector>,
    /// The health thread (set once it has the state).
    pub(super) thread: OnceLock<tokio::sync::mpsc::UnboundedSender<HcCmd>>,
}

impl OutlierState {
    /// A detector with no host ejected.
    pub fn new(cfg: OutlierDetection, cluster: Arc<str>) -> OutlierState {
        OutlierState {
            cfg,
            cluster,
            stats: Arc::default(),
            inner: Mutex::new(Detector {
                hosts: HashMap::new(),
                ejected: Vec::new(),
                rates: [(-1.0, -1.0); 2],
            }),
            thread: OnceLock::new(),
        }
    }

    /// The detector of a changed cluster of the same name: Envoy builds the cluster and its
    /// detector anew (no host ejected, counts from zero); its stats go on.
    pub fn succeed(cfg: OutlierDetection, old: &OutlierState) -> OutlierState {
        OutlierState {
            stats: old.stats.clone(),
            ..OutlierState::new(cfg, old.cluster.clone())
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Detector> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The monitor of the host at `addr` (made on first asking: by a worker building its
    /// hosts, or by the health thread).
    pub fn monitor(&self, addr: SocketAddr) -> Arc<HostMonitor> {
        let mut d = self.lock();
        let r = d.hosts.entry(addr).or_insert_with(Record::new);
        r.member = true;
        r.monitor.clone()
    }

    /// Whether the host at `addr` is ejected.
    pub fn ejected(&self, addr: SocketAddr) -> bool {
        self.lock()
            .hosts
            .get(&addr)
            .is_some_and(|r| r.ejected_at.is_some())
    }

    /// The host's success rates (external, local origin) for `/clusters`, -1 where none.
    pub fn success_rates(&self, addr: SocketAddr) -> [f64; 2] {
        self.lock()
            .hosts
            .get(&addr)
            .map_or([-1.0; 2], |r| r.success_rate)
    }

    /// The cluster's success-rate average and threshold for `/clusters`.
    pub fn rates(&self) -> ClusterRates {
        let r = self.lock().rates;
        ClusterRates {
            average: r[0].0,
            threshold: r[0].1,
            local_average: r[1].0,
            local_threshold: r[1].1,
        }
    }

    /// A worker's counter crossed its threshold: the health thread decides.
    #[cold]
    fn notify(&self, addr: SocketAddr, kind: Kind) {
        if let Some(tx) = self.thread.get() {
            let _ = tx.send(HcCmd::Outlier {
                state: self as *const OutlierState as usize,
                addr,
                kind,
            });
        }
    }

    /// The cluster's hosts are `hosts` now (their monitors made): a host that left is no
    /// longer counted, nor ejected (Envoy forgets it), and its record goes once no worker's
    /// host holds its monitor. Whether an ejected host left.
    pub(super) fn retain(&self, hosts: &HashSet<SocketAddr>) -> bool {
        let mut d = self.lock();
        let mut left = false;
        d.hosts.retain(|a, r| {
            r.member = hosts.contains(a);
            if !r.member && r.ejected_at.take().is_some() {
                left = true;
            }
            r.member || Arc::strong_count(&r.monitor) > 1
        });
        for a in hosts {
            d.hosts.entry(*a).or_insert_with(Record::new);
        }
        let ejected = d.hosts.values().filter(|r| r.ejected_at.is_some()).count();
        self.stats.ejections_active.set(ejected as u64);
        left
    }

    /// A consecutive-failure threshold was reached on `addr` (Envoy's
    /// `onConsecutiveErrorWorker`): counted as detected, ejected if the limits allow, and its
    /// counter starts over. Whether the host is now ejected.
    pub(super) fn on_consecutive(&self, addr: SocketAddr, kind: Kind, now: Instant) -> bool {
        let mut d = self.lock();
        let Some(r) = d.hosts.get(&addr) else {
            return false;
        };
        // A host that is no longer the cluster's: its run starts over, should it come back.
        if !r.member {
            r.monitor.reset(kind);
            return false;
        }
        // One already ejected (its counter crossed again meanwhile) is left as it is.
        if r.ejected_at.is_some() {
            return false;
        }
        let monitor = r.monitor.clone();
        self.detected(kind);
        if kind == Kind::Consecutive5xx {
            self.stats.ejections_consecutive_5xx.inc();
        }
        let ejected = self.eject(&mut d, addr, kind, now);
        monitor.reset(kind);
        ejected
    }

    /// A kind's counters and enforcing percentage: `ejections_detected_<kind>`,
    /// `ejections_enforced_<kind>` and `enforcing_<kind>`.
    fn of(&self, kind: Kind) -> (&Counter, &Counter, u32) {
        let (s, c) = (&*self.stats, &self.cfg);
        match kind {
            Kind::Consecutive5xx => (
                &s.ejections_detected_consecutive_5xx,
                &s.ejections_enforced_consecutive_5xx,
                c.enforcing_consecutive_5xx,
            ),
            Kind::ConsecutiveGatewayFailure => (
                &s.ejections_detected_consecutive_gateway_failure,
                &s.ejections_enforced_consecutive_gateway_failure,
                c.enforcing_consecutive_gateway_failure,
            ),
            Kind::ConsecutiveLocalOriginFailure => (
                &s.ejections_detected_consecutive_local_origin_failure,
                &s.ejections_enforced_consecutive_local_origin_failure,
                c.enforcing_consecutive_local_origin_failure,
            ),
            Kind::SuccessRate => (
                &s.ejections_detected_success_rate,
                &s.ejections_enforced_success_rate,
                c.enforcing_success_rate,
            ),
            Kind::LocalOriginSuccessRate => (
                &s.ejections_detected_local_origin_success_rate,
                &s.ejections_enforced_local_origin_success_rate,
                c.enforcing_local_origin_success_rate,
            ),
            Kind::FailurePercentage => (
                &s.ejections_detected_failure_percentage,
                &s.ejections_enforced_failure_percentage,
                c.enforcing_failure_percentage,
            ),
            Kind::LocalOriginFailurePercentage => (
                &s.ejections_detected_local_origin_failure_percentage,
                &s.ejections_enforced_local_origin_failure_percentage,
                c.enforcing_failure_percentage_local_origin,
            ),
        }
    }

    fn detected(&self, kind: Kind) {
        self.of(kind).0.inc();
    }

    /// Envoy's `ejectHost`: within `max_ejection_percent` (counting this host), or the first
    /// with `always_eject_one_host`, the ejection is enforced `enforcing` percent of the
    /// time; over the limit it is an overflow. Whether the host was ejected.
    fn eject(&self, d: &mut Detector, addr: SocketAddr, kind: Kind, now: Instant) -> bool {
        let total = d.hosts.values().filter(|r| r.member).count().max(1);
        let active = d.hosts.values().filter(|r| r.ejected_at.is_some()).count();
        let max = f64::from(self.cfg.max_ejection_percent.min(100));
        let percent = 100.0 * (active + 1) as f64 / total as f64;
        let allowed = percent <= max || (self.cfg.always_eject_one_host && active == 0);
        if !allowed {
            self.stats.ejections_overflow.inc();
            return false;
        }
        // The deprecated total counts these two kinds within the limit, enforced or not.
        if matches!(kind, Kind::Consecutive5xx | Kind::SuccessRate) {
            self.stats.ejections_total.inc();
        }
        let (_, enforced, enforce) = self.of(kind);
        if enforce == 0 || fastrand::u32(0..100) >= enforce {
            return false;
        }
        let base = self.cfg.base_ejection_time_ms;
        let max_time = self.cfg.max_ejection_time_ms;
        let jitter_max = self.cfg.max_ejection_time_jitter_ms;
        let Some(r) = d.hosts.get_mut(&addr) else {
            return false;
        };
        r.ejected_at = Some(now);
        d.ejected.push(addr);
        // The multiplier grows while the time it gives stays below the cap plus one base.
        if u64::from(r.backoff).saturating_mul(base) < max_time.saturating_add(base) {
            r.backoff += 1;
        }
        r.jitter = Duration::from_millis(if jitter_max == 0 {
            0
        } else {
            fastrand::u64(0..=jitter_max)
        });
        self.stats.ejections_active.inc();
        self.stats.ejections_enforced_total.inc();
        enforced.inc();
        true
    }

    /// The hosts ejected since the last call, whose pools the workers drain.
    pub(super) fn take_ejected(&self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.lock().ejected)
    }

    /// Brings back an ejected host now (an active health check passed it). Whether it was
    /// ejected.
    pub(super) fn uneject(&self, addr: SocketAddr, now: Instant) -> bool {
        let mut d = self.lock();
        let Some(r) = d.hosts.get_mut(&addr) else {
            return false;
        };
        if r.ejected_at.is_none() {
            return false;
        }
        r.bring_back(now);
        self.stats.ejections_active.dec();
        true
    }

    /// Envoy's interval timer: hosts whose ejection time is over come back (their counters
    /// start over), the others' multipliers come down, and the interval's counts are checked
    /// for success rate and failure percentage. Whether any host was ejected or came back.
    pub(super) fn tick(&self, now: Instant) -> bool {
        let mut d = self.lock();
        let base = self.cfg.base_ejection_time_ms;
        let max_time = self.cfg.max_ejection_time_ms;
        let mut changed = false;
        let mut volumes: Vec<(SocketAddr, [(u64, u64); 2])> = Vec::with_capacity(d.hosts.len());
        for (addr, r) in d.hosts.iter_mut() {
            if !r.member {
                // Its counts are of no interval of the cluster's.
                r.monitor.external.take();
                r.monitor.local.take();
                continue;
            }
            if let Some(at) = r.ejected_at {
                let time =
                    Duration::from_millis(u64::from(r.backoff).saturating_mul(base).min(max_time))
                        + r.jitter;
                if now.saturating_duration_since(at) >= time {
                    r.bring_back(now);
                    self.stats.ejections_active.dec();
                    changed = true;
                }
            }
            // Each interval's counts start afresh; the last interval's are judged.
            let ext = r.monitor.external.take();
            let local = r.monitor.local.take();
            r.success_rate = [-1.0; 2];
            volumes.push((*addr, [ext, local]));
        }
        let origins = if self.cfg.split_external_local_origin_errors {
            2
        } else {
            1
        };
        for origin in 0..origins {
            changed |= self.judge(&mut d, &volumes, origin, now);
        }
        // A host back for a whole interval (not one that came back at this tick) has its
        // multiplier come down by one, each interval.
        let interval = Duration::from_millis(self.cfg.interval_ms);
        for r in d.hosts.values_mut() {
            if r.ejected_at.is_none()
                && r.backoff > 0
                && r.unejected_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= interval)
            {
                r.backoff -= 1;
            }
        }
        changed
    }

    /// Envoy's `processSuccessRateEjections` for one origin (0: external, 1: local).
    fn judge(
        &self,
        d: &mut Detector,
        volumes: &[(SocketAddr, [(u64, u64); 2])],
        origin: usize,
        now: Instant,
    ) -> bool {
        let c = &self.cfg;
        d.rates[origin] = (-1.0, -1.0);
        let n = d.hosts.values().filter(|r| r.member).count() as u64;
        let (sr_hosts, sr_volume) = (
            u64::from(c.success_rate_minimum_hosts),
            u64::from(c.success_rate_request_volume),
        );
        let (fp_hosts, fp_volume) = (
            u64::from(c.failure_percentage_minimum_hosts),
            u64::from(c.failure_percentage_request_volume),
        );
        if n < sr_hosts && n < fp_hosts {
            return false;
        }
        let mut sr_valid: Vec<(SocketAddr, f64)> = Vec::new();
        let mut fp_valid: Vec<(SocketAddr, f64)> = Vec::new();
        let mut sum = 0.0;
        for (addr, v) in volumes {
            let Some(r) = d.hosts.get_mut(addr) else {
                continue;
            };
            if r.ejected_at.is_some() {
                continue;
            }
            let (total, success) = v[origin];
            if total == 0 {
                continue;
            }
            let rate = success as f64 * 100.0 / total as f64;
            if total >= sr_volume.min(fp_volume) {
                r.success_rate[origin] = rate;
            }
            if total >= sr_volume {
                sr_valid.push((*addr, rate));
                sum += rate;
            }
            if total >= fp_volume {
                fp_valid.push((*addr, rate));
            }
        }
        let mut changed = false;
        if !sr_valid.is_empty() && sr_valid.len() as u64 >= sr_hosts {
            let (mean, threshold) = ejection_threshold(
                sum,
                &sr_valid,
                f64::from(c.success_rate_stdev_factor) / 1000.0,
            );
            d.rates[origin] = (mean, threshold);
            let kind = if origin == 0 {
                Kind::SuccessRate
            } else {
                Kind::LocalOriginSuccessRate
            };
            for (addr, rate) in &sr_valid {
                if *rate < threshold {
                    self.stats.ejections_success_rate.inc();
                    self.detected(kind);
                    changed |= self.eject(d, *addr, kind, now);
                }
            }
        }
        if !fp_valid.is_empty() && fp_valid.len() as u64 >= fp_hosts {
            let kind = if origin == 0 {
                Kind::FailurePercentage
            } else {
                Kind::LocalOriginFailurePercentage
            };
            for (addr, rate) in &fp_valid {
                if 100.0 - rate >= f64::from(c.failure_percentage_threshold) {
                    self.detected(kind);
                    // One the success-rate check ejected just now stays as it is.
                    if d.hosts.get(addr).is_some_and(|r| r.ejected_at.is_none()) {
                        changed |= self.eject(d, *addr, kind, now);
                    }
                }
            }
        }
        changed
    }
}

/// Envoy's success-rate threshold: the mean less `factor` standard deviations (population).
fn ejection_threshold(sum: f64, rates: &[(SocketAddr, f64)], factor: f64) -> (f64, f64) {
    let n = rates.len() as f64;
    let mean = sum / n;
    let variance = rates
        .iter()
        .map(|(_, r)| (r - mean) * (r - mean))
        .sum::<f64>()
        / n;
    (mean, mean - factor * variance.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn state(cfg: OutlierDetection, hosts: u16) -> OutlierState {
        let s = OutlierState::new(cfg, Arc::from("c"));
        let set: HashSet<_> = (1..=hosts).map(addr).collect();
        s.retain(&set);
        s
    }

    #[test]
    fn a_consecutive_counter_fires_once_at_its_threshold() {
        let c = AtomicU32::new(0);
        let fired: Vec<bool> = (0..7).map(|_| bump(&c, 5)).collect();
        assert_eq!(fired, [false, false, false, false, true, false, false]);
        let z = AtomicU32::new(0);
        assert!((0..10).all(|_| !bump(&z, 0)));
    }

    #[test]
    fn the_bucket_counts_totals_and_successes_in_one_word() {
        let b = Bucket::default();
        b.add(true);
        b.add(false);
        b.add(true);
        assert_eq!(b.take(), (3, 2));
        assert_eq!(b.take(), (0, 0));
    }

    #[test]
    fn the_threshold_is_the_mean_less_factor_deviations() {
        let rates: Vec<_> = [100.0, 100.0, 100.0, 100.0, 50.0]
            .iter()
            .enumerate()
            .map(|(i, r)| (addr(i as u16), *r))
            .collect();
        let (mean, t) = ejection_threshold(450.0, &rates, 1.9);
        assert_eq!(mean, 90.0);
        // Population deviation: sqrt((4*100 + 1600) / 5) = 20.
        assert!((t - (90.0 - 1.9 * 20.0)).abs() < 1e-9, "{t}");
    }

    #[test]
    fn the_ejection_time_grows_with_each_ejection_to_its_cap() {
        let cfg = OutlierDetection {
            base_ejection_time_ms: 1000,
            max_ejection_time_ms: 2500,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        let s = state(cfg, 1);
        let t0 = Instant::now();
        let mut at = t0;
        let mut times = Vec::new();
        for _ in 0..4 {
            assert!(s.on_consecutive(addr(1), Kind::Consecutive5xx, at));
            // The host stays out until a tick finds its time over.
            let mut t = at;
            loop {
                t += Duration::from_millis(100);
                if s.tick(t) {
                    break;
                }
            }
            times.push((t - at).as_millis());
            at = t;
        }
        // base x 1, x 2, then the cap (2.5 s) holds.
        assert_eq!(times, [1000, 2000, 2500, 2500]);
        assert_eq!(s.stats.ejections_enforced_consecutive_5xx.get(), 4);
        assert_eq!(s.stats.ejections_active.get(), 0);
    }

    #[test]
    fn the_multiplier_comes_down_one_a_whole_interval_back() {
        // Envoy's, measured: interval 0.5 s, base 1 s; three ejections in a row, then back
        // for H s before the next: H=0 gives base x 4, H=1.2 base x 2, H=2.2 base x 1.
        let cfg = OutlierDetection {
            interval_ms: 500,
            base_ejection_time_ms: 1000,
            max_ejection_time_ms: 10_000,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        for (healthy_ms, want) in [(0u64, 4000u128), (1200, 2000), (2200, 1000)] {
            let s = state(cfg.clone(), 1);
            let mut t = Instant::now();
            let tick = Duration::from_millis(500);
            for _ in 0..3 {
                assert!(s.on_consecutive(addr(1), Kind::Consecutive5xx, t));
                while !s.tick(t + tick) {
                    t += tick;
                }
                t += tick;
            }
            // Back at t; the ticks go on while it stays healthy.
            let back = t;
            while t + tick <= back + Duration::from_millis(healthy_ms) {
                t += tick;
                assert!(!s.tick(t));
            }
            assert!(s.on_consecutive(addr(1), Kind::Consecutive5xx, t));
            let at = t;
            while !s.tick(t + tick) {
                t += tick;
            }
            t += tick;
            let took = (t - at).as_millis();
            assert!(
                took >= want && took < want + 500,
                "H={healthy_ms}: {took} ms"
            );
        }
    }

    #[test]
    fn the_deprecated_total_counts_5xx_and_success_rate_within_the_limit() {
        let cfg = OutlierDetection {
            max_ejection_percent: 100,
            enforcing_consecutive_5xx: 0,
            ..OutlierDetection::default()
        };
        let s = state(cfg, 2);
        let now = Instant::now();
        // Not enforced: still counted in the total.
        assert!(!s.on_consecutive(addr(1), Kind::Consecutive5xx, now));
        assert_eq!(s.stats.ejections_total.get(), 1);
        assert_eq!(s.stats.ejections_consecutive_5xx.get(), 1);
        // A gateway failure is not (enforced or not).
        assert!(!s.on_consecutive(addr(1), Kind::ConsecutiveGatewayFailure, now));
        assert_eq!(s.stats.ejections_total.get(), 1);
        // Over the limit: an overflow, out of the total but a detection all the same.
        let one = OutlierDetection {
            max_ejection_percent: 10,
            ..OutlierDetection::default()
        };
        let s = state(one, 2);
        assert!(!s.on_consecutive(addr(1), Kind::Consecutive5xx, now));
        assert_eq!(s.stats.ejections_total.get(), 0);
        assert_eq!(s.stats.ejections_overflow.get(), 1);
        assert_eq!(s.stats.ejections_consecutive_5xx.get(), 1);
    }

    #[test]
    fn a_host_that_leaves_is_no_longer_ejected_and_comes_back_with_its_monitor() {
        let cfg = OutlierDetection {
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        let s = state(cfg, 2);
        let now = Instant::now();
        // A worker's host holds the monitor of host 1.
        let held = s.monitor(addr(1));
        assert!(s.on_consecutive(addr(1), Kind::Consecutive5xx, now));
        assert_eq!(s.stats.ejections_active.get(), 1);
        // DNS drops host 1: not ejected any more, not counted.
        let only2: HashSet<_> = [addr(2)].into();
        assert!(s.retain(&only2));
        assert!(!s.ejected(addr(1)));
        assert_eq!(s.stats.ejections_active.get(), 0);
        // A crossing of a host that left is dropped and its run starts over.
        assert!(!s.on_consecutive(addr(1), Kind::Consecutive5xx, now));
        assert_eq!(s.stats.ejections_detected_consecutive_5xx.get(), 1);
        // It comes back: the worker's monitor is still the one the detector reads.
        let both: HashSet<_> = [addr(1), addr(2)].into();
        assert!(!s.retain(&both));
        assert!(Arc::ptr_eq(&held, &s.monitor(addr(1))));
        // Once no worker holds it, a host that leaves is forgotten.
        drop(held);
        s.retain(&only2);
        assert_eq!(s.lock().hosts.len(), 1);
    }

    #[test]
    fn with_the_split_local_origin_results_are_judged_apart() {
        let cfg = OutlierDetection {
            max_ejection_percent: 100,
            success_rate_request_volume: 10,
            split_external_local_origin_errors: true,
            ..OutlierDetection::default()
        };
        let s = state(cfg, 5);
        for port in 1..=5 {
            let m = s.monitor(addr(port));
            for i in 0..20 {
                // Every host answers 200; host 5's connects fail half the time.
                m.put_connected(&s);
                m.put_code(200, &s, addr(port));
                if port == 5 && i % 2 == 0 {
                    m.put_local(Local::Timeout, &s, addr(port));
                }
            }
        }
        assert!(s.tick(Instant::now()));
        assert!(s.ejected(addr(5)));
        assert_eq!(
            s.stats.ejections_enforced_local_origin_success_rate.get(),
            1
        );
        assert_eq!(s.stats.ejections_detected_success_rate.get(), 0);
        let r = s.rates();
        assert_eq!((r.average, r.threshold), (100.0, 100.0));
        assert!(r.local_average < 100.0 && r.local_threshold > 0.0);
        // Host 5 had 20 successes (its connects) and 10 failures.
        let rate = s.success_rates(addr(5))[1];
        assert!((rate - 200.0 / 3.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn codes_from_600_are_no_failures() {
        let cfg = OutlierDetection {
            consecutive_5xx: 2,
            ..OutlierDetection::default()
        };
        let s = state(cfg, 1);
        let m = s.monitor(addr(1));
        m.put_code(500, &s, addr(1));
        m.put_code(600, &s, addr(1));
        assert_eq!(m.consecutive_5xx.load(Relaxed), 0);
        assert_eq!(m.external.take(), (2, 1));
    }

    #[test]
    fn success_rate_and_failure_percentage_eject_a_host_once() {
        // Envoy ejects it twice in that tick (its gauge then counts 2); here it is ejected by
        // the success rate, and the failure percentage is counted as detected only.
        let cfg = OutlierDetection {
            max_ejection_percent: 100,
            success_rate_request_volume: 10,
            failure_percentage_request_volume: 10,
            enforcing_failure_percentage: 100,
            ..OutlierDetection::default()
        };
        let s = state(cfg, 5);
        for port in 1..=5 {
            let m = s.monitor(addr(port));
            for _ in 0..20 {
                m.external.add(port != 5);
            }
        }
        assert!(s.tick(Instant::now()));
        assert!(s.ejected(addr(5)));
        assert_eq!(s.stats.ejections_enforced_success_rate.get(), 1);
        assert_eq!(s.stats.ejections_detected_failure_percentage.get(), 1);
        assert_eq!(s.stats.ejections_enforced_failure_percentage.get(), 0);
        assert_eq!(s.stats.ejections_active.get(), 1);
    }

    #[test]
    fn an_already_ejected_host_is_left_and_the_limit_overflows() {
        let cfg = OutlierDetection {
            max_ejection_percent: 50,
            ..OutlierDetection::default()
        };
        let s = state(cfg, 4);
        let now = Instant::now();
        assert!(s.on_consecutive(addr(1), Kind::Consecutive5xx, now));
        assert!(!s.on_consecutive(addr(1), Kind::Consecutive5xx, now));
        assert!(s.on_consecutive(addr(2), Kind::Consecutive5xx, now));
        // A third of four would be 75%.
        assert!(!s.on_consecutive(addr(3), Kind::Consecutive5xx, now));
        assert_eq!(s.stats.ejections_overflow.get(), 1);
        assert_eq!(s.stats.ejections_active.get(), 2);
        assert_eq!(s.stats.ejections_detected_consecutive_5xx.get(), 3);
    }

    #[test]
    fn a_detected_ejection_not_enforced_is_only_counted() {
        let cfg = OutlierDetection {
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        let s = state(cfg, 2);
        // Gateway failures are not enforced by default.
        assert!(!s.on_consecutive(addr(1), Kind::ConsecutiveGatewayFailure, Instant::now()));
        assert_eq!(
            s.stats.ejections_detected_consecutive_gateway_failure.get(),
            1
        );
        assert_eq!(s.stats.ejections_enforced_total.get(), 0);
        assert!(!s.ejected(addr(1)));
    }

    #[test]
    fn success_rate_ejects_the_outlier_of_an_interval() {
        let cfg = OutlierDetection {
            max_ejection_percent: 100,
            success_rate_request_volume: 10,
            ..OutlierDetection::default()
        };
        let s = state(cfg, 5);
        let od = &s;
        for port in 1..=5 {
            let m = s.monitor(addr(port));
            for i in 0..100 {
                // Host 5 fails half its requests; the others 1%.
                let code = if (port == 5 && i % 2 == 0) || (port != 5 && i == 0) {
                    500
                } else {
                    200
                };
                if code < 500 {
                    m.put_code(code, od, addr(port));
                } else {
                    // Counted without reaching the consecutive threshold.
                    m.external.add(false);
                }
            }
        }
        assert!(s.tick(Instant::now()));
        assert!(s.ejected(addr(5)));
        assert!(!s.ejected(addr(1)));
        assert_eq!(s.stats.ejections_enforced_success_rate.get(), 1);
        assert_eq!(s.success_rates(addr(1))[0], 99.0);
        let r = s.rates();
        assert!((r.average - (99.0 * 4.0 + 50.0) / 5.0).abs() < 1e-9);
        assert_eq!(r.local_average, -1.0);
    }
}
