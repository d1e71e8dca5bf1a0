//! The router: a route configuration compiled once per snapshot into lookup structures, then
//! matched per request with no allocation on the common path.
//!
//! Virtual hosts are chosen by `:authority` with Envoy's precedence: exact domain, then the
//! longest `*suffix` wildcard, then the longest `prefix*` wildcard, then `*`. The first route, in
//! order, whose path, header and query matchers all pass wins; [`index`] finds it without trying
//! the routes whose path cannot match.

pub mod format;
pub mod hash;
mod index;
pub mod matcher;
pub mod retry;

use std::collections::HashMap;

use bytes::Bytes;
use regex::bytes::Regex;

use crate::config::{self, HeaderMutations, PathMatch, RouteAction, RouteConfiguration};
use crate::http1::head::{is_tchar, join_values, HeaderMap, REQUEST_INLINE, RESPONSE_INLINE};
use crate::Error;
pub use format::{Cx, ReqView, Value};
use index::{Literal, RouteIndex};
use matcher::{full_regex, ValueMatcher};

/// A header to add, compiled.
#[derive(Debug, Clone)]
pub struct Add {
    /// Lower-case name.
    pub name: Vec<u8>,
    pub value: Value,
    /// `false`: replace the existing values.
    pub append: bool,
    /// Envoy `keep_empty_value`: add the header even when the value comes out empty.
    pub keep_empty: bool,
    /// An appended value joins an existing header's line with `,` instead of adding a line:
    /// Envoy keeps the names of [`REQUEST_INLINE`] / [`RESPONSE_INLINE`] as one entry each.
    pub join: bool,
}

/// The retry and timeout headers Envoy's router takes from a request and removes, after the
/// route's edits (an edit that adds one is dropped; the client's are dropped earlier).
const ROUTER_CONSUMED: &[&str] = &[
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-max-retries",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-stream-duration-ms",
];

/// Header edits compiled from a [`HeaderMutations`].
#[derive(Debug, Clone, Default)]
pub struct Mutations {
    pub request_add: Vec<Add>,
    pub request_remove: Vec<Vec<u8>>,
    pub response_add: Vec<Add>,
    pub response_remove: Vec<Vec<u8>>,
    /// Whether a request value reads the request line (`%REQ(:path)%` and the like).
    pub request_reads_request: bool,
    /// Whether a response value reads the request (`%REQ(...)%`), which must then be kept
    /// until the response.
    pub response_reads_request: bool,
    /// Whether a response value has commands at all.
    pub response_commands: bool,
}

impl Mutations {
    /// No edits (a `const`, for the built-in routes).
    pub const NONE: Mutations = Mutations {
        request_add: Vec::new(),
        request_remove: Vec::new(),
        response_add: Vec::new(),
        response_remove: Vec::new(),
        request_reads_request: false,
        response_reads_request: false,
        response_commands: false,
    };
}

/// Refuses a string that would go out in a header value or the request line with a CR, LF or
/// NUL in it (header injection). The control plane refuses these first; the engine checks
/// again, since a snapshot is the boundary into it.
pub(crate) fn check_value(v: &str, path: &str) -> Result<(), Error> {
    if breaks_line(v.as_bytes()) {
        return Err(Error::config(format!(
            "{path}: must not contain CR, LF or NUL"
        )));
    }
    Ok(())
}

/// Whether `v` holds a CR, LF or NUL: bytes that end a header line early.
pub(crate) fn breaks_line(v: &[u8]) -> bool {
    v.iter().any(|c| matches!(c, b'\r' | b'\n' | 0))
}

/// Refuses a header name that is not an HTTP token (RFC 9110 section 5.6.2).
fn check_name(n: &str, path: &str) -> Result<(), Error> {
    if n.is_empty() || !n.bytes().all(is_tchar) {
        return Err(Error::config(format!(
            "{path}: {n:?} is not a valid header name"
        )));
    }
    Ok(())
}

