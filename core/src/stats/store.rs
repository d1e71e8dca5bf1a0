//! Per-worker stat storage and the merge that the admin reads.
//!
//! Each worker owns its own scopes (one per listener, HTTP connection manager and cluster) and is
//! the only thread that writes them, so an increment is a plain load and store of a relaxed
//! atomic: no `lock` prefix, no cache line shared between workers. The admin thread reads every
//! worker's scopes through the [`Store`] and sums them by name. Counters are read consistently
//! per value but not across values, as in Envoy.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::model::{HistValue, StatKind, StatValue, StatsSnapshot, BUCKETS};

/// A monotonically growing count, written by one worker only.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one. Single-writer: a load and a store, not a read-modify-write.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down, written by one worker only. Tracks whether it was ever
/// written, for Envoy's `usedonly`.
#[derive(Debug, Default)]
pub struct Gauge {
    value: AtomicU64,
    used: AtomicU64,
}

impl Gauge {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.set(self.value.load(Relaxed).wrapping_add(1));
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.set(self.value.load(Relaxed).wrapping_sub(1));
    }

    /// Adds `add` and subtracts `sub`.
    #[inline]
    pub fn add_sub(&self, add: u64, sub: u64) {
        self.set(self.value.load(Relaxed).wrapping_add(add).wrapping_sub(sub));
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, v: u64) {
        self.value.store(v, Relaxed);
        if self.used.load(Relaxed) == 0 {
            self.used.store(1, Relaxed);
        }
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Relaxed)
    }

    /// Whether the gauge was ever written (Envoy's `used` flag).
    pub fn used(&self) -> bool {
        self.used.load(Relaxed) != 0
    }
}

/// Counts one in a gauge for as long as it lives (a request in progress, a request waiting
/// for a connection), however it ends.
pub struct GaugeHold<'a>(&'a Gauge);

impl<'a> GaugeHold<'a> {
    /// Counts one in `g` until dropped.
    #[inline]
    pub fn new(g: &'a Gauge) -> GaugeHold<'a> {
        g.inc();
        GaugeHold(g)
    }
}

impl Drop for GaugeHold<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One direction of one connection as Envoy's connection counts it: every byte moved
/// (`*_cx_rx_bytes_total`, `*_cx_tx_bytes_total`), and the connection's share of the
/// `*_bytes_buffered` gauge, which is what its buffer held when it was last looked at. For the
/// read side that is the read buffer's length right after the last read (Envoy does not look
/// again once its codec has consumed it, so an idle keep-alive connection still counts the
/// size of its last read); for the write side, the bytes a write has yet to hand to the kernel.
/// `held` is the connection's own, taken off the gauge when the connection ends.
pub struct Flow<'a> {
    pub total: &'a Counter,
    pub buffered: &'a Gauge,
    pub held: &'a std::cell::Cell<u32>,
}

impl Flow<'_> {
    /// Counts `n` bytes read, after which the read buffer holds `now`.
    #[inline]
    pub fn read(&self, n: usize, now: usize) {
        self.total.add(n as u64);
        self.hold(now);
    }

    /// Counts `n` bytes written (taken by the kernel).
    #[inline]
    pub fn wrote(&self, n: usize) {
        self.total.add(n as u64);
    }

    /// The connection's buffer is empty again (a write went whole): a load, no gauge write,
    /// unless bytes had been left waiting.
    #[inline]
    pub fn drained(&self) {
        if self.held.get() != 0 {
            self.hold(0);
        }
    }

    /// The connection's buffer now holds `now` bytes. No gauge write when that has not changed
    /// (the usual case: requests of one size, writes the kernel takes whole).
    #[inline]
    pub fn hold(&self, now: usize) {
        let now = now as u32;
        let was = self.held.replace(now);
        if was != now {
            self.buffered.add_sub(u64::from(now), u64::from(was));
        }
    }
}

/// A latency histogram with Envoy's default bucket bounds, written by one worker only.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    /// f64 bits of the sum of samples.
    sum: AtomicU64,
}

