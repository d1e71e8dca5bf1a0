//! Load-balancer micro-benchmarks: one `Balancer::pick` per iteration over 3, 10 and 100
//! hosts, for each policy. See benches/README.md for the method and the figures.

use std::cell::Cell;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pyproxy_core::lb::{Balancer, LbHost, Policy};

/// A host as the balancer sees it: a weight and this worker's in-flight request count.
struct Host {
    weight: u32,
    active: Cell<u32>,
}

impl LbHost for Host {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn active_requests(&self) -> u32 {
        self.active.get()
    }
    fn hash_key(&self) -> String {
        format!("10.0.{}.{}:80", self.weight, self.active.get())
    }
}

/// `n` hosts; unequal weights cycle 1..=5, active requests vary so least-request compares.
fn hosts(n: usize, equal: bool) -> Vec<Host> {
    (0..n)
        .map(|i| Host {
            weight: if equal { 1 } else { (i % 5) as u32 + 1 },
            active: Cell::new((i * 7 % 13) as u32),
        })
        .collect()
}

fn bench_pick(c: &mut Criterion) {
    let policies: [(&str, Policy, bool); 6] = [
        ("round_robin_equal", Policy::RoundRobin, true),
        ("round_robin_weighted", Policy::RoundRobin, false),
        ("random_equal", Policy::Random, true),
        ("random_weighted", Policy::Random, false),
        (
            "least_request_p2c",
            Policy::LeastRequest { choice_count: 2 },
            true,
        ),
        (
            "least_request_p2c_weighted",
            Policy::LeastRequest { choice_count: 2 },
            false,
        ),
    ];
    for (name, policy, equal) in policies {
        let mut g = c.benchmark_group(format!("lb_pick/{name}"));
        for n in [3usize, 10, 100] {
            let hs = hosts(n, equal);
            let b = Balancer::new(policy, &hs);
            g.bench_with_input(BenchmarkId::from_parameter(n), &hs, |bench, hs| {
                bench.iter(|| b.pick(black_box(hs)))
            });
        }
        g.finish();
    }
    // A ring hash (Envoy's default 1024-point minimum) and Maglev (65537 slots) picking by a
    // request's hash.
    let hashing = [
        (
            "ring_hash",
            Policy::RingHash {
                min: 1024,
                max: 8 << 20,
            },
        ),
        ("maglev", Policy::Maglev { table_size: 65537 }),
    ];
    for (name, policy) in hashing {
        let mut g = c.benchmark_group(format!("lb_pick/{name}"));
        for n in [3usize, 10, 100] {
            let hs = hosts(n, true);
            let b = Balancer::new(policy, &hs);
            let mut h = 0x9e37_79b9_7f4a_7c15u64;
            g.bench_with_input(BenchmarkId::from_parameter(n), &hs, |bench, hs| {
                bench.iter(|| {
                    h = h.wrapping_mul(6364136223846793005).wrapping_add(1);
                    b.pick_hashed(black_box(hs), Some(h))
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