impl Mutations {
    fn compile(m: &HeaderMutations, path: &str) -> Result<Mutations, Error> {
        let add = |field: &str, list: &[config::HeaderValueOption]| -> Result<Vec<Add>, Error> {
            let mut out = Vec::with_capacity(list.len());
            for (i, h) in list.iter().enumerate() {
                check_name(&h.key, &format!("{path}.{field}[{i}].header.key"))?;
                check_value(&h.value, &format!("{path}.{field}[{i}].header.value"))?;
                let name = h.key.to_ascii_lowercase();
                // The body's framing is the proxy's to write: a configured length or coding
                // would contradict it (Envoy then sends `content-length: 2,7`).
                if matches!(name.as_str(), "content-length" | "transfer-encoding") {
                    return Err(Error::config(format!(
                        "{path}.{field}[{i}].header.key: {name:?} frames the body and is the \
                         proxy's to write; it may not be added"
                    )));
                }
                // Envoy's codec drops these from a response it writes.
                if field == "response_headers_to_add"
                    && matches!(name.as_str(), "connection" | "upgrade")
                {
                    continue;
                }
                let value = Value::compile(&h.value, &format!("{path}.{field}[{i}].header.value"))?;
                // Envoy's router reads these after the edits and removes them (checked against
                // the envoy binary): an edit that adds one never reaches the upstream.
                if field == "request_headers_to_add" && ROUTER_CONSUMED.contains(&name.as_str()) {
                    continue;
                }
                if value == Value::Static(Vec::new()) && !h.keep_empty_value {
                    continue;
                }
                let inline = if field == "request_headers_to_add" {
                    REQUEST_INLINE
                } else {
                    RESPONSE_INLINE
                };
                out.push(Add {
                    join: inline.contains(name.as_bytes()),
                    name: name.into_bytes(),
                    value,
                    append: h.append,
                    keep_empty: h.keep_empty_value,
                });
            }
            Ok(out)
        };
        for (field, list) in [
            ("request_headers_to_remove", &m.request_headers_to_remove),
            ("response_headers_to_remove", &m.response_headers_to_remove),
        ] {
            for (i, n) in list.iter().enumerate() {
                check_name(n, &format!("{path}.{field}[{i}]"))?;
            }
        }
        let rm = |v: &[String]| {
            v.iter()
                .map(|h| h.to_ascii_lowercase().into_bytes())
                .collect()
        };
        let response_add = add("response_headers_to_add", &m.response_headers_to_add)?;
        let request_add = add("request_headers_to_add", &m.request_headers_to_add)?;
        Ok(Mutations {
            request_reads_request: request_add.iter().any(|a| a.value.reads_request()),
            request_add,
            request_remove: rm(&m.request_headers_to_remove),
            response_reads_request: response_add.iter().any(|a| a.value.reads_request()),
            response_commands: response_add
                .iter()
                .any(|a| matches!(a.value, Value::Template(_))),
            response_add,
            response_remove: rm(&m.response_headers_to_remove),
        })
    }

    /// Whether the request edits remove `name` (lower-case).
    #[inline]
    pub fn removes_from_request(&self, name: &[u8]) -> bool {
        self.request_remove.iter().any(|n| n == name)
    }

    /// Whether the response edits remove `name` (lower-case).
    #[inline]
    pub fn removes_from_response(&self, name: &[u8]) -> bool {
        self.response_remove.iter().any(|n| n == name)
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }

    /// Applies the request edits: removals first, then additions, as Envoy. Inlined, so that
    /// the usual case, no edits at this level, costs two compares instead of a call. `cx`
    /// answers the values' commands; its `request` is read before the edits start.
    #[inline]
    pub fn apply_request(&self, h: &mut HeaderMap, cx: &Cx<'_>) {
        if !(self.request_remove.is_empty() && self.request_add.is_empty()) {
            apply(h, &self.request_remove, &self.request_add, cx);
        }
    }

    /// Applies the response edits.
    #[inline]
    pub fn apply_response(&self, h: &mut HeaderMap, cx: &Cx<'_>) {
        if !(self.response_remove.is_empty() && self.response_add.is_empty()) {
            apply(h, &self.response_remove, &self.response_add, cx);
        }
    }
}