/// `d` in whole milliseconds, through `u64`: a `u128` to `f64` conversion is a library call
/// (~30 instructions), and no duration here comes near 2^64 ms.
#[inline]
fn whole_ms(d: std::time::Duration) -> f64 {
    d.as_millis() as u64 as f64
}

impl Histogram {
    /// Records a duration in whole milliseconds, as Envoy's `*_time` and `*_ms` histograms do
    /// (a 0.7 ms request records 0).
    #[inline]
    pub fn record_ms(&self, since: std::time::Instant) {
        self.record(whole_ms(since.elapsed()));
    }

    /// [`Histogram::record_ms`] for a duration whose end the caller already read off the clock.
    #[inline]
    pub fn record_ms_until(&self, since: std::time::Instant, until: std::time::Instant) {
        self.record(whole_ms(until.saturating_duration_since(since)));
    }

    /// Records one sample (in the histogram's unit).
    #[inline]
    pub fn record(&self, v: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(BUCKETS.len());
        let b = &self.buckets[i];
        b.store(b.load(Relaxed) + 1, Relaxed);
        self.count.store(self.count.load(Relaxed) + 1, Relaxed);
        let sum = f64::from_bits(self.sum.load(Relaxed)) + v;
        self.sum.store(sum.to_bits(), Relaxed);
    }

    fn merge_into(&self, h: &mut HistValue) {
        for (acc, b) in h.buckets.iter_mut().zip(self.buckets.iter()) {
            *acc += b.load(Relaxed);
        }
        h.count += self.count.load(Relaxed);
        h.sum += f64::from_bits(self.sum.load(Relaxed));
    }
}

/// Receives every stat of a scope during a merge.
pub trait Visitor {
    /// A counter or gauge named `prefix` + `name`.
    fn stat(&mut self, name: &str, kind: StatKind, value: u64, used: bool);
    /// A histogram named `prefix` + `name`.
    fn histogram(&mut self, name: &str, h: &Histogram);
}

/// A group of stats sharing a name prefix (`cluster.backend.`), owned by one worker.
pub trait Scope: Send + Sync {
    /// Calls `v` for every stat, with names relative to the scope prefix.
    fn visit(&self, v: &mut dyn Visitor);
}

/// Declares a scope struct of counters, gauges and histograms and its [`Scope`] impl, so a stat
/// is named once and rendered from the same declaration.
#[macro_export]
macro_rules! stat_scope {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            counters { $($c:ident),* $(,)? }
            gauges { $($g:ident),* $(,)? }
            histograms { $($h:ident),* $(,)? }
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        #[allow(missing_docs)]
        pub struct $name {
            $(pub $c: $crate::stats::Counter,)*
            $(pub $g: $crate::stats::Gauge,)*
            $(pub $h: $crate::stats::Histogram,)*
        }

        impl $name {
            fn visit_declared(&self, v: &mut dyn $crate::stats::Visitor) {
                $(v.stat(stringify!($c), $crate::stats::StatKind::Counter, self.$c.get(), self.$c.get() > 0);)*
                $(v.stat(stringify!($g), $crate::stats::StatKind::Gauge, self.$g.get(), self.$g.used());)*
                $(v.histogram(stringify!($h), &self.$h);)*
            }
        }
    };
}

/// Response-code counters (`upstream_rq_200`), created on first use like Envoy's dynamic stats.
/// The 500 slots (codes 100..=599) are allocated only for scopes that see traffic.
#[derive(Debug, Default)]
pub struct CodeCounters(OnceLock<Box<[Counter]>>);

impl CodeCounters {
    /// Counts one response with `code`; codes outside 100..=599 are not counted.
    #[inline]
    pub fn inc(&self, code: u16) {
        if (100..600).contains(&code) {
            let slots = self
                .0
                .get_or_init(|| (0..500).map(|_| Counter::default()).collect());
            slots[(code - 100) as usize].inc();
        }
    }

