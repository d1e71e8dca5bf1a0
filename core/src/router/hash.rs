//! A route's `hash_policy`: the request's hash for a hashing load balancer (ring hash), as
//! Envoy's `Http::HashPolicyImpl` computes it. Each policy hashes one thing with xxHash64
//! (seed 0); several combine, the hash so far rotated left by one bit, then xor'd with the
//! next; a `terminal` policy that produced a hash ends the list. A policy that finds nothing
//! adds nothing, and no hash at all leaves the pick to chance.

use std::net::SocketAddr;

use xxhash_rust::xxh64::xxh64;

use crate::config::HashPolicyConfig;
use crate::http1::head::HeaderMap;
use crate::Error;

/// What one policy hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A request header's values (lower-case name).
    Header(Vec<u8>),
    /// A cookie's value.
    Cookie(Vec<u8>),
    /// The client's IP address, as text.
    SourceIp,
    /// A query parameter's first value, as sent (not decoded).
    Query(Vec<u8>),
}

/// One compiled `hash_policy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    pub source: Source,
    pub terminal: bool,
}

impl HashPolicy {
    /// Compiles a route's entry; `path` names it in errors.
    pub fn compile(c: &HashPolicyConfig, path: &str) -> Result<HashPolicy, Error> {
        let source = match (
            c.header.as_deref(),
            c.cookie.as_deref(),
            c.source_ip,
            c.query.as_deref(),
        ) {
            (Some(h), None, false, None) => Source::Header(h.to_ascii_lowercase().into_bytes()),
            (None, Some(name), false, None) => Source::Cookie(name.as_bytes().to_vec()),
            (None, None, true, None) => Source::SourceIp,
            (None, None, false, Some(name)) => Source::Query(name.as_bytes().to_vec()),
            _ => {
                return Err(Error::config(format!(
                    "{path}: needs exactly one of header, cookie, source_ip, query_parameter"
                )))
            }
        };
        Ok(HashPolicy {
            source,
            terminal: c.terminal,
        })
    }

    fn evaluate(&self, h: &HeaderMap, target: &[u8], peer: SocketAddr) -> Option<u64> {
        match &self.source {
            Source::Header(name) => {
                let mut values: Vec<&[u8]> = h.get_all(name).collect();
                if values.is_empty() {
                    return None;
                }
                // The same hash whatever the values' order; each hashed with the hash so far
                // as its seed (Envoy's `HashUtil::xxHash64` over a list).
                values.sort_unstable();
                Some(values.iter().fold(0, |seed, v| xxh64(v, seed)))
            }
            Source::Cookie(name) => cookie(h, name)
                .filter(|v| !v.is_empty())
                .map(|v| xxh64(v, 0)),
            Source::SourceIp => Some(xxh64(peer.ip().to_string().as_bytes(), 0)),
            Source::Query(name) => query(target, name).map(|v| xxh64(v, 0)),
        }
    }
}

/// The request's hash under `policies` (none: `None`).
pub fn request_hash(
    policies: &[HashPolicy],
    h: &HeaderMap,
    target: &[u8],
    peer: SocketAddr,
) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for p in policies {
        if let Some(new) = p.evaluate(h, target, peer) {
            hash = Some(hash.map_or(0, |old| old.rotate_left(1)) ^ new);
        }
        if p.terminal && hash.is_some() {
            break;
        }
    }
    hash
}

/// The value of cookie `name`: the first `name=value` pair of the `cookie` headers (`; `
/// separated), its surrounding double quotes removed.
fn cookie<'a>(h: &'a HeaderMap, name: &[u8]) -> Option<&'a [u8]> {
    for v in h.get_all(b"cookie") {
        for pair in v.split(|b| *b == b';') {
            let pair = pair.trim_ascii_start();
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            if &pair[..eq] == name {
                let value = &pair[eq + 1..];
                return Some(match value {
                    [b'"', inner @ .., b'"'] => inner,
                    _ => value,
                });
            }
        }
    }
    None
}