/// Removals first, then additions, as Envoy's header parser applies one level's edits: every
/// value is rendered against the headers as they stand before any is added; then the
/// overwrites, each removing every line of its header and adding one at the end (not an
/// in-place edit); then the appends, in config order. A value whose commands come out empty
/// is not added, unless `keep_empty_value`. An append to an inline header that is present
/// joins its line (see [`Add::join`]).
fn apply(h: &mut HeaderMap, remove: &[Vec<u8>], add: &[Add], cx: &Cx<'_>) {
    for n in remove {
        h.remove(n);
    }
    // Static values (the usual case) need no rendering pass and no allocation.
    let rendered: Vec<Option<std::borrow::Cow<'_, [u8]>>> =
        if add.iter().all(|a| matches!(a.value, Value::Static(_))) {
            Vec::new()
        } else {
            add.iter()
                .map(|a| {
                    let v = a.value.render(cx, h);
                    (!v.is_empty() || a.keep_empty).then_some(v)
                })
                .collect()
        };
    let value = |i: usize| -> Option<&[u8]> {
        match (&add[i].value, rendered.get(i)) {
            (Value::Static(v), _) => Some(v),
            (_, Some(v)) => v.as_deref(),
            (_, None) => None,
        }
    };
    for (i, a) in add.iter().enumerate() {
        if !a.append {
            if let Some(v) = value(i) {
                h.remove(&a.name);
                h.append(&a.name, v);
            }
        }
    }
    for (i, a) in add.iter().enumerate() {
        if a.append {
            if let Some(v) = value(i) {
                if a.join && h.contains(&a.name) {
                    let joined = join_values(h.get_all(&a.name).chain([v]));
                    h.set(&a.name, &joined);
                } else {
                    h.append(&a.name, v);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum PathMatcher {
    Prefix(Vec<u8>),
    Path(Vec<u8>),
    Regex(Regex),
}

/// What a header matcher tests: a header, or one of the request's pseudo-headers, which an
/// HTTP/1 request carries in its request line and `host` (Envoy's HTTP/1 codec makes them
/// `:method`, `:path`, `:authority` and `:scheme`).
#[derive(Debug, Clone)]
enum HeaderSource {
    /// A header by (lower-case) name; `host` is `:authority`, as in Envoy.
    Header(Vec<u8>),
    Method,
    /// The target as routed: path and query.
    Path,
    Scheme,
    /// A response's `:status` (a retry policy's `retriable_headers`).
    Status,
    /// A pseudo-header an HTTP/1 request never has (`:protocol`, ...).
    Absent,
}

impl HeaderSource {
    fn of(name: &str) -> HeaderSource {
        match name.to_ascii_lowercase().as_str() {
            ":method" => HeaderSource::Method,
            ":path" => HeaderSource::Path,
            ":authority" => HeaderSource::Header(b"host".to_vec()),
            ":scheme" => HeaderSource::Scheme,
            ":status" => HeaderSource::Status,
            n if n.starts_with(':') => HeaderSource::Absent,
            n => HeaderSource::Header(n.as_bytes().to_vec()),
        }
    }
}

/// What routing reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    pub method: &'a [u8],
    /// Path and query, in origin form.
    pub target: &'a [u8],
    /// The headers, after the connection manager's own edits (Envoy routes on those).
    pub headers: &'a HeaderMap,
    /// The scheme of an absolute-form target (`Some(true)`: https), `None` for origin form.
    pub absolute_https: Option<bool>,
}

impl RouteRequest<'_> {
    /// Envoy's `:scheme` for an HTTP/1 request on a plaintext listener: an absolute-form
    /// target's scheme, else one `x-forwarded-proto` of `http` or `https` (any case), else
    /// `http`.
    pub fn scheme(&self) -> &'static [u8] {
        let https = self.absolute_https.unwrap_or_else(|| {
            self.headers
                .only(b"x-forwarded-proto")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"https"))
        });
        if https {
            b"https"
        } else {
            b"http"
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct HeaderMatch {
    source: HeaderSource,
    m: ValueMatcher,
    invert: bool,
    ignore_case: bool,
    /// Envoy `treat_missing_header_as_empty`: an absent header is tested as an empty value.
    missing_as_empty: bool,
}

impl HeaderMatch {
    /// Compiles an Envoy `HeaderMatcher`; `path` names it in errors.
    pub(crate) fn compile(
        h: &crate::config::HeaderMatcher,
        path: &str,
    ) -> Result<HeaderMatch, Error> {
        Ok(HeaderMatch {
            source: HeaderSource::of(&h.name),
            m: ValueMatcher::compile(&h.value_match, h.ignore_case, path)?,
            invert: h.invert_match,
            ignore_case: h.ignore_case,
            missing_as_empty: h.treat_missing_header_as_empty,
        })
    }

    /// Whether the request matches.
    pub(crate) fn matches(&self, req: &RouteRequest<'_>) -> bool {
        let name = match &self.source {
            HeaderSource::Header(name) => name,
            pseudo => {
                let value = match pseudo {
                    HeaderSource::Method => Some(req.method),
                    HeaderSource::Path => Some(req.target),
                    HeaderSource::Scheme => Some(req.scheme()),
                    _ => None,
                };
                return self.test(value);
            }
        };
        self.test_all(req.headers, name)
    }

    /// Whether a response head matches (a retry policy's `retriable_headers`): its headers and
    /// `:status`.
    pub(crate) fn matches_response(&self, status: u16, h: &HeaderMap) -> bool {
        match &self.source {
            HeaderSource::Header(name) => self.test_all(h, name),
            HeaderSource::Status => self.test(Some(itoa::Buffer::new().format(status).as_bytes())),
            _ => self.test(None),
        }
    }

    /// Tests every value of header `name`.
    fn test_all(&self, headers: &HeaderMap, name: &[u8]) -> bool {
        // A header sent several times matches when any one of its values does (then
        // `invert_match` applies), as in Envoy 1.40: the values are not joined.
        let mut vals = headers.get_all(name);
        match vals.next() {
            None => self.test(None),
            Some(first) => {
                let any = std::iter::once(first)
                    .chain(vals)
                    .any(|v| self.m.matches(Some(v), self.ignore_case));
                any != self.invert
            }
        }
    }

    /// Tests a value (`None`: absent).
    #[inline]
    fn test(&self, value: Option<&[u8]>) -> bool {
        match value {
            Some(v) => self.m.matches(Some(v), self.ignore_case) != self.invert,
            None if self.missing_as_empty => {
                self.m.matches(Some(b""), self.ignore_case) != self.invert
            }
            // An absent header fails every test but `present_match`, and `invert_match` does
            // not turn that failure into a match: Envoy 1.40 takes an absent header only for
            // `present_match: false`, or `present_match: true` inverted.
            None => matches!(self.m, ValueMatcher::Present(p) if p == self.invert),
        }
    }
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
    /// The time the upstream is told it has (`x-envoy-expected-rq-timeout-ms`): the retry
    /// policy's per-try timeout, else the route timeout; 0: none.
    pub expected_timeout_ms: u64,
    /// That value pre-rendered; empty for none.
    pub timeout_header: Vec<u8>,
    /// The route's `idle_timeout` in ms, replacing the stream idle timeout (0 disables).
    pub idle_timeout_ms: Option<u64>,
    /// The route's `max_stream_duration` in ms, replacing the connection manager's (0
    /// disables).
    pub max_stream_duration_ms: Option<u64>,
    /// Route `priority: HIGH`: the cluster's `HIGH` circuit breakers and pools.
    pub high_priority: bool,
    /// The route's `upgrade_configs`: (type, lower-case; enabled).
    pub upgrades: Box<[(Box<[u8]>, bool)]>,
    /// The route's `hash_policy`, for a hashing load balancer.
    pub hash_policy: Box<[hash::HashPolicy]>,
    /// The route's `regex_rewrite` (boxed: most routes have none).
    pub regex_rewrite: Option<Box<matcher::PathRewrite>>,
    /// The route's `cluster_header`, which then names the cluster (`clusters` is unused).
    pub cluster_header: Option<Box<ClusterHeader>>,
    /// Its route's Envoy `name`, if any (`%ROUTE_NAME%`).
    pub route_name: Option<std::sync::Arc<str>>,
    /// The route's (or its virtual host's) `retry_policy` (boxed: most routes have none).
    pub retry: Option<Box<retry::RetryPolicy>>,
    /// How much of a request body is kept for a retry (`per_request_buffer_limit_bytes`;
    /// none: the listener's buffer limit).
    pub retry_buffer_limit: Option<u32>,
    /// `x-envoy-attempt-count` on the upstream request (`include_request_attempt_count`) and
    /// on the response (`include_attempt_count_in_response`).
    pub attempt_count_up: bool,
    pub attempt_count_down: bool,
}

/// A `cluster_header` route: the request header, and every cluster by name.
#[derive(Debug, Clone)]
pub struct ClusterHeader {
    pub name: Vec<u8>,
    pub clusters: HashMap<Box<[u8]>, usize>,
}

impl ClusterHeader {
    /// The cluster the request's header names (its first value, exactly), if there is one.
    pub fn pick(&self, h: &HeaderMap) -> Option<usize> {
        self.clusters.get(h.get(&self.name)?).copied()
    }
}

impl Forward {
    /// What the route says of an upgrade to `kind` (the request's `upgrade` value, any
    /// case): forward it, refuse it, or nothing (the connection manager decides).
    pub fn upgrade_say(&self, kind: &[u8]) -> Option<bool> {
        self.upgrades
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(kind))
            .map(|(_, on)| *on)
    }

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
}

/// What a route does.
#[derive(Debug, Clone)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct {
        status: u16,
        body: Bytes,
    },
    /// The virtual host's `require_tls`: a 301 to the same URL over https.
    TlsRedirect,
}

