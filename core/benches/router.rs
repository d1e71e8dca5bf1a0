//! Router micro-benchmarks: compiling a `RouteConfiguration` and routing one request through
//! it (virtual host lookup, then the first matching route). Tables are built as the control
//! plane hands them over: JSON deserialised into `config::RouteConfiguration`. See
//! benches/README.md for the method and the figures.

use std::collections::HashMap;
use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use pyproxy_core::config::RouteConfiguration;
use pyproxy_core::http1::head::{parse_request, HeaderMap};
use pyproxy_core::router::{RouteRequest, RouteTable};
use serde_json::{json, Value};

const N: usize = 1000;

fn rq<'a>(target: &'a [u8], headers: &'a HeaderMap) -> RouteRequest<'a> {
    RouteRequest {
        method: b"GET",
        target,
        headers,
        absolute_https: None,
    }
}

fn clusters() -> HashMap<&'static str, usize> {
    [("web", 0), ("api", 1), ("static", 2), ("canary", 3)]
        .into_iter()
        .collect()
}

fn compile(v: &Value) -> RouteTable {
    let rc: RouteConfiguration = serde_json::from_value(v.clone()).unwrap();
    RouteTable::compile(&rc, &clusters(), "route_config").unwrap()
}

fn fwd(cluster: &str) -> Value {
    json!({"route": {"cluster": cluster}})
}

/// Request headers as the worker has them after parsing (names lower-case).
fn headers(extra: &str) -> HeaderMap {
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n{extra}\r\n"
    );
    parse_request(&mut BytesMut::from(raw.as_bytes()), 65536)
        .unwrap()
        .unwrap()
        .headers
}

/// The common small config: one catch-all virtual host, three prefix routes.
fn small() -> Value {
    json!({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"path": {"prefix": "/api/"}}, "action": fwd("api")},
        {"match": {"path": {"prefix": "/static/"}}, "action": fwd("static")},
        {"match": {"path": {"prefix": "/"}}, "action": fwd("web")}
    ]}]})
}

/// One virtual host with `N` prefix routes `/svc0000/` .. `/svc0999/`.
fn many_prefixes() -> Value {
    let routes: Vec<Value> = (0..N)
        .map(|i| json!({"match": {"path": {"prefix": format!("/svc{i:04}/")}}, "action": fwd("api")}))
        .collect();
    json!({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]})
}

/// 100 routes on the same prefix told apart by an exact `x-tenant` header match.
fn header_routes() -> Value {
    let mut routes: Vec<Value> = (0..100)
        .map(|i| {
            json!({"match": {"path": {"prefix": "/"},
                             "headers": [{"name": "x-tenant", "match": {"exact": format!("tenant-{i:03}")}}]},
                   "action": fwd("canary")})
        })
        .collect();
    routes.push(json!({"match": {"path": {"prefix": "/"}}, "action": fwd("web")}));
    json!({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]})
}

/// 100 `safe_regex` routes (`/v[0-9]+/svcNN/.*`), the last one the match.
fn regex_routes() -> Value {
    let routes: Vec<Value> = (0..100)
        .map(|i| json!({"match": {"path": {"safe_regex": format!("/v[0-9]+/svc{i:02}/.*")}}, "action": fwd("api")}))
        .collect();
    json!({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]})
}

/// `N` virtual hosts with one domain each: exact (`svc0000.example.com`) or suffix wildcard
/// (`*.svc0000.example.com`), plus a `*` default.
fn many_vhosts(wildcard: bool) -> Value {
    let mut vhosts: Vec<Value> = (0..N)
        .map(|i| {
            let d = if wildcard {
                format!("*.svc{i:04}.example.com")
            } else {
                format!("svc{i:04}.example.com")
            };
            json!({"name": format!("vh{i}"), "domains": [d],
                   "routes": [{"match": {"path": {"prefix": "/"}}, "action": fwd("api")}]})
        })
        .collect();
    vhosts.push(json!({"name": "default", "domains": ["*"],
                       "routes": [{"match": {"path": {"prefix": "/"}}, "action": fwd("web")}]}));
    json!({"virtual_hosts": vhosts})
}

