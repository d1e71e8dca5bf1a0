//! Load balancers. Each worker keeps its own balancer state (Envoy's model: per-worker LBs, no
//! shared counters), so a pick touches only thread-local cells.
//!
//! The interface is a pick over the cluster's current host list. The ring hash builds its ring
//! with the balancer (per worker, when the host list changes) and picks by the request's hash
//! ([`Balancer::pick_hashed`]; the hash is the route's, `router/hash.rs`); Maglev would fit the
//! same shape with its table.

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
    /// Envoy's ring hash (ketama): each host at `scale * weight` points of a ring of
    /// xxHash64 values, at least `min` points in all, at most `max`; a request's hash picks
    /// the first point at or after it.
    RingHash { min: u64, max: u64 },
    /// Envoy's Maglev: a table of `table_size` (a prime) slots, each a host, filled by the
    /// hosts' permutations in turn (weighted); a request's hash modulo the size picks the slot.
    Maglev { table_size: u64 },
}

impl Policy {
    /// Parses Envoy's `lb_policy` name (`min_ring`, `max_ring`: a ring hash's sizes;
    /// `table_size`: Maglev's).
    pub fn parse(
        name: &str,
        choice_count: u32,
        min_ring: u64,
        max_ring: u64,
        table_size: u64,
    ) -> Option<Policy> {
        match name {
            "ROUND_ROBIN" => Some(Policy::RoundRobin),
            "LEAST_REQUEST" => Some(Policy::LeastRequest {
                choice_count: choice_count.max(1),
            }),
            "RANDOM" => Some(Policy::Random),
            "RING_HASH" => Some(Policy::RingHash {
                min: min_ring,
                max: max_ring,
            }),
            "MAGLEV" => Some(Policy::Maglev { table_size }),
            _ => None,
        }
    }

    /// Whether it picks by the request's hash (the route's `hash_policy`).
    #[inline]
    pub fn hashes(self) -> bool {
        matches!(self, Policy::RingHash { .. } | Policy::Maglev { .. })
    }
}