/// The route a `require_tls` virtual host answers a request in the clear with: no match, no
/// edits (Envoy's, which applies none of the virtual host's either).
static TLS_REDIRECT: Route = Route {
    path: PathMatcher::Prefix(Vec::new()),
    case_sensitive: true,
    headers: Vec::new(),
    query: Vec::new(),
    action: Action::TlsRedirect,
    mutations: Mutations::NONE,
    name: None,
};

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
    /// Envoy `name` (`%ROUTE_NAME%`), if it has one.
    pub name: Option<std::sync::Arc<str>>,
}

/// A compiled virtual host.
#[derive(Debug, Clone)]
pub struct VirtualHost {
    /// Envoy name.
    pub name: String,
    routes: Vec<Route>,
    /// Finds the first matching route among those whose path could match.
    index: RouteIndex,
    /// Virtual-host-level header edits.
    pub mutations: Mutations,
    /// `require_tls: ALL`: a request not over TLS (its scheme, from `x-forwarded-proto`, not
    /// `https`) gets [`Action::TlsRedirect`], whatever its route.
    require_tls: bool,
}

/// Wildcard domains (the literal part of `*suffix` or `prefix*`), grouped by length, longest
/// group first, each group sorted: a lookup is one binary search per distinct length, instead of
/// one compare per domain. The wildcard must stand for at least one character, as in Envoy.
#[derive(Debug, Clone, Default)]
struct Wildcards {
    /// (literal length, its literals), longest first.
    groups: Vec<(usize, LengthGroup)>,
}

/// (literal, vhost), sorted by literal.
type LengthGroup = Vec<(Vec<u8>, usize)>;

impl Wildcards {
    /// Adds a literal; false when it is already there.
    fn insert(&mut self, lit: &[u8], vhost: usize) -> bool {
        let g = match self.groups.binary_search_by(|g| lit.len().cmp(&g.0)) {
            Ok(g) => g,
            Err(g) => {
                self.groups.insert(g, (lit.len(), Vec::new()));
                g
            }
        };
        let group = &mut self.groups[g].1;
        match group.binary_search_by(|e| e.0.as_slice().cmp(lit)) {
            Ok(_) => false,
            Err(at) => {
                group.insert(at, (lit.to_vec(), vhost));
                true
            }
        }
    }