fn bench_compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("router_compile");
    let clusters = clusters();
    for (name, v) in [
        ("small_3", small()),
        ("prefix_1000", many_prefixes()),
        ("header_100", header_routes()),
        ("regex_100", regex_routes()),
        ("vhosts_exact_1000", many_vhosts(false)),
        ("vhosts_suffix_1000", many_vhosts(true)),
    ] {
        // Deserialisation is the control plane's cost; only the compile step is timed.
        let rc: RouteConfiguration = serde_json::from_value(v).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| RouteTable::compile(black_box(&rc), &clusters, "route_config").unwrap())
        });
    }
    g.finish();
}

fn bench_route(c: &mut Criterion) {
    let plain = headers("");
    let mut g = c.benchmark_group("router_route");

    let t = compile(&small());
    g.bench_function("small_3/first", |b| {
        b.iter(|| {
            t.route(
                b"www.example.com",
                &rq(black_box(b"/api/v1/users?id=7"), &plain),
            )
            .is_some()
        })
    });
    g.bench_function("small_3/last", |b| {
        b.iter(|| {
            t.route(b"www.example.com", &rq(black_box(b"/index.html"), &plain))
                .is_some()
        })
    });

    let t = compile(&many_prefixes());
    g.bench_function("prefix_1000/first", |b| {
        b.iter(|| {
            t.route(
                b"www.example.com",
                &rq(black_box(b"/svc0000/items/42"), &plain),
            )
            .is_some()
        })
    });
    g.bench_function("prefix_1000/last", |b| {
        b.iter(|| {
            t.route(
                b"www.example.com",
                &rq(black_box(b"/svc0999/items/42"), &plain),
            )
            .is_some()
        })
    });
    g.bench_function("prefix_1000/miss", |b| {
        b.iter(|| {
            t.route(b"www.example.com", &rq(black_box(b"/nothing/here"), &plain))
                .is_none()
        })
    });

    let t = compile(&header_routes());
    let last = headers("X-Tenant: tenant-099\r\n");
    g.bench_function("header_100/last", |b| {
        b.iter(|| {
            t.route(b"www.example.com", &rq(black_box(b"/orders"), &last))
                .is_some()
        })
    });
    g.bench_function("header_100/fallthrough", |b| {
        b.iter(|| {
            t.route(b"www.example.com", &rq(black_box(b"/orders"), &plain))
                .is_some()
        })
    });

    let t = compile(&regex_routes());
    g.bench_function("regex_100/first", |b| {
        b.iter(|| {
            t.route(
                b"www.example.com",
                &rq(black_box(b"/v2/svc00/items/42"), &plain),
            )
            .is_some()
        })
    });
    g.bench_function("regex_100/last", |b| {
        b.iter(|| {
            t.route(
                b"www.example.com",
                &rq(black_box(b"/v2/svc99/items/42"), &plain),
            )
            .is_some()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("router_vhost");
    let t = compile(&many_vhosts(false));
    g.bench_function("exact_1000/hit", |b| {
        b.iter(|| {
            t.route(black_box(b"svc0999.example.com"), &rq(b"/", &plain))
                .is_some()
        })
    });
    g.bench_function("exact_1000/default", |b| {
        b.iter(|| {
            t.route(black_box(b"unknown.example.org"), &rq(b"/", &plain))
                .is_some()
        })
    });
    let t = compile(&many_vhosts(true));
    g.bench_function("suffix_1000/first", |b| {
        b.iter(|| {
            t.route(black_box(b"a.svc0000.example.com"), &rq(b"/", &plain))
                .is_some()
        })
    });
    g.bench_function("suffix_1000/last", |b| {
        b.iter(|| {
            t.route(black_box(b"a.svc0999.example.com"), &rq(b"/", &plain))
                .is_some()
        })
    });
    g.bench_function("suffix_1000/default", |b| {
        b.iter(|| {
            t.route(black_box(b"unknown.example.org"), &rq(b"/", &plain))
                .is_some()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_compile, bench_route);
criterion_main!(benches);