/// What a balancer needs to know of a host.
pub trait LbHost {
    /// Envoy `load_balancing_weight`.
    fn weight(&self) -> u32;
    /// Requests in flight to this host from this worker.
    fn active_requests(&self) -> u32;
    /// What a hashing balancer hashes for it: its address as Envoy writes it (`1.2.3.4:80`,
    /// `[::1]:80`).
    fn hash_key(&self) -> String;
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
    /// A ring hash's points, sorted: (hash, host index).
    ring: Vec<(u64, u32)>,
    /// Maglev's table: a host index per slot.
    table: Vec<u32>,
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
            ring: match policy {
                Policy::RingHash { min, max } => build_ring(hosts, min, max),
                _ => Vec::new(),
            },
            table: match policy {
                Policy::Maglev { table_size } => build_maglev(hosts, table_size),
                _ => Vec::new(),
            },
        }
    }

    /// The host a hash lands on, for a hashing policy.
    fn hashed(&self, h: u64) -> Option<u32> {
        self.hashed_try(h, 0)
    }

    /// The host for hash `h` at a retry's `attempt`-th pick of one selection (0: the first),
    /// as Envoy's balancers pick again for a `previous_hosts` predicate: the ring's next
    /// `attempt` points along, or Maglev's hash xor `-attempt`.
    fn hashed_try(&self, h: u64, attempt: u32) -> Option<u32> {
        match self.policy {
            Policy::Maglev { .. } if !self.table.is_empty() => {
                let h = h ^ u64::from(attempt).wrapping_neg();
                Some(self.table[(h % self.table.len() as u64) as usize])
            }
            Policy::Maglev { .. } => None,
            _ => {
                let at = ring_index(&self.ring, h)?;
                Some(self.ring[(at + attempt as usize) % self.ring.len()].1)
            }
        }
    }

    /// A hashing balancer's table for the stats: (kind as [`crate::stats::LbGauges`] has it,
    /// ring size, fewest and most entries of a host); `None` for the other policies.
    pub fn table_stats(&self) -> Option<(u8, u64, u64, u64)> {
        let mut per = vec![0u64; self.current.len()];
        let mut count = |h: u32| per[h as usize] += 1;
        let (kind, size) = match self.policy {
            Policy::RingHash { .. } => {
                self.ring.iter().for_each(|p| count(p.1));
                (crate::stats::LbGauges::RING_HASH, self.ring.len() as u64)
            }
            Policy::Maglev { .. } => {
                self.table.iter().for_each(|h| count(*h));
                (crate::stats::LbGauges::MAGLEV, 0)
            }
            _ => return None,
        };
        let min = per.iter().copied().min().unwrap_or(0);
        let max = per.iter().copied().max().unwrap_or(0);
        Some((kind, size, min, max))
    }

    /// [`Balancer::pick`] with the request's hash, for a hashing policy (`None`: the request
    /// gave none, so a random point, as Envoy).
    #[inline]
    pub fn pick_hashed<H: LbHost>(&self, hosts: &[H], hash: Option<u64>) -> Option<usize> {
        if !self.policy.hashes() {
            return self.pick(hosts);
        }
        let h = hash.unwrap_or_else(|| fastrand::u64(..));
        self.hashed(h).map(|i| i as usize)
    }

    /// A hashing balancer's `attempt`-th pick for hash `h` within one host selection (a
    /// retry's `previous_hosts` picking again).
    pub fn pick_hashed_try(&self, h: u64, attempt: u32) -> Option<usize> {
        self.hashed_try(h, attempt).map(|i| i as usize)
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
            // No hash given: a random point (Envoy).
            Policy::RingHash { .. } | Policy::Maglev { .. } => {
                self.hashed(fastrand::u64(..))? as usize
            }
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

/// The hosts' weights normalized to sum 1, as Envoy's hashing balancers compute them
/// (`weight * 1.0 / sum`, in that order, for the same doubles).
fn normalized_weights<H: LbHost>(hosts: &[H]) -> Vec<f64> {
    let sum: u64 = hosts.iter().map(|h| u64::from(h.weight())).sum();
    hosts
        .iter()
        .map(|h| f64::from(h.weight()) * 1.0 / sum as f64)
        .collect()
}

/// Envoy's ring (`RingHashLoadBalancer::Ring`): weights normalized to sum 1; the scale makes
/// the lightest host a whole number of points (`ceil(min_weight * min) / min_weight`), capped
/// at `max`; walking the hosts in order, host by host, points are added while the running
/// count is below the running target (`scale * weight` summed), each the xxHash64 (seed 0) of
/// `<address>_<n>`; then sorted by hash.
fn build_ring<H: LbHost>(hosts: &[H], min: u64, max: u64) -> Vec<(u64, u32)> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let weights = normalized_weights(hosts);
    let min_weight = weights.iter().copied().fold(1.0, f64::min);
    let scale = ((min_weight * min as f64).ceil() / min_weight).min(max as f64);
    let mut ring = Vec::with_capacity(scale.ceil() as usize);
    let (mut current, mut target) = (0.0f64, 0.0f64);
    for (i, (h, w)) in hosts.iter().zip(&weights).enumerate() {
        let mut key = h.hash_key().into_bytes();
        key.push(b'_');
        let base = key.len();
        target += scale * w;
        let mut n = 0u64;
        while current < target {
            key.truncate(base);
            key.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            ring.push((xxhash_rust::xxh64::xxh64(&key, 0), i as u32));
            n += 1;
            current += 1.0;
        }
    }
    ring.sort_unstable_by_key(|p| p.0);
    ring
}

