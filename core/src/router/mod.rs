//! The router: a route configuration compiled once per snapshot into lookup structures, then
//! matched per request with no allocation on the common path.
//!
//! Virtual hosts are chosen by `:authority` with Envoy's precedence: exact domain, then the
//! longest `*suffix` wildcard, then the longest `prefix*` wildcard, then `*`. Routes are tried in
//! order; the first whose path, header and query matchers all pass wins.

pub mod matcher;

use std::collections::HashMap;

use bytes::Bytes;
use regex::bytes::Regex;

use crate::config::{self, HeaderMutations, PathMatch, RouteAction, RouteConfiguration};
use crate::http1::head::HeaderMap;
use crate::Error;
use matcher::{full_regex, ValueMatcher};

/// Header edits compiled from a [`HeaderMutations`].
#[derive(Debug, Clone, Default)]
pub struct Mutations {
    /// (name, value, append).
    pub request_add: Vec<(Vec<u8>, Vec<u8>, bool)>,
    pub request_remove: Vec<Vec<u8>>,
    pub response_add: Vec<(Vec<u8>, Vec<u8>, bool)>,
    pub response_remove: Vec<Vec<u8>>,
}

impl Mutations {
    fn compile(m: &HeaderMutations) -> Mutations {
        let add = |v: &[config::HeaderValueOption]| {
            v.iter()
                .map(|h| {
                    (
                        h.key.to_ascii_lowercase().into_bytes(),
                        h.value.clone().into_bytes(),
                        h.append,
                    )
                })
                .collect()
        };
        let rm = |v: &[String]| {
            v.iter()
                .map(|h| h.to_ascii_lowercase().into_bytes())
                .collect()
        };
        Mutations {
            request_add: add(&m.request_headers_to_add),
            request_remove: rm(&m.request_headers_to_remove),
            response_add: add(&m.response_headers_to_add),
            response_remove: rm(&m.response_headers_to_remove),
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }

    /// Applies the request edits: removals first, then additions, as Envoy.
    pub fn apply_request(&self, h: &mut HeaderMap) {
        apply(h, &self.request_remove, &self.request_add);
    }

    /// Applies the response edits.
    pub fn apply_response(&self, h: &mut HeaderMap) {
        apply(h, &self.response_remove, &self.response_add);
    }
}

/// Removals first, then additions. An overwrite removes every existing line of the header and
/// appends the new one at the end, as Envoy's header parser does (not an in-place edit).
fn apply(h: &mut HeaderMap, remove: &[Vec<u8>], add: &[(Vec<u8>, Vec<u8>, bool)]) {
    for n in remove {
        h.remove(n);
    }
    for (n, v, append) in add {
        if !*append {
            h.remove(n);
        }
        h.append(n, v);
    }
}

#[derive(Debug, Clone)]
enum PathMatcher {
    Prefix(Vec<u8>),
    Path(Vec<u8>),
    Regex(Regex),
}

#[derive(Debug, Clone)]
struct HeaderMatch {
    name: Vec<u8>,
    m: ValueMatcher,
    invert: bool,
    ignore_case: bool,
}

#[derive(Debug, Clone)]
struct QueryMatch {
    name: Vec<u8>,
    m: ValueMatcher,
    ignore_case: bool,
}

/// Forwarding to one cluster or a weighted set.
#[derive(Debug, Clone)]
pub struct Forward {
    /// (index into the snapshot's clusters, weight, per-cluster header edits).
    pub clusters: Vec<(usize, u32, Mutations)>,
    /// Sum of the weights.
    pub total_weight: u64,
    pub prefix_rewrite: Option<Vec<u8>>,
    pub host_rewrite: Option<Vec<u8>>,
    pub auto_host_rewrite: bool,
    /// Route timeout in ms; 0 disables.
    pub timeout_ms: u64,
    /// `x-envoy-expected-rq-timeout-ms` value, pre-rendered.
    pub timeout_header: Vec<u8>,
}

impl Forward {
    /// Picks the cluster (weighted random when several).
    #[inline]
    pub fn pick(&self) -> &(usize, u32, Mutations) {
        if self.clusters.len() == 1 {
            return &self.clusters[0];
        }
        let mut r = fastrand::u64(0..self.total_weight.max(1));
        for c in &self.clusters {
            if r < u64::from(c.1) {
                return c;
            }
            r -= u64::from(c.1);
        }
        &self.clusters[self.clusters.len() - 1]
    }
}

/// A redirect, compiled.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub cfg: config::RedirectAction,
    pub prefix_len: usize,
}

