//! HTTP/1.1 codec micro-benchmarks: head parsing, request framing, body decoding and the
//! header-map edits the proxy makes on every request. See benches/README.md for the method
//! and the figures.

use std::hint::black_box;

use bytes::{Buf, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pyproxy_core::http1::body::{Decoded, Decoder, Framing};
use pyproxy_core::http1::codec::request_framing;
use pyproxy_core::http1::head::{parse_request, parse_response, HeaderMap};

/// `max_request_headers_kb` default (60 KiB), as the worker passes it.
const MAX_HEAD: usize = 60 * 1024;

/// What `curl http://host/path` sends.
const CURL: &[u8] = b"GET /api/v1/items?page=2 HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: */*\r\n\r\n";

/// A browser navigation: 12 headers, ~700 bytes (Chrome-like).
const BROWSER: &[u8] = b"GET /products/shoes/running?color=blue&size=42&sort=price_asc HTTP/1.1\r\n\
Host: www.example-shop.com\r\n\
Connection: keep-alive\r\n\
Cache-Control: max-age=0\r\n\
Upgrade-Insecure-Requests: 1\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-Mode: navigate\r\n\
Referer: https://www.example-shop.com/products/shoes\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-GB,en-US;q=0.9,en;q=0.8\r\n\
Cookie: session=4f2a9c1e7b3d8a6f0e5c2b1a9d8c7e6f; cart=3; consent=analytics%3Dfalse%26ads%3Dfalse\r\n\r\n";

/// A typical upstream response head.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Date: Mon, 06 May 2024 10:00:00 GMT\r\n\
Content-Type: application/json; charset=utf-8\r\n\
Content-Length: 2048\r\n\
Cache-Control: private, max-age=0\r\n\
ETag: \"5f2b-18c3a1d2e4f\"\r\n\
Vary: Accept-Encoding\r\n\
X-Request-Id: 9b2f4c1e-7a3d-4e6f-8b1c-2d3e4f5a6b7c\r\n\
Server: gunicorn\r\n\r\n";

/// A request with 40 headers (API gateway traffic with tracing and many `x-` headers).
fn forty_headers() -> Vec<u8> {
    let mut h = b"POST /v2/orders HTTP/1.1\r\nHost: orders.internal\r\n".to_vec();
    h.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: 2048\r\n");
    for i in 0..37 {
        h.extend_from_slice(
            format!("X-Custom-Header-{i:02}: value-{i:02}-abcdefghijklmnopqrstuvwxyz\r\n")
                .as_bytes(),
        );
    }
    h.extend_from_slice(b"\r\n");
    h
}

fn parse(c: &mut Criterion) {
    let forty = forty_headers();
    let mut g = c.benchmark_group("parse_request");
    for (name, head) in [
        ("curl_3h", CURL),
        ("browser_12h", BROWSER),
        ("api_40h", &forty[..]),
    ] {
        g.throughput(Throughput::Bytes(head.len() as u64));
        // The buffer copy is setup (excluded): the worker parses straight out of its read buffer.
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || BytesMut::from(head),
                |buf| black_box(parse_request(buf, MAX_HEAD).unwrap().unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("parse_response");
    g.throughput(Throughput::Bytes(RESPONSE.len() as u64));
    g.bench_function("json_8h", |b| {
        b.iter_batched_ref(
            || BytesMut::from(RESPONSE),
            |buf| black_box(parse_response(buf, MAX_HEAD).unwrap().unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn framing(c: &mut Criterion) {
    let head = |s: &[u8]| {
        parse_request(&mut BytesMut::from(s), MAX_HEAD)
            .unwrap()
            .unwrap()
    };
    let get = head(BROWSER);
    let post = head(&forty_headers());
    let chunked = head(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut g = c.benchmark_group("request_framing");
    g.bench_function("get_no_body_12h", |b| {
        b.iter(|| request_framing(black_box(&get)))
    });
    g.bench_function("content_length_40h", |b| {
        b.iter(|| request_framing(black_box(&post)))
    });
    g.bench_function("chunked", |b| {
        b.iter(|| request_framing(black_box(&chunked)))
    });
    g.finish();
}

/// Drains a whole body out of `buf` as the worker does, `max` bytes at a time.
fn drain(framing: Framing, buf: &mut BytesMut, max: usize) -> usize {
    let mut d = Decoder::new(framing);
    let mut n = 0;
    loop {
        match d.decode(buf, max).unwrap() {
            Decoded::Data(k) => {
                n += k;
                buf.advance(k);
            }
            Decoded::End => return n,
            Decoded::NeedMore => unreachable!("whole body is buffered"),
        }
    }
}

fn body(c: &mut Criterion) {
    // 1,024 chunks of 64 bytes (64 KiB of data): a streaming client flushing small writes.
    let mut chunked = Vec::new();
    for _ in 0..1024 {
        chunked.extend_from_slice(b"40\r\n");
        chunked.extend_from_slice(&[b'x'; 64]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let length = vec![b'y'; 64 * 1024];

    let mut g = c.benchmark_group("body_decode");
    g.throughput(Throughput::Bytes(64 * 1024));
    g.bench_function("chunked_1024x64B", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&chunked[..]),
            |buf| black_box(drain(Framing::Chunked, buf, 64 * 1024)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("content_length_64KiB", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&length[..]),
            |buf| black_box(drain(Framing::Length(64 * 1024), buf, 16 * 1024)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn header_map(c: &mut Criterion) {
    let h: HeaderMap = parse_request(&mut BytesMut::from(BROWSER), MAX_HEAD)
        .unwrap()
        .unwrap()
        .headers;
    let mut g = c.benchmark_group("header_map_12h");
    g.bench_function("get_hit_last", |b| {
        b.iter(|| black_box(&h).get(b"cookie").is_some())
    });
    g.bench_function("get_miss", |b| {
        b.iter(|| black_box(&h).get(b"x-forwarded-for").is_some())
    });
    // The map is cloned in setup so every iteration edits the same parsed head.
    g.bench_function("set_existing", |b| {
        b.iter_batched_ref(
            || h.clone(),
            |m| m.set(b"user-agent", b"pyproxy-bench"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("set_new", |b| {
        b.iter_batched_ref(
            || h.clone(),
            |m| m.set(b"x-forwarded-proto", b"http"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("append", |b| {
        b.iter_batched_ref(
            || h.clone(),
            |m| m.append(b"x-forwarded-for", b"203.0.113.7"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("remove_if_hop_by_hop", |b| {
        b.iter_batched_ref(
            || h.clone(),
            |m| {
                m.remove_if(|n, _| {
                    matches!(
                        n,
                        b"connection" | b"keep-alive" | b"proxy-connection" | b"upgrade" | b"te"
                    )
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("write_to", |b| {
        let mut out = Vec::with_capacity(2048);
        b.iter(|| {
            out.clear();
            black_box(&h).write_to(&mut out);
            black_box(out.len())
        })
    });
    // What the proxy does to a request head between parse and write: strip hop-by-hop
    // headers, add the forwarding headers, serialise. Clone excluded.
    g.bench_function("proxy_edit_sequence", |b| {
        let mut out = Vec::with_capacity(2048);
        b.iter_batched_ref(
            || h.clone(),
            |m| {
                m.remove_if(|n, _| matches!(n, b"connection" | b"keep-alive" | b"upgrade" | b"te"));
                m.set(b"x-forwarded-proto", b"http");
                m.append(b"x-forwarded-for", b"203.0.113.7");
                m.set(b"x-request-id", b"9b2f4c1e-7a3d-4e6f-8b1c-2d3e4f5a6b7c");
                m.append(b"x-envoy-expected-rq-timeout-ms", b"15000");
                out.clear();
                m.write_host_first(&mut out);
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, parse, framing, body, header_map);
criterion_main!(benches);
