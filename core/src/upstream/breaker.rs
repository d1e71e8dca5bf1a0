//! A cluster's circuit breakers, as Envoy's resource manager counts them: connections,
//! requests waiting for a connection and requests on a connection, each against its limit,
//! counted across every worker (one relaxed atomic each, shared by the workers).
//!
//! A route's `priority` picks the limits its requests count against. Checks are Envoy's: a
//! count is compared with its limit and then taken, not reserved in one step, so workers racing
//! at the limit may pass it by one each, as Envoy's may.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::config::Thresholds as Config;
use crate::stats::{StatKind, Visitor};

/// One counted resource and its limit.
#[derive(Debug, Default)]
pub struct Resource {
    open: AtomicU64,
    max: u64,
    /// Whether a limit of 0 was ever passed (the pool's first connection is made regardless):
    /// Envoy's gauge moves only when the count does.
    used: AtomicBool,
}

impl Resource {
    fn new(max: u64) -> Resource {
        Resource {
            open: AtomicU64::new(0),
            max,
            used: AtomicBool::new(false),
        }
    }

    /// Whether one more may be taken.
    #[inline]
    pub fn has_room(&self) -> bool {
        self.open.load(Relaxed) < self.max
    }

    /// Takes one until the returned hold is dropped.
    #[inline]
    pub fn hold(&self) -> Hold<'_> {
        self.take();
        Hold(self)
    }

    /// Takes one, given back by [`Resource::give`].
    #[inline]
    pub fn take(&self) {
        self.open.fetch_add(1, Relaxed);
        if self.max == 0 {
            self.used.store(true, Relaxed);
        }
    }

    /// Gives back one taken by [`Resource::take`].
    #[inline]
    pub fn give(&self) {
        self.open.fetch_sub(1, Relaxed);
    }

    /// How many are taken.
    pub fn open(&self) -> u64 {
        self.open.load(Relaxed)
    }

    /// Envoy's `*_open` gauge: 1 when the count is at or past the limit. Envoy sets it when
    /// the count changes, so a limit of 0 reads closed until something was taken.
    fn is_open(&self) -> u64 {
        if self.max == 0 {
            return u64::from(self.used.load(Relaxed));
        }
        u64::from(self.open() >= self.max)
    }

    /// Envoy's `remaining_*` gauge: what is left, never below 0.
    fn remaining(&self) -> u64 {
        self.max.saturating_sub(self.open())
    }
}

/// One taken unit of a [`Resource`], given back when dropped.
pub struct Hold<'a>(&'a Resource);

impl Drop for Hold<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.give();
    }
}

/// The limits of one priority and what each has taken.
#[derive(Debug, Default)]
pub struct Priority {
    /// `max_connections`: connections open, being made or idle.
    pub cx: Resource,
    /// `max_pending_requests`: requests waiting for a connection.
    pub pending: Resource,
    /// `max_requests`: requests on a connection.
    pub rq: Resource,
    /// `max_retries`: requests in a retry (from the decision to retry to the next decision).
    pub retries: Resource,
    /// `max_connection_pools` (not configurable here: unlimited, nothing counted).
    pools: Resource,
    /// `track_remaining`: whether the `remaining_*` gauges exist.
    track_remaining: bool,
}

impl Priority {
    fn new(c: &Config) -> Priority {
        Priority {
            cx: Resource::new(c.max_connections),
            pending: Resource::new(c.max_pending_requests),
            rq: Resource::new(c.max_requests),
            retries: Resource::new(c.max_retries),
            pools: Resource::new(u64::MAX),
            track_remaining: c.track_remaining,
        }
    }

    fn visit(&self, name: &str, v: &mut dyn Visitor) {
        let g = |v: &mut dyn Visitor, stat: &str, value: u64| {
            v.stat(
                &format!("circuit_breakers.{name}.{stat}"),
                StatKind::Gauge,
                value,
                true,
            )
        };
        g(v, "cx_open", self.cx.is_open());
        g(v, "cx_pool_open", self.pools.is_open());
        if self.track_remaining {
            g(v, "remaining_cx", self.cx.remaining());
            g(v, "remaining_cx_pools", self.pools.remaining());
            g(v, "remaining_pending", self.pending.remaining());
            g(v, "remaining_retries", self.retries.remaining());
            g(v, "remaining_rq", self.rq.remaining());
        }
        g(v, "rq_open", self.rq.is_open());
        g(v, "rq_pending_open", self.pending.is_open());
        g(v, "rq_retry_open", self.retries.is_open());
    }
}