/// What a route does.
#[derive(Debug, Clone)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct { status: u16, body: Bytes },
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    path: PathMatcher,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
    /// The action.
    pub action: Action,
    /// Route-level header edits.
    pub mutations: Mutations,
}

/// A compiled virtual host.
#[derive(Debug, Clone)]
pub struct VirtualHost {
    /// Envoy name.
    pub name: String,
    routes: Vec<Route>,
    /// Virtual-host-level header edits.
    pub mutations: Mutations,
}

/// A compiled route configuration.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    vhosts: Vec<VirtualHost>,
    exact: HashMap<Vec<u8>, usize>,
    /// (suffix, vhost), longest first.
    suffix: Vec<(Vec<u8>, usize)>,
    /// (prefix, vhost), longest first.
    prefix: Vec<(Vec<u8>, usize)>,
    default: Option<usize>,
    /// Route-configuration-level header edits.
    pub mutations: Mutations,
}

impl RouteTable {
    /// Compiles `rc`; `clusters` maps cluster names to snapshot indices; `path` prefixes errors.
    pub fn compile(
        rc: &RouteConfiguration,
        clusters: &HashMap<&str, usize>,
        path: &str,
    ) -> Result<RouteTable, Error> {
        let mut t = RouteTable {
            mutations: Mutations::compile(&rc.headers),
            ..Default::default()
        };
        for (vi, vh) in rc.virtual_hosts.iter().enumerate() {
            let vpath = format!("{path}.virtual_hosts[{vi}]");
            for (di, d) in vh.domains.iter().enumerate() {
                let d = d.to_ascii_lowercase();
                let dup = || {
                    Error::config(format!("{vpath}.domains[{di}]: domain {d:?} is already used by another virtual host"))
                };
                if d == "*" {
                    if t.default.replace(vi).is_some() {
                        return Err(dup());
                    }
                } else if let Some(s) = d.strip_prefix('*') {
                    if t.suffix.iter().any(|(x, _)| x == s.as_bytes()) {
                        return Err(dup());
                    }
                    t.suffix.push((s.as_bytes().to_vec(), vi));
                } else if let Some(p) = d.strip_suffix('*') {
                    if t.prefix.iter().any(|(x, _)| x == p.as_bytes()) {
                        return Err(dup());
                    }
                    t.prefix.push((p.as_bytes().to_vec(), vi));
                } else if t.exact.insert(d.as_bytes().to_vec(), vi).is_some() {
                    return Err(dup());
                }
            }
            let mut routes = Vec::with_capacity(vh.routes.len());
            for (ri, r) in vh.routes.iter().enumerate() {
                routes.push(compile_route(
                    r,
                    clusters,
                    &format!("{vpath}.routes[{ri}]"),
                )?);
            }
            t.vhosts.push(VirtualHost {
                name: vh.name.clone(),
                routes,
                mutations: Mutations::compile(&vh.headers),
            });
        }
        t.suffix.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        t.prefix.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Ok(t)
    }

