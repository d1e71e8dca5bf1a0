//! Compiling a [`Snapshot`] into the engine-wide, immutable [`Compiled`] form that workers share
//! (`Arc`). Everything that can fail fails here, before anything is swapped.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Cluster, Listener, Snapshot};
use crate::lb::Policy;
use crate::router::RouteTable;
use crate::Error;

/// A listener with its compiled route table.
#[derive(Debug)]
pub struct CompiledListener {
    /// The listener's config.
    pub cfg: Listener,
    /// Its name, shared with worker tasks.
    pub name: Arc<str>,
    /// The address to bind.
    pub addr: SocketAddr,
    /// The compiled routes.
    pub routes: RouteTable,
    /// `server` header value, pre-rendered.
    pub server_name: Vec<u8>,
    /// The connection manager's access logs, if it has any.
    pub logs: Option<Arc<crate::accesslog::Logs>>,
}

/// How a cluster finds its hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// Fixed IP endpoints.
    Static,
    /// Names resolved at start and every `dns_refresh_rate`.
    StrictDns,
}

/// A cluster, compiled.
#[derive(Debug)]
pub struct CompiledCluster {
    /// The cluster's config.
    pub cfg: Cluster,
    /// Its name, shared (`%UPSTREAM_CLUSTER%`).
    pub name: Arc<str>,
    /// Balancing policy.
    pub policy: Policy,
    /// STATIC or STRICT_DNS.
    pub discovery: Discovery,
    /// Hosts at compile time (resolved once for STRICT_DNS).
    pub hosts: Vec<HostAddr>,
    /// `connect_timeout`.
    pub connect_timeout: Duration,
    /// Its circuit breakers, shared by every worker.
    pub breakers: Arc<crate::upstream::breaker::Breakers>,
    /// Its active health check and what it found, if it has one.
    pub health: Option<Arc<crate::upstream::health::HealthState>>,
    /// Its outlier detection and what it found, if it has one.
    pub outlier: Option<Arc<crate::upstream::outlier::OutlierState>>,
}

/// A whole compiled snapshot.
#[derive(Debug)]
pub struct Compiled {
    /// Listeners in config order.
    pub listeners: Vec<Arc<CompiledListener>>,
    /// Clusters in config order; routes refer to them by index.
    pub clusters: Vec<Arc<CompiledCluster>>,
}

impl Compiled {
    /// Keeps the circuit breakers (what they count included) and the health state of each
    /// cluster `prev` has with the same config, as Envoy keeps a cluster an update leaves as
    /// it was (a changed health check starts from the old one's stats and findings). Called on
    /// a freshly compiled snapshot, before it is shared.
    pub fn keep_unchanged(&mut self, prev: &Compiled) {
        for c in &mut self.clusters {
            let (Some(old), Some(c)) = (
                prev.clusters.iter().find(|o| o.cfg.name == c.cfg.name),
                Arc::get_mut(c),
            ) else {
                continue;
            };
            if old.cfg == c.cfg {
                c.breakers = old.breakers.clone();
                // Its hosts keep their health (and its checks go on).
                c.health = old.health.clone();
                c.outlier = old.outlier.clone();
            } else {
                if let (Some(h), Some(old_h)) = (&c.health, &old.health) {
                    // A changed check takes over the old one's stats and what it found.
                    let state = crate::upstream::health::HealthState::succeed(h.cfg.clone(), old_h);
                    c.health = Some(Arc::new(state));
                }
                if let (Some(o), Some(old_o)) = (&c.outlier, &old.outlier) {
                    // A changed cluster's detector starts afresh, as Envoy's; its stats go on.
                    let state =
                        crate::upstream::outlier::OutlierState::succeed(o.cfg.clone(), old_o);
                    c.outlier = Some(Arc::new(state));
                }
            }
        }
    }

    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<CompiledListener>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

/// Resolves a STRICT_DNS endpoint following `dns_lookup_family`. Failures give no addresses,
/// as Envoy leaves a cluster with no hosts when resolution fails.
pub fn resolve(host: &str, port: u16, family: &str) -> Vec<SocketAddr> {
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return Vec::new();
    };
    let addrs: Vec<SocketAddr> = addrs.collect();
    let v4: Vec<_> = addrs.iter().copied().filter(SocketAddr::is_ipv4).collect();
    let v6: Vec<_> = addrs.iter().copied().filter(SocketAddr::is_ipv6).collect();
    match family {
        "V4_ONLY" => v4,
        "V6_ONLY" => v6,
        "V6_PREFERRED" => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        "ALL" => addrs,
        _ => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
    }
}