/// The first value of query parameter `name` in a request target, as sent (`name` alone is an
/// empty value).
fn query<'a>(target: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let q = &target[target.iter().position(|b| *b == b'?')? + 1..];
    let q = q.split(|b| *b == b'#').next().unwrap_or_default();
    q.split(|b| *b == b'&').find_map(|param| {
        let (k, v) = match param.iter().position(|b| *b == b'=') {
            Some(eq) => (&param[..eq], &param[eq + 1..]),
            None => (param, &b""[..]),
        };
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(raw: &str) -> HeaderMap {
        let req = format!("GET / HTTP/1.1\r\n{raw}\r\n");
        let mut buf = bytes::BytesMut::from(req.as_bytes());
        crate::http1::head::parse_request(&mut buf, 64 * 1024)
            .unwrap()
            .unwrap()
            .headers
    }

    fn policy(source: Source, terminal: bool) -> HashPolicy {
        HashPolicy { source, terminal }
    }

    const PEER: &str = "127.0.0.1:5000";

    #[test]
    fn a_header_hashes_its_value_and_several_their_sorted_chain() {
        let p = [policy(Source::Header(b"x-user".to_vec()), false)];
        let peer = PEER.parse().unwrap();
        let one = request_hash(&p, &headers("x-user: user-7\r\n"), b"/", peer);
        assert_eq!(one, Some(xxh64(b"user-7", 0)));
        let two = request_hash(&p, &headers("x-user: b\r\nx-user: a\r\n"), b"/", peer);
        assert_eq!(two, Some(xxh64(b"b", xxh64(b"a", 0))));
        assert_eq!(
            request_hash(&p, &headers("x-other: 1\r\n"), b"/", peer),
            None
        );
    }

    #[test]
    fn policies_combine_and_a_terminal_one_ends_them() {
        let peer = PEER.parse().unwrap();
        let h = headers("x-a: 1\r\nx-b: 2\r\n");
        let a = || policy(Source::Header(b"x-a".to_vec()), false);
        let b = || policy(Source::Header(b"x-b".to_vec()), false);
        let (ha, hb) = (xxh64(b"1", 0), xxh64(b"2", 0));
        assert_eq!(
            request_hash(&[a(), b()], &h, b"/", peer),
            Some(ha.rotate_left(1) ^ hb)
        );
        let mut t = a();
        t.terminal = true;
        assert_eq!(request_hash(&[t, b()], &h, b"/", peer), Some(ha));
        // A terminal policy that found nothing does not end the list.
        let mut t = policy(Source::Header(b"x-none".to_vec()), true);
        t.terminal = true;
        assert_eq!(request_hash(&[t, b()], &h, b"/", peer), Some(hb));
    }

    #[test]
    fn cookies_queries_and_the_source_address() {
        let peer: SocketAddr = PEER.parse().unwrap();
        let h = headers("cookie: a=1; sid=\"abc\"; z=2\r\ncookie: sid=late\r\n");
        let c = [policy(Source::Cookie(b"sid".to_vec()), false)];
        assert_eq!(request_hash(&c, &h, b"/", peer), Some(xxh64(b"abc", 0)));
        let empty = headers("cookie: sid=\r\n");
        assert_eq!(request_hash(&c, &empty, b"/", peer), None);
        let q = [policy(Source::Query(b"u".to_vec()), false)];
        assert_eq!(
            request_hash(&q, &h, b"/p?x=1&u=v1&u=v2", peer),
            Some(xxh64(b"v1", 0))
        );
        assert_eq!(request_hash(&q, &h, b"/p?u", peer), Some(xxh64(b"", 0)));
        assert_eq!(request_hash(&q, &h, b"/p?uu=1", peer), None);
        let ip = [policy(Source::SourceIp, false)];
        assert_eq!(
            request_hash(&ip, &h, b"/", peer),
            Some(xxh64(b"127.0.0.1", 0))
        );
    }
}
