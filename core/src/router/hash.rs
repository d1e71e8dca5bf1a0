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
    /// A cookie's value; with `set`, a request without it gets one made up for its connection
    /// (and the response sets it).
    Cookie {
        name: Vec<u8>,
        set: Option<Box<CookieSpec>>,
    },
    /// The client's IP address, as text.
    SourceIp,
    /// A query parameter's first value, as sent (not decoded).
    Query(Vec<u8>),
}

/// The cookie a `cookie` policy with a `ttl` sets: `Max-Age` (seconds; 0 leaves it out),
/// `Path` (empty: none) and extra attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSpec {
    pub ttl_s: u64,
    pub path: Vec<u8>,
    pub attributes: Vec<(Vec<u8>, Vec<u8>)>,
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
            (None, Some(name), false, None) => Source::Cookie {
                name: name.as_bytes().to_vec(),
                set: c.cookie_ttl_s.map(|ttl_s| {
                    Box::new(CookieSpec {
                        ttl_s,
                        path: c.cookie_path.clone().unwrap_or_default().into_bytes(),
                        attributes: c
                            .cookie_attributes
                            .iter()
                            .map(|a| (a.name.clone().into_bytes(), a.value.clone().into_bytes()))
                            .collect(),
                    })
                }),
            },
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

    fn evaluate(
        &self,
        h: &HeaderMap,
        target: &[u8],
        peer: SocketAddr,
        local: &dyn Fn() -> Option<SocketAddr>,
        set_cookie: &mut Option<Box<[u8]>>,
    ) -> Option<u64> {
        match &self.source {
            Source::Header(name) => {
                let mut values = h.get_all(name);
                let first = values.next()?;
                let Some(second) = values.next() else {
                    return Some(xxh64(first, 0));
                };
                // Several: the same hash whatever their order; each hashed with the hash so
                // far as its seed (Envoy's `HashUtil::xxHash64` over a list).
                let mut all: Vec<&[u8]> = [first, second].into_iter().chain(values).collect();
                all.sort_unstable();
                Some(all.iter().fold(0, |seed, v| xxh64(v, seed)))
            }
            Source::Cookie { name, set } => {
                match (cookie(h, name).filter(|v| !v.is_empty()), set) {
                    (Some(v), _) => Some(xxh64(v, 0)),
                    (None, None) => None,
                    (None, Some(spec)) => {
                        // Envoy's: the hex of the xxHash64 of the client's and the proxy's
                        // addresses, so a client keeps its cookie's host on this connection.
                        let addrs = format!("{peer}{}", local()?);
                        let value = format!("{:016x}", xxh64(addrs.as_bytes(), 0));
                        *set_cookie = Some(set_cookie_value(name, &value, spec));
                        Some(xxh64(value.as_bytes(), 0))
                    }
                }
            }
            Source::SourceIp => Some(xxh64(peer.ip().to_string().as_bytes(), 0)),
            Source::Query(name) => {
                let q = &target[memchr::memchr(b'?', target)? + 1..];
                super::query_value(q, name).map(|v| xxh64(v, 0))
            }
        }
    }
}

/// The `set-cookie` value of a made-up cookie, as Envoy writes it:
/// `name="value"; Max-Age=N; Path=p; <attributes>; HttpOnly`.
fn set_cookie_value(name: &[u8], value: &str, spec: &CookieSpec) -> Box<[u8]> {
    let mut out = name.to_vec();
    out.extend_from_slice(b"=\"");
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
    if spec.ttl_s != 0 {
        out.extend_from_slice(b"; Max-Age=");
        out.extend_from_slice(itoa::Buffer::new().format(spec.ttl_s).as_bytes());
    }
    if !spec.path.is_empty() {
        out.extend_from_slice(b"; Path=");
        out.extend_from_slice(&spec.path);
    }
    for (n, v) in &spec.attributes {
        out.extend_from_slice(b"; ");
        out.extend_from_slice(n);
        if !v.is_empty() {
            out.push(b'=');
            out.extend_from_slice(v);
        }
    }
    out.extend_from_slice(b"; HttpOnly");
    out.into_boxed_slice()
}

