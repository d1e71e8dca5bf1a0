//! The merged, read-side view of the stats: what the admin renders.
//!
//! Workers count into their own per-worker stores (see `stats::store`); a read merges every
//! worker's values into one `StatsSnapshot`, sorted by name, which `stats::render` turns into
//! Envoy's text, JSON and Prometheus formats.

/// Whether a stat only grows (counter) or goes up and down (gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    Counter,
    Gauge,
}

/// One counter or gauge, merged across workers. `name` is Envoy's full dotted name,
/// e.g. `cluster.backend.upstream_rq_200`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatValue {
    pub name: String,
    pub kind: StatKind,
    pub value: u64,
    /// Whether the stat was ever written (Envoy's `used` flag, for `?usedonly`).
    pub used: bool,
}

/// Upper bounds of the histogram buckets, in the histogram's unit (ms for the `*_time`
/// histograms): Envoy's default `supported_buckets`.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Quantiles Envoy reports in `/stats` (as percentages).
pub const QUANTILES: [f64; 10] = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0];

/// One histogram, merged across workers.
#[derive(Debug, Clone, PartialEq)]
pub struct HistValue {
    /// Envoy's full dotted name, e.g. `cluster.backend.upstream_rq_time`.
    pub name: String,
    /// `buckets[i]` counts samples `<= BUCKETS[i]` and `> BUCKETS[i-1]` (not cumulative);
    /// `buckets[BUCKETS.len()]` counts samples above the last bound. Length `BUCKETS.len() + 1`.
    pub buckets: Vec<u64>,
    /// Number of samples.
    pub count: u64,
    /// Sum of all samples.
    pub sum: f64,
}

impl HistValue {
    /// Whether any sample was recorded.
    pub fn used(&self) -> bool {
        self.count > 0
    }
}

/// Every stat of the process at one instant, each list sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    pub stats: Vec<StatValue>,
    pub histograms: Vec<HistValue>,
}