/// A cluster's circuit breakers: one per compiled cluster, kept by an apply that leaves the
/// cluster as it was (Envoy keeps an unchanged cluster, counts and all; a changed one starts
/// from none).
#[derive(Debug, Default)]
pub struct Breakers {
    /// `DEFAULT` priority: a route's unless it says `HIGH`.
    pub default: Priority,
    /// `HIGH` priority.
    pub high: Priority,
}

impl Breakers {
    /// The breakers of a cluster's `circuit_breakers` (lowered: both priorities, Envoy's
    /// defaults filled in).
    pub fn new(default: &Config, high: &Config) -> Breakers {
        Breakers {
            default: Priority::new(default),
            high: Priority::new(high),
        }
    }

    /// The limits of a priority.
    #[inline]
    pub fn of(&self, high: bool) -> &Priority {
        if high {
            &self.high
        } else {
            &self.default
        }
    }

    /// Visits `circuit_breakers.{default,high}.*`, as Envoy names them.
    pub fn visit(&self, v: &mut dyn Visitor) {
        self.default.visit("default", v);
        self.high.visit("high", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<(String, u64)>);
    impl Visitor for Collect {
        fn stat(&mut self, name: &str, _: StatKind, value: u64, _: bool) {
            self.0.push((name.to_string(), value));
        }
        fn histogram(&mut self, _: &str, _: &crate::stats::Histogram) {}
    }

    fn config(cx: u64, pending: u64, rq: u64, track: bool) -> Config {
        Config {
            max_connections: cx,
            max_pending_requests: pending,
            max_requests: rq,
            track_remaining: track,
            ..Config::default()
        }
    }

    #[test]
    fn gauges_say_whether_a_limit_is_reached_and_what_remains() {
        let b = Breakers::new(&config(2, 1024, 1, true), &config(1024, 1024, 1024, false));
        assert!(b.default.rq.has_room());
        let h = b.default.rq.hold();
        assert!(!b.default.rq.has_room(), "one of one taken");
        b.default.cx.take();
        let mut c = Collect(Vec::new());
        b.visit(&mut c);
        let get = |n: &str| c.0.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        assert_eq!(get("circuit_breakers.default.rq_open"), Some(1));
        assert_eq!(get("circuit_breakers.default.cx_open"), Some(0));
        assert_eq!(get("circuit_breakers.default.remaining_cx"), Some(1));
        assert_eq!(get("circuit_breakers.default.remaining_rq"), Some(0));
        assert_eq!(get("circuit_breakers.default.remaining_retries"), Some(3));
        assert_eq!(
            get("circuit_breakers.default.remaining_cx_pools"),
            Some(u64::MAX)
        );
        // Only a priority that tracks them has the remaining_* gauges.
        assert_eq!(get("circuit_breakers.high.remaining_cx"), None);
        assert_eq!(get("circuit_breakers.high.rq_open"), Some(0));
        assert_eq!(c.0.len(), 10 + 5);
        drop(h);
        b.default.cx.give();
        assert!(b.default.rq.has_room());
        assert_eq!(b.default.cx.open(), 0);
    }

    #[test]
    fn a_limit_of_zero_admits_nothing_and_reads_closed_until_used() {
        let b = Breakers::new(&config(0, 0, 0, true), &config(0, 0, 0, false));
        assert!(!b.default.pending.has_room());
        // Envoy's gauge moves only when the count does: at rest it reads 0 (closed) though
        // nothing is admitted, and 1 once something was taken (a pool's first connection).
        let open = |b: &Breakers, n: &str| {
            let mut c = Collect(Vec::new());
            b.visit(&mut c);
            c.0.into_iter().find(|(k, _)| k == n).map(|(_, v)| v)
        };
        assert_eq!(open(&b, "circuit_breakers.default.cx_open"), Some(0));
        b.default.cx.take();
        b.default.cx.give();
        assert_eq!(open(&b, "circuit_breakers.default.cx_open"), Some(1));
        assert_eq!(
            open(&b, "circuit_breakers.default.rq_pending_open"),
            Some(0)
        );
    }
}