/// One host of a cluster: where it is, its weight and the endpoint it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostAddr {
    /// Its address (a STRICT_DNS endpoint's name resolved).
    pub addr: SocketAddr,
    /// Envoy `load_balancing_weight`.
    pub weight: u32,
    /// The index of its endpoint in the cluster's config. Two STRICT_DNS endpoints whose names
    /// resolve to the same address are two hosts, each with its own name (Envoy's `hostname`,
    /// which `auto_host_rewrite` and `/clusters` use).
    pub endpoint: u32,
}

/// Turns a STRICT_DNS cluster's endpoints into hosts: the system resolver in production
/// ([`system_resolver`]); tests substitute one whose answers change.
pub type Resolver = Arc<dyn Fn(&Cluster) -> Vec<HostAddr> + Send + Sync>;

/// The resolver backed by `getaddrinfo` ([`resolve_cluster`]).
pub fn system_resolver() -> Resolver {
    Arc::new(resolve_cluster)
}

/// Resolves every endpoint of a STRICT_DNS cluster (each address found becomes a host).
pub fn resolve_cluster(c: &Cluster) -> Vec<HostAddr> {
    let mut out = Vec::new();
    for (i, e) in c.endpoints.iter().enumerate() {
        for addr in resolve(&e.address, e.port, &c.dns_lookup_family) {
            out.push(HostAddr {
                addr,
                weight: e.weight,
                endpoint: i as u32,
            });
        }
    }
    out
}

/// Whether `n` is prime (trial division: Maglev table sizes are at most a few million).
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn compile_cluster(c: &Cluster, path: &str, resolver: &Resolver) -> Result<CompiledCluster, Error> {
    let policy = Policy::parse(
        &c.lb_policy,
        c.choice_count,
        c.minimum_ring_size,
        c.maximum_ring_size,
        c.maglev_table_size,
    )
    .ok_or_else(|| {
        Error::config(format!(
            "{path}.lb_policy: {:?} is not one of ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV",
            c.lb_policy
        ))
    })?;
    if !is_prime(c.maglev_table_size) || c.maglev_table_size > 5_000_011 {
        return Err(Error::config(format!(
            "{path}.maglev_table_size: {} is not a prime number up to 5000011",
            c.maglev_table_size
        )));
    }
    if c.minimum_ring_size > c.maximum_ring_size || c.maximum_ring_size > 8 << 20 {
        return Err(Error::config(format!(
            "{path}: ring sizes {}..{}: the minimum must not exceed the maximum, nor the maximum 8388608",
            c.minimum_ring_size, c.maximum_ring_size
        )));
    }
    if let Some(h) = &c.health_check {
        check_health(h, &format!("{path}.health_check"))?;
    }
    if let Some(o) = &c.outlier_detection {
        check_outlier(o, &format!("{path}.outlier_detection"))?;
    }
    if !(1..=1000).contains(&c.choice_count) {
        return Err(Error::config(format!(
            "{path}.choice_count: {} is out of range; expected 1 to 1000 (each pick draws that many hosts)",
            c.choice_count
        )));
    }
    let discovery = match c.discovery.as_str() {
        "STATIC" => Discovery::Static,
        "STRICT_DNS" => Discovery::StrictDns,
        other => {
            return Err(Error::config(format!(
                "{path}.type: {other:?} is not one of STATIC, STRICT_DNS"
            )))
        }
    };
    let hosts = match discovery {
        Discovery::Static => {
            let mut hosts = Vec::new();
            for (i, e) in c.endpoints.iter().enumerate() {
                let ip: IpAddr = e.address.parse().map_err(|_| {
                    Error::config(format!(
                        "{path}.endpoints[{i}].address: {:?} is not an IP address (a STATIC cluster needs IP literals; use STRICT_DNS for names)",
                        e.address
                    ))
                })?;
                hosts.push(HostAddr {
                    addr: SocketAddr::new(ip, e.port),
                    weight: e.weight,
                    endpoint: i as u32,
                });
            }
            hosts
        }
        Discovery::StrictDns => resolver(c),
    };
    Ok(CompiledCluster {
        name: Arc::from(c.name.as_str()),
        cfg: c.clone(),
        policy,
        discovery,
        hosts,
        connect_timeout: Duration::from_millis(c.connect_timeout_ms.max(1)),
        breakers: Arc::new(crate::upstream::breaker::Breakers::new(
            &c.circuit_breakers,
            &c.circuit_breakers_high,
        )),
        health: c.health_check.as_ref().map(|h| {
            Arc::new(crate::upstream::health::HealthState::new(
                h.clone(),
                Arc::from(c.name.as_str()),
            ))
        }),
        outlier: c.outlier_detection.as_ref().map(|o| {
            Arc::new(crate::upstream::outlier::OutlierState::new(
                o.clone(),
                Arc::from(c.name.as_str()),
            ))
        }),
    })
}