    /// The virtual host for a (lower-cased) host.
    pub fn virtual_host(&self, host: &[u8]) -> Option<&VirtualHost> {
        if let Some(i) = self.exact.get(host) {
            return Some(&self.vhosts[*i]);
        }
        for (s, i) in &self.suffix {
            if host.len() > s.len() && host.ends_with(s) {
                return Some(&self.vhosts[*i]);
            }
        }
        for (p, i) in &self.prefix {
            if host.len() > p.len() && host.starts_with(p) {
                return Some(&self.vhosts[*i]);
            }
        }
        self.default.map(|i| &self.vhosts[i])
    }

    /// Finds the route for a request; `host` must be lower-case, `target` is the request
    /// target (path and query).
    pub fn route<'a>(
        &'a self,
        host: &[u8],
        target: &[u8],
        headers: &HeaderMap,
    ) -> Option<(&'a VirtualHost, &'a Route)> {
        let vh = self.virtual_host(host)?;
        let (path, query) = match memchr::memchr(b'?', target) {
            Some(i) => (&target[..i], Some(&target[i + 1..])),
            None => (target, None),
        };
        vh.routes
            .iter()
            .find(|r| r.matches(path, query, headers))
            .map(|r| (vh, r))
    }
}

fn compile_route(
    r: &config::Route,
    clusters: &HashMap<&str, usize>,
    path: &str,
) -> Result<Route, Error> {
    let m = &r.route_match;
    let cs = m.case_sensitive;
    let norm = |s: &str| {
        if cs {
            s.as_bytes().to_vec()
        } else {
            s.to_ascii_lowercase().into_bytes()
        }
    };
    let pm = match &m.path {
        PathMatch::Prefix(p) => PathMatcher::Prefix(norm(p)),
        PathMatch::Path(p) => PathMatcher::Path(norm(p)),
        PathMatch::SafeRegex(re) => {
            PathMatcher::Regex(full_regex(re, &format!("{path}.match.safe_regex"))?)
        }
    };
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(HeaderMatch {
            name: h.name.to_ascii_lowercase().into_bytes(),
            m: ValueMatcher::compile(
                &h.value_match,
                h.ignore_case,
                &format!("{path}.match.headers[{i}]"),
            )?,
            invert: h.invert_match,
            ignore_case: h.ignore_case,
        });
    }
    let mut query = Vec::new();
    for (i, q) in m.query_parameters.iter().enumerate() {
        query.push(QueryMatch {
            name: q.name.clone().into_bytes(),
            m: ValueMatcher::compile(
                &q.value_match,
                q.ignore_case,
                &format!("{path}.match.query_parameters[{i}]"),
            )?,
            ignore_case: q.ignore_case,
        });
    }
    let action = match &r.action {
        RouteAction::Route(f) => {
            let lookup = |name: &str, p: String| {
                clusters
                    .get(name)
                    .copied()
                    .ok_or_else(|| Error::config(format!("{p}: unknown cluster {name:?}")))
            };
            let list = match (&f.cluster, &f.weighted_clusters) {
                (Some(c), None) => vec![(
                    lookup(c, format!("{path}.route.cluster"))?,
                    1,
                    Mutations::default(),
                )],
                (None, Some(w)) if !w.is_empty() => {
                    let mut v = Vec::new();
                    for (i, wc) in w.iter().enumerate() {
                        let p = format!("{path}.route.weighted_clusters.clusters[{i}].name");
                        v.push((
                            lookup(&wc.name, p)?,
                            wc.weight,
                            Mutations::compile(&wc.headers),
                        ));
                    }
                    v
                }
                _ => {
                    return Err(Error::config(format!(
                        "{path}.route: exactly one of cluster and weighted_clusters must be set"
                    )))
                }
            };
            let total_weight = list.iter().map(|c| u64::from(c.1)).sum();
            if total_weight == 0 {
                return Err(Error::config(format!(
                    "{path}.route.weighted_clusters: the weights sum to 0"
                )));
            }
            Action::Forward(Forward {
                clusters: list,
                total_weight,
                prefix_rewrite: f.prefix_rewrite.as_ref().map(|s| s.as_bytes().to_vec()),
                host_rewrite: f
                    .host_rewrite_literal
                    .as_ref()
                    .map(|s| s.as_bytes().to_vec()),
                auto_host_rewrite: f.auto_host_rewrite,
                timeout_ms: f.timeout_ms,
                timeout_header: f.timeout_ms.to_string().into_bytes(),
            })
        }
        RouteAction::Redirect(rd) => {
            let prefix_len = match &m.path {
                PathMatch::Prefix(p) => p.len(),
                _ => 0,
            };
            Action::Redirect(Redirect {
                cfg: rd.clone(),
                prefix_len,
            })
        }
        RouteAction::DirectResponse(d) => Action::Direct {
            status: d.status,
            body: Bytes::from(d.body.clone().unwrap_or_default().into_bytes()),
        },
    };
    Ok(Route {
        path: pm,
        case_sensitive: cs,
        headers,
        query,
        action,
        mutations: Mutations::compile(&r.headers),
    })
}