/// The request's hash under `policies` (none: `None`), and the `set-cookie` value for a
/// cookie a policy made up. `local`: the proxy's address on the client connection, asked
/// only to make up a cookie.
pub fn request_hash(
    policies: &[HashPolicy],
    h: &HeaderMap,
    target: &[u8],
    peer: SocketAddr,
    local: &dyn Fn() -> Option<SocketAddr>,
) -> (Option<u64>, Option<Box<[u8]>>) {
    let mut hash: Option<u64> = None;
    let mut set_cookie = None;
    for p in policies {
        if let Some(new) = p.evaluate(h, target, peer, local, &mut set_cookie) {
            hash = Some(hash.map_or(0, |old| old.rotate_left(1)) ^ new);
        }
        if p.terminal && hash.is_some() {
            break;
        }
    }
    (hash, set_cookie)
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

    fn hash_of(p: &[HashPolicy], h: &HeaderMap, target: &[u8], peer: SocketAddr) -> Option<u64> {
        let local = || "127.0.0.1:10000".parse().ok();
        let (hash, set) = request_hash(p, h, target, peer, &local);
        assert!(set.is_none());
        hash
    }

    #[test]
    fn a_header_hashes_its_value_and_several_their_sorted_chain() {
        let p = [policy(Source::Header(b"x-user".to_vec()), false)];
        let peer = PEER.parse().unwrap();
        let one = hash_of(&p, &headers("x-user: user-7\r\n"), b"/", peer);
        assert_eq!(one, Some(xxh64(b"user-7", 0)));
        let two = hash_of(&p, &headers("x-user: b\r\nx-user: a\r\n"), b"/", peer);
        assert_eq!(two, Some(xxh64(b"b", xxh64(b"a", 0))));
        assert_eq!(hash_of(&p, &headers("x-other: 1\r\n"), b"/", peer), None);
    }

    #[test]
    fn policies_combine_and_a_terminal_one_ends_them() {
        let peer = PEER.parse().unwrap();
        let h = headers("x-a: 1\r\nx-b: 2\r\n");
        let a = || policy(Source::Header(b"x-a".to_vec()), false);
        let b = || policy(Source::Header(b"x-b".to_vec()), false);
        let (ha, hb) = (xxh64(b"1", 0), xxh64(b"2", 0));
        assert_eq!(
            hash_of(&[a(), b()], &h, b"/", peer),
            Some(ha.rotate_left(1) ^ hb)
        );
        let mut t = a();
        t.terminal = true;
        assert_eq!(hash_of(&[t, b()], &h, b"/", peer), Some(ha));
        // A terminal policy that found nothing does not end the list.
        let mut t = policy(Source::Header(b"x-none".to_vec()), true);
        t.terminal = true;
        assert_eq!(hash_of(&[t, b()], &h, b"/", peer), Some(hb));
    }

    #[test]
    fn cookies_queries_and_the_source_address() {
        let peer: SocketAddr = PEER.parse().unwrap();
        let h = headers("cookie: a=1; sid=\"abc\"; z=2\r\ncookie: sid=late\r\n");
        let c = [policy(
            Source::Cookie {
                name: b"sid".to_vec(),
                set: None,
            },
            false,
        )];
        assert_eq!(hash_of(&c, &h, b"/", peer), Some(xxh64(b"abc", 0)));
        let empty = headers("cookie: sid=\r\n");
        assert_eq!(hash_of(&c, &empty, b"/", peer), None);
        let q = [policy(Source::Query(b"u".to_vec()), false)];
        assert_eq!(
            hash_of(&q, &h, b"/p?x=1&u=v1&u=v2", peer),
            Some(xxh64(b"v1", 0))
        );
        assert_eq!(hash_of(&q, &h, b"/p?u", peer), Some(xxh64(b"", 0)));
        assert_eq!(hash_of(&q, &h, b"/p?uu=1", peer), None);
        let ip = [policy(Source::SourceIp, false)];
        assert_eq!(hash_of(&ip, &h, b"/", peer), Some(xxh64(b"127.0.0.1", 0)));
    }

    #[test]
    fn a_missing_cookie_with_a_ttl_is_made_up_as_envoy_makes_it() {
        // Recorded with the envoy binary: client 127.0.0.1:54612, listener 127.0.0.1:41787,
        // `cookie: {name: sticky, ttl: 3600s, path: /app}`.
        let spec = CookieSpec {
            ttl_s: 3600,
            path: b"/app".to_vec(),
            attributes: vec![],
        };
        let p = [policy(
            Source::Cookie {
                name: b"sticky".to_vec(),
                set: Some(Box::new(spec)),
            },
            false,
        )];
        let local = || "127.0.0.1:41787".parse().ok();
        let peer = "127.0.0.1:54612".parse().unwrap();
        let (hash, set) = request_hash(&p, &headers("x: 1\r\n"), b"/", peer, &local);
        assert_eq!(
            std::str::from_utf8(&set.unwrap()).unwrap(),
            "sticky=\"7f16ccda5163fe25\"; Max-Age=3600; Path=/app; HttpOnly"
        );
        assert_eq!(hash, Some(xxh64(b"7f16ccda5163fe25", 0)));
        // A client that has it is hashed by it, and gets none.
        let (hash, set) = request_hash(&p, &headers("cookie: sticky=abc\r\n"), b"/", peer, &local);
        assert_eq!((hash, set), (Some(xxh64(b"abc", 0)), None));
    }
}