/// Outlier detection the health thread can run: positive times, percentages up to 100.
fn check_outlier(o: &crate::config::OutlierDetection, path: &str) -> Result<(), Error> {
    let bad = |what: &str, why: &str| Err(Error::config(format!("{path}.{what}: {why}")));
    for (what, ms) in [
        ("interval_ms", o.interval_ms),
        ("base_ejection_time_ms", o.base_ejection_time_ms),
        ("max_ejection_time_ms", o.max_ejection_time_ms),
    ] {
        if ms == 0 {
            return bad(what, "must be greater than 0");
        }
    }
    if o.max_ejection_time_ms < o.base_ejection_time_ms {
        return bad(
            "max_ejection_time_ms",
            "must not be less than base_ejection_time_ms",
        );
    }
    for (what, v) in [
        ("max_ejection_percent", o.max_ejection_percent),
        ("enforcing_consecutive_5xx", o.enforcing_consecutive_5xx),
        (
            "enforcing_consecutive_gateway_failure",
            o.enforcing_consecutive_gateway_failure,
        ),
        (
            "enforcing_consecutive_local_origin_failure",
            o.enforcing_consecutive_local_origin_failure,
        ),
        ("enforcing_success_rate", o.enforcing_success_rate),
        (
            "enforcing_local_origin_success_rate",
            o.enforcing_local_origin_success_rate,
        ),
        (
            "enforcing_failure_percentage",
            o.enforcing_failure_percentage,
        ),
        (
            "enforcing_failure_percentage_local_origin",
            o.enforcing_failure_percentage_local_origin,
        ),
        (
            "failure_percentage_threshold",
            o.failure_percentage_threshold,
        ),
    ] {
        if v > 100 {
            return bad(what, &format!("{v} is over 100 (a percentage)"));
        }
    }
    Ok(())
}

/// A health check the checker can run: positive times, a check of one kind, and an HTTP
/// request that is one (no CR, LF or spaces where they would split it).
fn check_health(h: &crate::config::HealthCheck, path: &str) -> Result<(), Error> {
    let bad = |what: &str, why: &str| Err(Error::config(format!("{path}.{what}: {why}")));
    if h.timeout_ms == 0 || h.interval_ms == 0 || h.no_traffic_interval_ms == 0 {
        return bad(
            "timeout_ms",
            "the timeout and intervals must be greater than 0",
        );
    }
    match (&h.http, &h.tcp) {
        (Some(_), Some(_)) | (None, None) => bad("http", "set exactly one of http and tcp"),
        (Some(x), None) => {
            let clean = |v: &str| !v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
            if !x.path.starts_with('/') || x.path.contains(' ') || !clean(&x.path) {
                return bad("http.path", "must be a request path");
            }
            if x.method != "GET" && x.method != "HEAD" {
                return bad("http.method", "must be GET or HEAD");
            }
            if x.host
                .as_deref()
                .is_some_and(|v| v.contains(' ') || !clean(v))
            {
                return bad("http.host", "must be a host name");
            }
            for a in &x.add {
                let name_ok = !a.name.is_empty()
                    && a.name.bytes().all(crate::http1::head::is_tchar)
                    && a.name != "host";
                if !name_ok || !clean(&a.value) {
                    return bad("http.add", &format!("{:?} cannot be added", a.name));
                }
            }
            Ok(())
        }
        (None, Some(_)) => Ok(()),
    }
}