impl Route {
    /// Length of the path that `prefix_rewrite` replaces: the matched prefix, or the whole
    /// path for a `path` match; `None` for regex routes.
    pub fn prefix_len(&self) -> Option<usize> {
        match &self.path {
            PathMatcher::Prefix(p) | PathMatcher::Path(p) => Some(p.len()),
            PathMatcher::Regex(_) => None,
        }
    }

    fn matches(&self, path: &[u8], query: Option<&[u8]>, headers: &HeaderMap) -> bool {
        let ok = match &self.path {
            PathMatcher::Prefix(p) => {
                path.len() >= p.len()
                    && if self.case_sensitive {
                        path.starts_with(p)
                    } else {
                        path[..p.len()].eq_ignore_ascii_case(p)
                    }
            }
            PathMatcher::Path(p) => {
                if self.case_sensitive {
                    path == &p[..]
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatcher::Regex(re) => re.is_match(path),
        };
        if !ok {
            return false;
        }
        for h in &self.headers {
            // Several values of one header are matched as one comma-joined value, as Envoy.
            let mut vals = headers.get_all(&h.name);
            let first = vals.next();
            let joined;
            let value = match (first, vals.next()) {
                (None, _) => None,
                (Some(v), None) => Some(v),
                (Some(v), Some(second)) => {
                    let mut j = v.to_vec();
                    for x in std::iter::once(second).chain(vals) {
                        j.push(b',');
                        j.extend_from_slice(x);
                    }
                    joined = j;
                    Some(&joined[..])
                }
            };
            if h.m.matches(value, h.ignore_case) == h.invert {
                return false;
            }
        }
        for q in &self.query {
            let value = query.and_then(|qs| {
                qs.split(|b| *b == b'&').find_map(|kv| {
                    let (k, v) = match memchr::memchr(b'=', kv) {
                        Some(i) => (&kv[..i], &kv[i + 1..]),
                        None => (kv, &b""[..]),
                    };
                    (k == &q.name[..]).then_some(v)
                })
            });
            if !q.m.matches(value, q.ignore_case) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::head::parse_request;
    use bytes::BytesMut;

    fn table(json: &str) -> RouteTable {
        let rc: RouteConfiguration = serde_json::from_str(json).unwrap();
        let clusters: HashMap<&str, usize> = [("a", 0), ("b", 1)].into_iter().collect();
        RouteTable::compile(&rc, &clusters, "route_config").unwrap()
    }

    fn headers(h: &str) -> HeaderMap {
        parse_request(
            &mut BytesMut::from(format!("GET / HTTP/1.1\r\n{h}\r\n").as_bytes()),
            65536,
        )
        .unwrap()
        .unwrap()
        .headers
    }

    #[test]
    fn domain_precedence() {
        let t = table(
            r#"{"virtual_hosts": [
            {"name": "any", "domains": ["*"]},
            {"name": "pre", "domains": ["foo.*"]},
            {"name": "suf", "domains": ["*.foo.com"]},
            {"name": "longsuf", "domains": ["*.bar.foo.com"]},
            {"name": "exact", "domains": ["www.foo.com"]}
        ]}"#,
        );
        let cases = [
            ("www.foo.com", "exact"),
            ("a.bar.foo.com", "longsuf"),
            ("x.foo.com", "suf"),
            ("foo.org", "pre"),
            ("foo.com", "pre"),
            ("other", "any"),
        ];
        for (host, want) in cases {
            assert_eq!(
                t.virtual_host(host.as_bytes()).unwrap().name,
                want,
                "{host}"
            );
        }
    }

    #[test]
    fn duplicate_domain_is_an_error() {
        let rc: RouteConfiguration = serde_json::from_str(
            r#"{"virtual_hosts": [{"name": "a", "domains": ["x"]}, {"name": "b", "domains": ["x"]}]}"#,
        )
        .unwrap();
        let err = RouteTable::compile(&rc, &HashMap::new(), "rc").unwrap_err();
        assert!(
            err.message().contains("rc.virtual_hosts[1].domains[0]"),
            "{err}"
        );
    }

    #[test]
    fn route_matching_table() {
        let t = table(
            r#"{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"name": "exact", "match": {"path": {"path": "/exact"}}, "action": {"route": {"cluster": "a"}}},
            {"name": "ci", "match": {"path": {"prefix": "/CI"}, "case_sensitive": false}, "action": {"route": {"cluster": "a"}}},
            {"name": "re", "match": {"path": {"safe_regex": "/v[0-9]+/.*"}}, "action": {"route": {"cluster": "a"}}},
            {"name": "hdr", "match": {"path": {"prefix": "/h"}, "headers": [{"name": "x-env", "match": {"exact": "canary"}}]}, "action": {"route": {"cluster": "b"}}},
            {"name": "inv", "match": {"path": {"prefix": "/h"}, "headers": [{"name": "x-env", "match": {"present": true}, "invert_match": true}]}, "action": {"route": {"cluster": "a"}}},
            {"name": "q", "match": {"path": {"prefix": "/q"}, "query_parameters": [{"name": "debug", "match": {"exact": "1"}}]}, "action": {"route": {"cluster": "a"}}},
            {"name": "all", "match": {"path": {"prefix": "/"}}, "action": {"direct_response": {"status": 200}}}
        ]}]}"#,
        );
        let cases = [
            ("/exact", "", "exact"),
            ("/exact?x=1", "", "exact"),
            ("/exactly", "", "all"),
            ("/ci/path", "", "ci"),
            ("/v12/x", "", "re"),
            ("/v12", "", "all"),
            ("/h", "x-env: canary\r\n", "hdr"),
            ("/h", "", "inv"),
            ("/h", "x-env: other\r\n", "all"),
            ("/q?a=2&debug=1", "", "q"),
            ("/q?debug=2", "", "all"),
        ];
        for (target, hdrs, want) in cases {
            let (_, r) = t.route(b"x", target.as_bytes(), &headers(hdrs)).unwrap();
            let got = t.vhosts[0]
                .routes
                .iter()
                .position(|x| std::ptr::eq(x, r))
                .unwrap();
            let names = ["exact", "ci", "re", "hdr", "inv", "q", "all"];
            assert_eq!(names[got], want, "{target} {hdrs:?}");
        }
    }

    #[test]
    fn unknown_cluster_names_the_path() {
        let rc: RouteConfiguration = serde_json::from_str(
            r#"{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"path": {"prefix": "/"}}, "action": {"route": {"cluster": "nope"}}}]}]}"#,
        )
        .unwrap();
        let err = RouteTable::compile(&rc, &HashMap::new(), "rc").unwrap_err();
        assert_eq!(
            err.message(),
            "rc.virtual_hosts[0].routes[0].route.cluster: unknown cluster \"nope\""
        );
    }
}