    /// The vhost of the longest literal that `part(n)` (the host's first or last `n` bytes)
    /// equals, for `n` shorter than the host.
    #[inline]
    fn find<'h>(&self, host: &'h [u8], part: impl Fn(usize) -> &'h [u8]) -> Option<usize> {
        for (n, group) in &self.groups {
            if *n >= host.len() {
                continue;
            }
            let key = part(*n);
            if let Ok(at) = group.binary_search_by(|e| e.0.as_slice().cmp(key)) {
                return Some(group[at].1);
            }
        }
        None
    }
}

/// Up to this many routes a virtual host is scanned in order: a few failed prefix compares cost
/// less than walking the index (callgrind, `perf/callgrind.sh`).
const LINEAR_MAX: usize = 8;

/// A compiled route configuration.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    vhosts: Vec<VirtualHost>,
    exact: HashMap<Vec<u8>, usize>,
    /// `*suffix` domains.
    suffix: Wildcards,
    /// `prefix*` domains.
    prefix: Wildcards,
    default: Option<usize>,
    /// Whether any virtual host names domains other than `*`: else the host plays no part in
    /// routing and [`RouteTable::route`] ignores it (see [`RouteTable::uses_host`]).
    by_host: bool,
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
            mutations: Mutations::compile(&rc.headers, path)?,
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
                    if !t.suffix.insert(s.as_bytes(), vi) {
                        return Err(dup());
                    }
                } else if let Some(p) = d.strip_suffix('*') {
                    if !t.prefix.insert(p.as_bytes(), vi) {
                        return Err(dup());
                    }
                } else if t.exact.insert(d.as_bytes().to_vec(), vi).is_some() {
                    return Err(dup());
                }
                t.by_host |= d != "*";
            }
            let mut routes = Vec::with_capacity(vh.routes.len());
            for (ri, r) in vh.routes.iter().enumerate() {
                routes.push(compile_route(
                    r,
                    clusters,
                    &format!("{vpath}.routes[{ri}]"),
                )?);
            }
            let index = RouteIndex::build(routes.iter().map(|r| {
                let lit = match &r.path {
                    PathMatcher::Prefix(p) => Literal::Prefix(p),
                    PathMatcher::Path(p) => Literal::Path(p),
                    PathMatcher::Regex(_) => Literal::Always,
                };
                (lit, r.case_sensitive)
            }));
            t.vhosts.push(VirtualHost {
                name: vh.name.clone(),
                routes,
                index,
                mutations: Mutations::compile(&vh.headers, &vpath)?,
                require_tls: vh.require_tls,
            });
        }
        Ok(t)
    }

    /// Whether routing looks at the host: false when the only domain is `*`, and then any
    /// host, even an empty one, routes alike (the caller need not lower-case it).
    #[inline]
    pub fn uses_host(&self) -> bool {
        self.by_host
    }

    /// The virtual host for a (lower-cased) host.
    pub fn virtual_host(&self, host: &[u8]) -> Option<&VirtualHost> {
        if !self.by_host {
            return self.default.map(|i| &self.vhosts[i]);
        }
        if let Some(i) = self.exact.get(host) {
            return Some(&self.vhosts[*i]);
        }
        let i = self
            .suffix
            .find(host, |n| &host[host.len() - n..])
            .or_else(|| self.prefix.find(host, |n| &host[..n]))
            .or(self.default)?;
        Some(&self.vhosts[i])
    }

    /// Finds the route for a request; `host` must be lower-case.
    pub fn route<'a>(
        &'a self,
        host: &[u8],
        req: &RouteRequest<'_>,
    ) -> Option<(&'a VirtualHost, &'a Route)> {
        let vh = self.virtual_host(host)?;
        if vh.require_tls && req.scheme() != b"https" {
            return Some((vh, &TLS_REDIRECT));
        }
        let target = req.target;
        let (path, query) = match memchr::memchr(b'?', target) {
            Some(i) => (&target[..i], Some(&target[i + 1..])),
            None => (target, None),
        };
        let full_match = |r: &Route| r.matches(path, query, req);
        let r = if vh.routes.len() <= LINEAR_MAX {
            vh.routes.iter().find(|r| full_match(r))?
        } else {
            &vh.routes[vh.index.first(path, |i| full_match(&vh.routes[i]))?]
        };
        Some((vh, r))
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
        headers.push(HeaderMatch::compile(
            h,
            &format!("{path}.match.headers[{i}]"),
        )?);
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
            let by_header = f.cluster_header.as_ref().map(|h| {
                Box::new(ClusterHeader {
                    name: h.to_ascii_lowercase().into_bytes(),
                    clusters: clusters
                        .iter()
                        .map(|(n, i)| (n.as_bytes().into(), *i))
                        .collect(),
                })
            });
            let list = match (&f.cluster, &f.weighted_clusters) {
                // Picked per request by the header (`Forward::cluster_header`); the entry only
                // keeps the list's shape.
                (None, None) if by_header.is_some() => vec![(0, 1, Mutations::default())],
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
                            Mutations::compile(
                                &wc.headers,
                                &format!("{path}.route.weighted_clusters.clusters[{i}]"),
                            )?,
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
            for (field, v) in [
                ("prefix_rewrite", &f.prefix_rewrite),
                ("host_rewrite_literal", &f.host_rewrite_literal),
            ] {
                if let Some(v) = v {
                    check_value(v, &format!("{path}.route.{field}"))?;
                }
            }
            let total_weight = list.iter().map(|c| u64::from(c.1)).sum();
            if total_weight == 0 {
                return Err(Error::config(format!(
                    "{path}.route.weighted_clusters: the weights sum to 0"
                )));
            }
            let mut retry = f
                .retry_policy
                .as_ref()
                .map(|r| {
                    retry::RetryPolicy::compile(r, &format!("{path}.route.retry_policy"))
                        .map(Box::new)
                })
                .transpose()?;
            // Envoy ignores a per-try timeout no shorter than the route timeout.
            if let Some(r) = retry.as_mut() {
                if f.timeout_ms > 0 && r.per_try_timeout_ms >= f.timeout_ms {
                    r.per_try_timeout_ms = 0;
                }
            }
            let expected_timeout_ms = match retry.as_ref().map_or(0, |r| r.per_try_timeout_ms) {
                0 => f.timeout_ms,
                per_try => per_try,
            };
            Action::Forward(Forward {
                route_name: (!r.name.is_empty()).then(|| r.name.as_str().into()),
                clusters: list,
                total_weight,
                prefix_rewrite: f.prefix_rewrite.as_ref().map(|s| s.as_bytes().to_vec()),
                host_rewrite: f
                    .host_rewrite_literal
                    .as_ref()
                    .map(|s| s.as_bytes().to_vec()),
                auto_host_rewrite: f.auto_host_rewrite,
                timeout_ms: f.timeout_ms,
                expected_timeout_ms,
                timeout_header: if expected_timeout_ms > 0 {
                    expected_timeout_ms.to_string().into_bytes()
                } else {
                    Vec::new()
                },
                idle_timeout_ms: f.idle_timeout_ms,
                max_stream_duration_ms: f.max_stream_duration_ms,
                high_priority: f.high_priority,
                retry,
                retry_buffer_limit: f.per_request_buffer_limit_bytes,
                attempt_count_up: f.include_request_attempt_count,
                attempt_count_down: f.include_attempt_count_in_response,
                upgrades: f
                    .upgrade_configs
                    .iter()
                    .map(|u| (u.upgrade_type.as_bytes().into(), u.enabled))
                    .collect(),
                cluster_header: by_header,
                regex_rewrite: f
                    .regex_rewrite
                    .as_ref()
                    .map(|r| {
                        matcher::PathRewrite::compile(
                            &r.regex,
                            &r.substitution,
                            &format!("{path}.route.regex_rewrite"),
                        )
                        .map(Box::new)
                    })
                    .transpose()?,
                hash_policy: f
                    .hash_policy
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        hash::HashPolicy::compile(p, &format!("{path}.route.hash_policy[{i}]"))
                    })
                    .collect::<Result<_, _>>()?,
            })
        }
        RouteAction::Redirect(rd) => {
            for (field, v) in [
                ("scheme_redirect", &rd.scheme_redirect),
                ("host_redirect", &rd.host_redirect),
                ("path_redirect", &rd.path_redirect),
                ("prefix_rewrite", &rd.prefix_rewrite),
            ] {
                if let Some(v) = v {
                    check_value(v, &format!("{path}.redirect.{field}"))?;
                }
            }
            Action::Redirect(Redirect { cfg: rd.clone() })
        }
        RouteAction::DirectResponse(d) => {
            // Envoy's range for `direct_response.status`; the control plane checks it first.
            if !(200..=599).contains(&d.status) {
                return Err(Error::config(format!(
                    "{path}.direct_response.status: {} is out of range; expected 200..599",
                    d.status
                )));
            }
            Action::Direct {
                status: d.status,
                body: Bytes::from(d.body.clone().unwrap_or_default().into_bytes()),
            }
        }
    };
    Ok(Route {
        path: pm,
        case_sensitive: cs,
        headers,
        query,
        action,
        mutations: Mutations::compile(&r.headers, path)?,
        name: (!r.name.is_empty()).then(|| r.name.as_str().into()),
    })
}