    /// Whether any code was counted (the counters exist, as Envoy's once created).
    pub fn used(&self) -> bool {
        self.0.get().is_some()
    }

    /// Visits `<prefix><code>` for every code seen.
    pub fn visit(&self, prefix: &str, v: &mut dyn Visitor) {
        if let Some(slots) = self.0.get() {
            for (i, c) in slots.iter().enumerate() {
                let n = c.get();
                if n > 0 {
                    v.stat(&format!("{prefix}{}", i + 100), StatKind::Counter, n, true);
                }
            }
        }
    }
}

struct Registered {
    prefix: String,
    scope: Weak<dyn Scope>,
}

/// Every worker's scopes, reachable from the admin thread. Registration happens when a worker
/// builds its runtime state for a snapshot, never per request.
#[derive(Default)]
pub struct Store {
    scopes: Mutex<Vec<Registered>>,
    /// Counter values at the last `/reset_counters`, subtracted on read, so a reset never races
    /// with a worker's unlocked increment.
    baseline: Mutex<HashMap<String, u64>>,
}

type Merged = (
    BTreeMap<String, (StatKind, u64, bool)>,
    BTreeMap<String, HistValue>,
);

impl Store {
    /// Makes `scope` visible to readers under `prefix` (e.g. `cluster.backend.`). The store
    /// holds it weakly: when the worker drops it, its stats disappear. A scope registered under
    /// a prefix that no live scope has starts from zero: an old `/reset_counters` baseline for
    /// that prefix is dropped.
    pub fn register(&self, prefix: String, scope: &Arc<dyn Scope>) {
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        scopes.retain(|r| r.scope.strong_count() > 0);
        if !scopes.iter().any(|r| r.prefix == prefix) {
            let mut b = self.baseline.lock().unwrap_or_else(|e| e.into_inner());
            b.retain(|name, _| !name.starts_with(&prefix));
        }
        scopes.push(Registered {
            prefix,
            scope: Arc::downgrade(scope),
        });
    }

    /// Sums every registered scope by name, without the reset baseline.
    fn merge(&self) -> Merged {
        struct Merge {
            prefix: String,
            stats: BTreeMap<String, (StatKind, u64, bool)>,
            hists: BTreeMap<String, HistValue>,
        }
        impl Visitor for Merge {
            fn stat(&mut self, name: &str, kind: StatKind, value: u64, used: bool) {
                let full = format!("{}{}", self.prefix, name);
                let e = self.stats.entry(full).or_insert((kind, 0, false));
                e.1 = e.1.wrapping_add(value);
                e.2 |= used;
            }
            fn histogram(&mut self, name: &str, h: &Histogram) {
                let full = format!("{}{}", self.prefix, name);
                let e = self.hists.entry(full.clone()).or_insert_with(|| HistValue {
                    name: full,
                    buckets: vec![0; BUCKETS.len() + 1],
                    count: 0,
                    sum: 0.0,
                });
                h.merge_into(e);
            }
        }
        let mut m = Merge {
            prefix: String::new(),
            stats: BTreeMap::new(),
            hists: BTreeMap::new(),
        };
        let scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        for r in scopes.iter() {
            if let Some(s) = r.scope.upgrade() {
                m.prefix.clear();
                m.prefix.push_str(&r.prefix);
                s.visit(&mut m);
            }
        }
        (m.stats, m.hists)
    }

    /// Sums every registered scope by name, applies the reset baseline, adds `extra` (server
    /// stats computed at read time) and returns the sorted snapshot.
    pub fn snapshot(&self, extra: &[(String, StatKind, u64)]) -> StatsSnapshot {
        let (mut merged, hists) = self.merge();
        for (name, kind, value) in extra {
            // A counter is used once counted (Envoy's `usedonly`); these gauges are set.
            let used = *kind != StatKind::Counter || *value > 0;
            merged.insert(name.clone(), (*kind, *value, used));
        }
        let baseline = self.baseline.lock().unwrap_or_else(|e| e.into_inner());
        let stats = merged
            .into_iter()
            .map(|(name, (kind, value, used))| {
                let value = match (kind, baseline.get(&name)) {
                    (StatKind::Counter, Some(b)) => value.saturating_sub(*b),
                    _ => value,
                };
                StatValue {
                    name,
                    kind,
                    value,
                    used,
                }
            })
            .collect();
        StatsSnapshot {
            stats,
            histograms: hists.into_values().collect(),
        }
    }