/// Envoy's Maglev table (`MaglevTable`, the paper's listing 1, weighted): hosts sorted by
/// address; each starts at `xxHash64(addr) % size` and steps by `xxHash64(addr, seed 1) %
/// (size - 1) + 1`; in rounds 1, 2, ..., each host whose `round * weight` has reached its
/// target (growing by the largest normalized weight each time it places one) takes the next
/// free slot of its sequence, until every slot is taken.
fn build_maglev<H: LbHost>(hosts: &[H], size: u64) -> Vec<u32> {
    if hosts.is_empty() || size == 0 {
        return Vec::new();
    }
    struct Entry {
        host: u32,
        offset: u64,
        skip: u64,
        weight: f64,
        target: f64,
        next: u64,
    }
    let mut keyed: Vec<(String, u32, f64)> = hosts
        .iter()
        .zip(normalized_weights(hosts))
        .enumerate()
        .map(|(i, (h, w))| (h.hash_key(), i as u32, w))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let max_weight = keyed.iter().map(|k| k.2).fold(0.0, f64::max);
    let mut entries: Vec<Entry> = keyed
        .into_iter()
        .map(|(key, host, weight)| Entry {
            host,
            offset: xxhash_rust::xxh64::xxh64(key.as_bytes(), 0) % size,
            skip: xxhash_rust::xxh64::xxh64(key.as_bytes(), 1) % (size - 1).max(1) + 1,
            weight,
            target: 0.0,
            next: 0,
        })
        .collect();
    const FREE: u32 = u32::MAX;
    let mut table = vec![FREE; size as usize];
    let mut filled = 0u64;
    let mut round = 1u32;
    while filled < size {
        for e in entries.iter_mut() {
            if filled >= size {
                break;
            }
            if f64::from(round) * e.weight < e.target {
                continue;
            }
            e.target += max_weight;
            let mut c = (e.offset + e.skip * e.next) % size;
            while table[c as usize] != FREE {
                e.next += 1;
                c = (e.offset + e.skip * e.next) % size;
            }
            table[c as usize] = e.host;
            e.next += 1;
            filled += 1;
        }
        round += 1;
    }
    table
}