impl Route {
    /// Length of the start of `target` that `prefix_rewrite` replaces, as in Envoy: the
    /// matched prefix, or the whole path (not the query) for a `path` or regex match.
    pub fn prefix_len(&self, target: &[u8]) -> usize {
        match &self.path {
            PathMatcher::Prefix(p) | PathMatcher::Path(p) => p.len(),
            PathMatcher::Regex(_) => memchr::memchr(b'?', target).unwrap_or(target.len()),
        }
    }

    #[inline(always)]
    fn matches(&self, path: &[u8], query: Option<&[u8]>, req: &RouteRequest<'_>) -> bool {
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
        if !self.headers.iter().all(|h| h.matches(req)) {
            return false;
        }
        for q in &self.query {
            let value = query.and_then(|qs| query_value(qs, &q.name));
            if !q.m.matches(value, q.ignore_case) {
                return false;
            }
        }
        true
    }
}

/// The first value of parameter `name` in a query string (after the `?`), as sent, not
/// decoded (`name` alone is an empty value): what Envoy's query matchers and hash policies read.
pub(crate) fn query_value<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query.split(|b| *b == b'&').find_map(|kv| {
        let (k, v) = match memchr::memchr(b'=', kv) {
            Some(i) => (&kv[..i], &kv[i + 1..]),
            None => (kv, &b""[..]),
        };
        (k == name).then_some(v)
    })
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

    fn get<'a>(target: &'a [u8], headers: &'a HeaderMap) -> RouteRequest<'a> {
        RouteRequest {
            method: b"GET",
            target,
            headers,
            absolute_https: None,
        }
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
    fn a_table_of_star_alone_routes_without_the_host() {
        let star = table(r#"{"virtual_hosts": [{"name": "any", "domains": ["*"]}]}"#);
        assert!(!star.uses_host());
        for host in ["", "x", "Upper.Case:80"] {
            assert_eq!(star.virtual_host(host.as_bytes()).unwrap().name, "any");
        }
        let none = table(r#"{"virtual_hosts": [{"name": "x", "domains": ["x"]}]}"#);
        assert!(none.uses_host());
        assert!(none.virtual_host(b"y").is_none());
        assert!(table(r#"{"virtual_hosts": []}"#)
            .virtual_host(b"x")
            .is_none());
        let mixed = table(
            r#"{"virtual_hosts": [
            {"name": "any", "domains": ["*"]},
            {"name": "x", "domains": ["x"]}
        ]}"#,
        );
        assert!(mixed.uses_host());
        assert_eq!(mixed.virtual_host(b"x").unwrap().name, "x");
        assert_eq!(mixed.virtual_host(b"y").unwrap().name, "any");
    }

    /// Wildcard lookup by length groups must pick what the longest-match rule picks, on random
    /// domain sets over a small alphabet (so that wildcards overlap often).
    #[test]
    fn wildcard_groups_agree_with_longest_match() {
        let mut rng = fastrand::Rng::with_seed(9);
        let word = |rng: &mut fastrand::Rng, min: usize| -> String {
            (0..rng.usize(min..5))
                .map(|_| ['a', 'b', '.'][rng.usize(0..3)])
                .collect()
        };
        for _ in 0..2000 {
            let mut domains = std::collections::BTreeSet::new();
            for _ in 0..rng.usize(0..10) {
                let w = word(&mut rng, 1);
                domains.insert(match rng.u8(0..4) {
                    0 => w,
                    1 => format!("{w}*"),
                    2 if rng.bool() => "*".to_string(),
                    _ => format!("*{w}"),
                });
            }
            let vhosts: Vec<_> = domains
                .iter()
                .map(|d| serde_json::json!({"name": d, "domains": [d]}))
                .collect();
            let t = table(&serde_json::json!({ "virtual_hosts": vhosts }).to_string());
            for _ in 0..30 {
                let host = word(&mut rng, 0);
                let longest = |wild: &dyn Fn(&str) -> Option<String>| {
                    domains
                        .iter()
                        .filter_map(|d| wild(d).map(|lit| (lit, d)))
                        .filter(|(lit, _)| host.len() > lit.len())
                        .max_by_key(|(lit, _)| lit.len())
                        .map(|(_, d)| d.clone())
                };
                let want = domains
                    .get(&host)
                    .cloned()
                    .or_else(|| {
                        longest(&|d| {
                            d.strip_prefix('*')
                                .filter(|s| !s.is_empty() && host.ends_with(s))
                                .map(str::to_string)
                        })
                    })
                    .or_else(|| {
                        longest(&|d| {
                            d.strip_suffix('*')
                                .filter(|p| !d.starts_with('*') && host.starts_with(p))
                                .map(str::to_string)
                        })
                    })
                    .or_else(|| domains.get("*").cloned());
                let got = t.virtual_host(host.as_bytes()).map(|v| v.name.clone());
                assert_eq!(got, want, "{host:?} in {domains:?}");
            }
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
            let hs = headers(hdrs);
            let (_, r) = t.route(b"x", &get(target.as_bytes(), &hs)).unwrap();
            let got = t.vhosts[0]
                .routes
                .iter()
                .position(|x| std::ptr::eq(x, r))
                .unwrap();
            let names = ["exact", "ci", "re", "hdr", "inv", "q", "all"];
            assert_eq!(names[got], want, "{target} {hdrs:?}");
        }
    }

    /// The index must pick exactly the route the in-order scan picks: random tables of
    /// prefix, path and regex routes (some case-insensitive, some needing a header) over a small
    /// alphabet, so that prefixes nest and collide often, each against random paths.
    #[test]
    fn index_agrees_with_the_in_order_scan() {
        let mut rng = fastrand::Rng::with_seed(8);
        let lit = |rng: &mut fastrand::Rng, max: usize| -> String {
            let n = rng.usize(0..=max);
            (0..n)
                .map(|_| ['/', 'a', 'A', 'b', '\u{e9}'][rng.usize(0..5)])
                .collect()
        };
        let (with, without) = (headers("x-h: 1\r\n"), headers(""));
        for _ in 0..3000 {
            let routes: Vec<serde_json::Value> = (0..rng.usize(0..16))
                .map(|_| {
                    let path = match rng.u8(0..10) {
                        0 => {
                            let re = ["/a.*", "[/ab]+", "/[aA]b?"][rng.usize(0..3)];
                            serde_json::json!({ "safe_regex": re })
                        }
                        1..=3 => serde_json::json!({"path": lit(&mut rng, 4)}),
                        _ => serde_json::json!({"prefix": lit(&mut rng, 4)}),
                    };
                    let mut m =
                        serde_json::json!({"path": path, "case_sensitive": rng.u8(0..3) != 0});
                    if rng.u8(0..4) == 0 {
                        m["headers"] =
                            serde_json::json!([{"name": "x-h", "match": {"present": true}}]);
                    }
                    serde_json::json!({"match": m, "action": {"route": {"cluster": "a"}}})
                })
                .collect();
            let json = serde_json::json!({"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]});
            let t = table(&json.to_string());
            let vh = &t.vhosts[0];
            for _ in 0..40 {
                let mut target = lit(&mut rng, 6);
                if rng.bool() {
                    target.push_str("?q=1");
                }
                let hs = if rng.bool() { &with } else { &without };
                let (path, query) = match target.split_once('?') {
                    Some((p, q)) => (p.as_bytes(), Some(q.as_bytes())),
                    None => (target.as_bytes(), None),
                };
                let req = get(target.as_bytes(), hs);
                let want = vh.routes.iter().position(|r| r.matches(path, query, &req));
                let indexed = vh
                    .index
                    .first(path, |i| vh.routes[i].matches(path, query, &req));
                assert_eq!(indexed, want, "{target:?} in {json}");
                let got = t
                    .route(b"x", &req)
                    .map(|(_, r)| vh.routes.iter().position(|x| std::ptr::eq(x, r)).unwrap());
                assert_eq!(got, want, "{target:?} in {json}");
            }
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

    #[test]
    fn header_injection_and_bad_statuses_are_refused_with_their_path() {
        // The control plane refuses these first; the engine refuses them again (the snapshot
        // fuzz target reached them by handing compile a value with CRLF).
        let route = |extra: &str, action: &str| {
            format!(
                r#"{{"virtual_hosts": [{{"name": "v", "domains": ["*"], "routes": [{{"match": {{"path": {{"prefix": "/"}}}}, "action": {action}{extra}}}]}}]}}"#
            )
        };
        let fwd = r#"{"route": {"cluster": "a"}}"#;
        let cases = [
            (
                route(r#", "request_headers_to_add": [{"key": "x-a", "value": "1\r\nx-b: 2"}]"#, fwd),
                "rc.virtual_hosts[0].routes[0].request_headers_to_add[0].header.value: must not contain CR, LF or NUL",
            ),
            (
                route(r#", "response_headers_to_add": [{"key": "x a", "value": "1"}]"#, fwd),
                "rc.virtual_hosts[0].routes[0].response_headers_to_add[0].header.key: \"x a\" is not a valid header name",
            ),
            (
                route(r#", "request_headers_to_remove": [""]"#, fwd),
                "rc.virtual_hosts[0].routes[0].request_headers_to_remove[0]: \"\" is not a valid header name",
            ),
            (
                route("", r#"{"route": {"cluster": "a", "prefix_rewrite": "/x\n"}}"#),
                "rc.virtual_hosts[0].routes[0].route.prefix_rewrite: must not contain CR, LF or NUL",
            ),
            (
                route("", r#"{"redirect": {"host_redirect": "a\r\nset-cookie: x"}}"#),
                "rc.virtual_hosts[0].routes[0].redirect.host_redirect: must not contain CR, LF or NUL",
            ),
            (
                route("", r#"{"direct_response": {"status": 99}}"#),
                "rc.virtual_hosts[0].routes[0].direct_response.status: 99 is out of range; expected 200..599",
            ),
        ];
        let clusters: HashMap<&str, usize> = [("a", 0)].into_iter().collect();
        for (json, want) in cases {
            let rc: RouteConfiguration = serde_json::from_str(&json).unwrap();
            let err = RouteTable::compile(&rc, &clusters, "rc").unwrap_err();
            assert_eq!(err.message(), want);
        }
        // Vhost-level and route-config-level edits are checked alike.
        let rc: RouteConfiguration = serde_json::from_str(
            r#"{"response_headers_to_add": [{"key": "x", "value": "\u0000"}], "virtual_hosts": []}"#,
        )
        .unwrap();
        let err = RouteTable::compile(&rc, &clusters, "rc").unwrap_err();
        assert_eq!(
            err.message(),
            "rc.response_headers_to_add[0].header.value: must not contain CR, LF or NUL"
        );
    }
}
