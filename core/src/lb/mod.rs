//! Load balancers. Each worker keeps its own balancer state (Envoy's model: per-worker LBs, no
//! shared counters), so a pick touches only thread-local cells.
//!
//! The interface is a pick over the cluster's current host list; ring hash and Maglev (next
//! issues) fit the same shape with a per-snapshot compiled table and a request hash input.

use std::cell::Cell;

/// The policy, from the cluster's `lb_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Weighted round robin (smooth, as nginx's): equal weights give plain rotation.
    RoundRobin,
    /// Power of `choice_count` choices over active requests (Envoy's default for equal weights).
    LeastRequest { choice_count: u32 },
    /// Weighted random.
    Random,
}

impl Policy {
    /// Parses Envoy's `lb_policy` name.
    pub fn parse(name: &str, choice_count: u32) -> Option<Policy> {
        match name {
            "ROUND_ROBIN" => Some(Policy::RoundRobin),
            "LEAST_REQUEST" => Some(Policy::LeastRequest {
                choice_count: choice_count.max(1),
            }),
            "RANDOM" => Some(Policy::Random),
            _ => None,
        }
    }
}

/// What a balancer needs to know of a host.
pub trait LbHost {
    /// Envoy `load_balancing_weight`.
    fn weight(&self) -> u32;
    /// Requests in flight to this host from this worker.
    fn active_requests(&self) -> u32;
}

/// Per-worker balancer state for one cluster. Reset when the host list changes.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    next: Cell<usize>,
    /// Smooth weighted round robin current weights, one per host.
    current: Vec<Cell<i64>>,
    weighted: bool,
    total_weight: u64,
}

impl Balancer {
    /// A balancer for `hosts`.
    pub fn new<H: LbHost>(policy: Policy, hosts: &[H]) -> Balancer {
        let weighted = hosts.windows(2).any(|w| w[0].weight() != w[1].weight());
        // Start the rotation at a random host so workers do not all hit host 0 first.
        let start = if hosts.is_empty() {
            0
        } else {
            fastrand::usize(0..hosts.len())
        };
        Balancer {
            policy,
            next: Cell::new(start),
            current: hosts.iter().map(|_| Cell::new(0)).collect(),
            weighted,
            total_weight: hosts.iter().map(|h| u64::from(h.weight())).sum(),
        }
    }

    /// Picks a host index, or `None` if there are no hosts.
    #[inline]
    pub fn pick<H: LbHost>(&self, hosts: &[H]) -> Option<usize> {
        let n = hosts.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        Some(match self.policy {
            Policy::RoundRobin if !self.weighted => {
                let i = self.next.get() % n;
                self.next.set(i + 1);
                i
            }
            Policy::RoundRobin => {
                let total = self.total_weight as i64;
                let mut best = 0;
                for (i, h) in hosts.iter().enumerate() {
                    let c = &self.current[i];
                    c.set(c.get() + i64::from(h.weight()));
                    if c.get() > self.current[best].get() {
                        best = i;
                    }
                }
                let c = &self.current[best];
                c.set(c.get() - total);
                best
            }
            Policy::LeastRequest { choice_count } => {
                let mut best = self.random(hosts);
                for _ in 1..choice_count {
                    let c = self.random(hosts);
                    if hosts[c].active_requests() < hosts[best].active_requests() {
                        best = c;
                    }
                }
                best
            }
            Policy::Random => self.random(hosts),
        })
    }

    fn random<H: LbHost>(&self, hosts: &[H]) -> usize {
        if !self.weighted {
            return fastrand::usize(0..hosts.len());
        }
        let mut r = fastrand::u64(0..self.total_weight.max(1));
        for (i, h) in hosts.iter().enumerate() {
            let w = u64::from(h.weight());
            if r < w {
                return i;
            }
            r -= w;
        }
        hosts.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct H(u32, Cell<u32>);
    impl LbHost for H {
        fn weight(&self) -> u32 {
            self.0
        }
        fn active_requests(&self) -> u32 {
            self.1.get()
        }
    }

    fn counts(policy: Policy, hosts: &[H], picks: usize) -> Vec<usize> {
        let b = Balancer::new(policy, hosts);
        let mut c = vec![0; hosts.len()];
        for _ in 0..picks {
            c[b.pick(hosts).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_exact() {
        let hosts = [H(1, Cell::new(0)), H(1, Cell::new(0)), H(1, Cell::new(0))];
        assert_eq!(counts(Policy::RoundRobin, &hosts, 300), vec![100, 100, 100]);
    }

    #[test]
    fn weighted_round_robin_follows_weights() {
        let hosts = [H(1, Cell::new(0)), H(3, Cell::new(0))];
        assert_eq!(counts(Policy::RoundRobin, &hosts, 400), vec![100, 300]);
    }

    #[test]
    fn least_request_avoids_the_busy_host() {
        let hosts = [H(1, Cell::new(100)), H(1, Cell::new(0))];
        let c = counts(Policy::LeastRequest { choice_count: 2 }, &hosts, 1000);
        // With two choices the busy host wins only when both picks land on it (~1/4).
        assert!(c[0] < 400, "{c:?}");
    }

    #[test]
    fn no_hosts_no_pick() {
        let hosts: [H; 0] = [];
        assert_eq!(Balancer::new(Policy::Random, &hosts).pick(&hosts), None);
    }
}