/// The ring's point for hash `h` (ketama's search, as Envoy's `Ring::chooseHost`): the first
/// point whose hash is at or above `h`, the first point past the last.
/// The position on the ring that serves hash `h`.
fn ring_index(ring: &[(u64, u32)], h: u64) -> Option<usize> {
    if ring.is_empty() {
        return None;
    }
    let n = ring.len() as i64;
    let (mut low, mut high) = (0i64, n);
    let mid = loop {
        let mid = (low + high) / 2;
        if mid == n {
            break 0;
        }
        let at = ring[mid as usize].0;
        let before = if mid == 0 {
            0
        } else {
            ring[mid as usize - 1].0
        };
        if h <= at && h > before {
            break mid;
        }
        if at < h {
            low = mid + 1;
        } else {
            high = mid - 1;
        }
        if low > high {
            break 0;
        }
    };
    Some(mid as usize)
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
        fn hash_key(&self) -> String {
            String::new()
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

    struct A(u16, u32);
    impl LbHost for A {
        fn weight(&self) -> u32 {
            self.1
        }
        fn active_requests(&self) -> u32 {
            0
        }
        fn hash_key(&self) -> String {
            format!("127.0.0.1:{}", self.0)
        }
    }

    /// Three hosts 127.0.0.1:18601..18603 with `weights`, under `policy`.
    fn envoy_hosts(policy: Policy, weights: [u32; 3]) -> (Vec<A>, Balancer) {
        let hosts: Vec<A> = (0..3).map(|i| A(18601 + i as u16, weights[i])).collect();
        let b = Balancer::new(policy, &hosts);
        (hosts, b)
    }

    /// The host Envoy 1.40 picked for `x-user: <value>` under a header `hash_policy`, with
    /// hosts 127.0.0.1:18601..18603 (recorded with the envoy binary; 1 is 18601).
    fn envoy_picks(policy: Policy, weights: [u32; 3], want: &[(&str, u16)]) {
        let (hosts, b) = envoy_hosts(policy, weights);
        for (value, host) in want {
            let h = xxhash_rust::xxh64::xxh64(value.as_bytes(), 0);
            let got = b.pick_hashed(&hosts, Some(h)).unwrap() as u16 + 1;
            assert_eq!(got, *host, "{value:?}");
        }
    }

    fn ring(min: u64, max: u64) -> Policy {
        Policy::RingHash { min, max }
    }

    fn maglev(table_size: u64) -> Policy {
        Policy::Maglev { table_size }
    }

    #[test]
    fn ring_hash_picks_what_envoy_picks() {
        envoy_picks(
            ring(1024, 8 << 20),
            [1, 1, 1],
            &[
                ("user-0", 1),
                ("user-1", 2),
                ("user-2", 2),
                ("user-3", 2),
                ("user-4", 2),
                ("user-5", 3),
                ("user-6", 3),
                ("user-7", 2),
                ("user-8", 2),
                ("user-9", 1),
                ("user-10", 1),
                ("user-11", 1),
                ("user-12", 3),
                ("user-13", 3),
                ("user-14", 1),
                ("user-15", 1),
                ("user-16", 3),
                ("user-17", 1),
                ("user-18", 1),
                ("user-19", 2),
                ("", 3),
                ("a,b", 3),
                ("ba", 1),
                ("ab", 1),
            ],
        );
    }

    #[test]
    fn weighted_ring_hash_picks_what_envoy_picks() {
        envoy_picks(
            ring(1024, 8 << 20),
            [1, 2, 3],
            &[
                ("user-0", 3),
                ("user-1", 2),
                ("user-2", 2),
                ("user-3", 2),
                ("user-4", 2),
                ("user-5", 3),
                ("user-6", 3),
                ("user-7", 2),
                ("user-8", 2),
                ("user-9", 1),
                ("user-10", 1),
                ("user-11", 2),
                ("user-12", 3),
                ("user-13", 3),
                ("user-14", 2),
                ("user-15", 1),
                ("user-16", 3),
                ("user-17", 3),
                ("user-18", 2),
                ("user-19", 2),
                ("", 3),
                ("a,b", 3),
                ("ba", 1),
                ("ab", 1),
            ],
        );
    }

    #[test]
    fn a_small_ring_picks_what_envoy_picks() {
        // minimum_ring_size 3, maximum_ring_size 5: one point a host.
        envoy_picks(
            ring(3, 5),
            [1, 1, 1],
            &[
                ("user-0", 3),
                ("user-1", 3),
                ("user-2", 3),
                ("user-3", 3),
                ("user-4", 1),
                ("user-5", 3),
                ("user-6", 1),
                ("user-7", 1),
                ("user-8", 1),
                ("user-9", 1),
                ("user-10", 3),
                ("user-11", 3),
                ("user-12", 1),
                ("user-13", 1),
                ("user-14", 1),
                ("user-15", 1),
                ("user-16", 3),
                ("user-17", 1),
                ("user-18", 3),
                ("user-19", 1),
                ("", 1),
                ("a,b", 1),
                ("ba", 3),
                ("ab", 1),
            ],
        );
    }

    #[test]
    fn maglev_picks_what_envoy_picks() {
        envoy_picks(
            maglev(65537),
            [1, 1, 1],
            &[
                ("user-0", 2),
                ("user-1", 1),
                ("user-2", 2),
                ("user-3", 3),
                ("user-4", 2),
                ("user-5", 2),
                ("user-6", 3),
                ("user-7", 1),
                ("user-8", 1),
                ("user-9", 2),
                ("user-10", 2),
                ("user-11", 2),
                ("user-12", 2),
                ("user-13", 3),
                ("user-14", 2),
                ("user-15", 1),
                ("user-16", 1),
                ("user-17", 1),
                ("user-18", 1),
                ("user-19", 1),
                ("", 1),
                ("a,b", 2),
                ("ba", 2),
                ("ab", 3),
            ],
        );
    }

    #[test]
    fn weighted_maglev_picks_what_envoy_picks() {
        envoy_picks(
            maglev(65537),
            [1, 2, 3],
            &[
                ("user-0", 2),
                ("user-1", 2),
                ("user-2", 3),
                ("user-3", 3),
                ("user-4", 2),
                ("user-5", 2),
                ("user-6", 3),
                ("user-7", 3),
                ("user-8", 1),
                ("user-9", 2),
                ("user-10", 3),
                ("user-11", 2),
                ("user-12", 2),
                ("user-13", 3),
                ("user-14", 2),
                ("user-15", 1),
                ("user-16", 1),
                ("user-17", 1),
                ("user-18", 2),
                ("user-19", 1),
                ("", 1),
                ("a,b", 2),
                ("ba", 2),
                ("ab", 3),
            ],
        );
    }

    #[test]
    fn a_small_maglev_table_picks_what_envoy_picks() {
        envoy_picks(
            maglev(7),
            [1, 1, 1],
            &[
                ("user-0", 1),
                ("user-1", 1),
                ("user-2", 2),
                ("user-3", 2),
                ("user-4", 1),
                ("user-5", 3),
                ("user-6", 2),
                ("user-7", 1),
                ("user-8", 2),
                ("user-9", 3),
                ("user-10", 3),
                ("user-11", 2),
                ("user-12", 3),
                ("user-13", 2),
                ("user-14", 1),
                ("user-15", 3),
                ("user-16", 1),
                ("user-17", 1),
                ("user-18", 3),
                ("user-19", 3),
                ("", 2),
                ("a,b", 1),
                ("ba", 3),
                ("ab", 1),
            ],
        );
    }

    #[test]
    fn two_header_values_pick_what_envoy_picks() {
        // `x-user: b` and `x-user: a`: Envoy hashes the sorted values, each seeded with the
        // hash so far (router/hash.rs); it sent the request to 18603 under each of the three
        // rings above.
        let h = xxhash_rust::xxh64::xxh64(b"b", xxhash_rust::xxh64::xxh64(b"a", 0));
        for (weights, min, max) in [
            ([1, 1, 1], 1024, 8 << 20),
            ([1, 2, 3], 1024, 8 << 20),
            ([1, 1, 1], 3, 5),
        ] {
            let (hosts, b) = envoy_hosts(ring(min, max), weights);
            assert_eq!(b.pick_hashed(&hosts, Some(h)), Some(2));
        }
        // Maglev: 18601, 18603, 18603.
        for (weights, table_size, want) in [
            ([1, 1, 1], 65537, 0),
            ([1, 2, 3], 65537, 2),
            ([1, 1, 1], 7, 2),
        ] {
            let (hosts, b) = envoy_hosts(maglev(table_size), weights);
            assert_eq!(b.pick_hashed(&hosts, Some(h)), Some(want));
        }
    }

    #[test]
    fn no_hosts_no_pick() {
        let hosts: [H; 0] = [];
        assert_eq!(Balancer::new(Policy::Random, &hosts).pick(&hosts), None);
    }

    #[test]
    fn a_retry_walks_the_ring() {
        let ring = vec![(10, 0), (20, 1), (30, 0), (40, 1)];
        // Hash 15 falls on the point at 20 (host 1); later picks walk on, wrapping around.
        assert_eq!(ring_index(&ring, 15), Some(1));
        let walk: Vec<u32> = (0..5)
            .map(|a| ring[(ring_index(&ring, 15).unwrap() + a) % ring.len()].1)
            .collect();
        assert_eq!(walk, [1, 0, 1, 0, 1]);
        // Past the last point: the first.
        assert_eq!(ring_index(&ring, 41), Some(0));
    }
}