    /// Envoy's `/reset_counters`: every counter reads as zero from now on. The baseline lock is
    /// held throughout, so no reader sees a half-reset state.
    /// `extra`: the counters kept beside the workers' (as passed to [`Store::snapshot`]).
    pub fn reset_counters(&self, extra: &[(String, StatKind, u64)]) {
        let mut b = self.baseline.lock().unwrap_or_else(|e| e.into_inner());
        let (merged, _) = self.merge();
        b.clear();
        let extra = extra.iter().map(|(n, k, v)| (n.clone(), (*k, *v, true)));
        for (name, (kind, value, _)) in merged.into_iter().chain(extra) {
            if kind == StatKind::Counter {
                b.insert(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::stat_scope! {
        /// Test scope.
        pub struct TestStats {
            counters { rq_total }
            gauges { cx_active }
            histograms { rq_time }
        }
    }
    impl Scope for TestStats {
        fn visit(&self, v: &mut dyn Visitor) {
            self.visit_declared(v);
        }
    }

    #[test]
    fn merges_workers_by_name_and_resets_counters_only() {
        let store = Store::default();
        let a: Arc<dyn Scope> = Arc::new(TestStats::default());
        let b = Arc::new(TestStats::default());
        let b_dyn: Arc<dyn Scope> = b.clone();
        store.register("x.".into(), &a);
        store.register("x.".into(), &b_dyn);
        b.rq_total.add(3);
        b.cx_active.inc();
        b.rq_time.record(3.0);
        let snap = store.snapshot(&[]);
        let get = |s: &StatsSnapshot, n: &str| s.stats.iter().find(|v| v.name == n).unwrap().value;
        assert_eq!(get(&snap, "x.rq_total"), 3);
        assert_eq!(get(&snap, "x.cx_active"), 1);
        assert_eq!(snap.histograms[0].count, 1);
        assert_eq!(
            snap.histograms[0].buckets[2], 1,
            "3ms falls in the (1, 5] bucket"
        );
        store.reset_counters(&[]);
        b.rq_total.inc();
        let snap = store.snapshot(&[]);
        assert_eq!(get(&snap, "x.rq_total"), 1);
        assert_eq!(get(&snap, "x.cx_active"), 1, "gauges are not reset");
    }

    #[test]
    fn a_re_created_scope_starts_from_zero_after_a_reset() {
        // Regression: the reset baseline outlived its scope, so a cluster removed and added back
        // read 0 until it passed its old count.
        let store = Store::default();
        let a = Arc::new(TestStats::default());
        let a_dyn: Arc<dyn Scope> = a.clone();
        store.register("c.".into(), &a_dyn);
        a.rq_total.add(10);
        store.reset_counters(&[]);
        drop((a, a_dyn));
        let b = Arc::new(TestStats::default());
        let b_dyn: Arc<dyn Scope> = b.clone();
        store.register("c.".into(), &b_dyn);
        b.rq_total.add(3);
        let snap = store.snapshot(&[]);
        assert_eq!(
            snap.stats
                .iter()
                .find(|v| v.name == "c.rq_total")
                .unwrap()
                .value,
            3
        );
    }

    #[test]
    fn dropped_scopes_disappear() {
        let store = Store::default();
        let a: Arc<dyn Scope> = Arc::new(TestStats::default());
        store.register("gone.".into(), &a);
        drop(a);
        assert!(store.snapshot(&[]).stats.is_empty());
    }
}