/// Compiles a snapshot with the system resolver. Errors name the snapshot path
/// (`clusters[1].lb_policy`).
pub fn compile(s: &Snapshot) -> Result<Compiled, Error> {
    compile_with(s, &system_resolver())
}

/// Compiles a snapshot, resolving STRICT_DNS clusters with `resolver`.
pub fn compile_with(s: &Snapshot, resolver: &Resolver) -> Result<Compiled, Error> {
    let mut names = HashSet::new();
    let mut clusters = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, c) in s.clusters.iter().enumerate() {
        let path = format!("clusters[{i}]");
        if !names.insert(c.name.as_str()) {
            return Err(Error::config(format!(
                "{path}.name: duplicate cluster name {:?}",
                c.name
            )));
        }
        index.insert(c.name.as_str(), i);
        clusters.push(Arc::new(compile_cluster(c, &path, resolver)?));
    }
    let mut lnames = HashSet::new();
    let mut listeners = Vec::new();
    for (i, l) in s.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        if !lnames.insert(l.name.as_str()) {
            return Err(Error::config(format!(
                "{path}.name: duplicate listener name {:?}",
                l.name
            )));
        }
        let ip: IpAddr = l.address.parse().map_err(|_| {
            Error::config(format!(
                "{path}.address: {:?} is not an IP address",
                l.address
            ))
        })?;
        crate::router::check_value(&l.hcm.server_name, &format!("{path}.hcm.server_name"))?;
        let routes = RouteTable::compile(
            &l.hcm.route_config,
            &index,
            &format!("{path}.hcm.route_config"),
        )?;
        let logs =
            crate::accesslog::Logs::compile(&l.hcm.access_log, &format!("{path}.hcm.access_log"))?;
        listeners.push(Arc::new(CompiledListener {
            logs,
            name: Arc::from(l.name.as_str()),
            addr: SocketAddr::new(ip, l.port),
            routes,
            server_name: l.hcm.server_name.clone().into_bytes(),
            cfg: l.clone(),
        }));
    }
    Ok(Compiled {
        listeners,
        clusters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(max_requests: u64, other_max: u64) -> Snapshot {
        let cluster = |name: &str, max: u64| {
            serde_json::json!({"name": name, "type": "STATIC",
                "endpoints": [{"address": "127.0.0.1", "port": 1}],
                "circuit_breakers": {"max_connections": 1024, "max_pending_requests": 1024,
                    "max_requests": max, "max_retries": 3, "track_remaining": false}})
        };
        let doc = serde_json::json!({"listeners": [], "clusters": [
            cluster("same", max_requests), cluster("changed", other_max)]});
        Snapshot::from_json(doc.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn an_unchanged_cluster_keeps_its_breakers_and_what_they_count() {
        let old = compile(&snapshot(5, 5)).unwrap();
        old.clusters[0].breakers.default.rq.take();
        old.clusters[1].breakers.default.rq.take();
        let mut new = compile(&snapshot(5, 6)).unwrap();
        new.keep_unchanged(&old);
        assert!(Arc::ptr_eq(
            &new.clusters[0].breakers,
            &old.clusters[0].breakers
        ));
        assert_eq!(new.clusters[0].breakers.default.rq.open(), 1);
        // A changed cluster starts from none, as Envoy's new cluster does.
        assert!(!Arc::ptr_eq(
            &new.clusters[1].breakers,
            &old.clusters[1].breakers
        ));
        assert_eq!(new.clusters[1].breakers.default.rq.open(), 0);
    }
}
