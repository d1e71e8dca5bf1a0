//! Access log formats: Envoy's text and JSON substitution formats, compiled once per snapshot.
//!
//! The commands are those pyproxy can answer from a request it served (see [`COMMANDS`]); any
//! other is refused when the configuration is compiled, as Envoy refuses an unknown one
//! ("Not supported field in StreamInfo"). A value that does not exist for a request (no
//! upstream, a header it lacks) is `-` in a text line and `null` in JSON (with
//! `omit_empty_values`, empty in text and left out of JSON). In JSON, a value that is one
//! command alone keeps its type: codes, byte counts and durations are numbers.

use std::net::SocketAddr;

use super::time::TimeFormat;
use super::{Detail, Emit, Record};
use crate::router::format::{compile_pieces, header_arg, hostname};
use crate::Error;

/// Which part of an address a command writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrPart {
    Full,
    Ip,
    Port,
}

/// What `%REQ(...)%` reads, resolved when compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReqName {
    Method,
    Path,
    Authority,
    Scheme,
    /// A pseudo-header an HTTP/1 request never has.
    Absent,
    /// A header (lower-case), with its [`known_bit`](crate::http1::head::known_bit).
    Header(Vec<u8>, u32),
}

impl ReqName {
    fn of(name: Vec<u8>) -> ReqName {
        match &name[..] {
            b":method" => ReqName::Method,
            b":path" => ReqName::Path,
            b":authority" => ReqName::Authority,
            b":scheme" => ReqName::Scheme,
            n if n.starts_with(b":") => ReqName::Absent,
            _ => {
                let bit = crate::http1::head::known_bit(&name);
                ReqName::Header(name, bit)
            }
        }
    }
}

/// A command, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Req(ReqName, Option<ReqName>),
    Resp(Vec<u8>, Option<Vec<u8>>),
    StartTime(TimeFormat),
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    ResponseFlagsLong,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    ResponseTxDuration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocal(AddrPart),
    UpstreamRemote(AddrPart),
    UpstreamTransportFailureReason,
    UpstreamRequestAttemptCount,
    DownstreamRemote(AddrPart),
    DownstreamLocal(AddrPart),
    RouteName,
    RequestHeadersBytes,
    ResponseHeadersBytes,
    /// Resolved when compiled (`%HOSTNAME%`, `%ENVIRONMENT(X)%`; `None`: unset).
    Fixed(Option<Vec<u8>>),
    /// What never exists on a plaintext HTTP/1 listener (TLS details, trailers an HTTP/1
    /// response to the client does not carry, virtual clusters pyproxy has none of).
    Absent,
}

/// Every command pyproxy takes, for the error that names one it does not.
pub const COMMANDS: &str = "START_TIME, REQ(...), RESP(...), TRAILER(...), PROTOCOL, \
RESPONSE_CODE, RESPONSE_CODE_DETAILS, RESPONSE_FLAGS, RESPONSE_FLAGS_LONG, BYTES_RECEIVED, \
BYTES_SENT, DURATION, REQUEST_DURATION, RESPONSE_DURATION, RESPONSE_TX_DURATION, UPSTREAM_HOST, \
UPSTREAM_CLUSTER, UPSTREAM_CLUSTER_RAW, UPSTREAM_LOCAL_ADDRESS(_WITHOUT_PORT), \
UPSTREAM_LOCAL_PORT, UPSTREAM_REMOTE_ADDRESS(_WITHOUT_PORT), UPSTREAM_REMOTE_PORT, \
UPSTREAM_TRANSPORT_FAILURE_REASON, UPSTREAM_REQUEST_ATTEMPT_COUNT, \
DOWNSTREAM_REMOTE_ADDRESS(_WITHOUT_PORT), DOWNSTREAM_REMOTE_PORT, \
DOWNSTREAM_DIRECT_REMOTE_ADDRESS(_WITHOUT_PORT), DOWNSTREAM_DIRECT_REMOTE_PORT, \
DOWNSTREAM_LOCAL_ADDRESS(_WITHOUT_PORT), DOWNSTREAM_LOCAL_PORT, ROUTE_NAME, \
REQUEST_HEADERS_BYTES, RESPONSE_HEADERS_BYTES, HOSTNAME, \
ENVIRONMENT(...), VIRTUAL_CLUSTER_NAME, REQUESTED_SERVER_NAME, CONNECTION_TERMINATION_DETAILS, \
and the DOWNSTREAM_/UPSTREAM_ TLS and peer certificate commands (always `-`: no TLS)";

fn command(name: &str, arg: Option<&str>) -> Option<Cmd> {
    use AddrPart::{Full, Ip, Port};
    let no_arg = arg.is_none();
    Some(match name {
        "REQ" => {
            let (h, alt) = header_arg(arg)?;
            Cmd::Req(ReqName::of(h), alt.map(ReqName::of))
        }
        "RESP" => {
            let (h, alt) = header_arg(arg)?;
            Cmd::Resp(h, alt)
        }
        "TRAILER" => {
            header_arg(arg)?;
            Cmd::Absent
        }
        "START_TIME" => Cmd::StartTime(match arg {
            Some(f) if !f.is_empty() => TimeFormat::compile(f),
            _ => TimeFormat::envoy_default(),
        }),
        "ENVIRONMENT" => {
            let var = arg.filter(|a| !a.is_empty())?;
            Cmd::Fixed(std::env::var(var).ok().map(String::into_bytes))
        }
        _ if !no_arg => return None,
        "PROTOCOL" => Cmd::Protocol,
        "RESPONSE_CODE" => Cmd::ResponseCode,
        "RESPONSE_CODE_DETAILS" => Cmd::ResponseCodeDetails,
        "RESPONSE_FLAGS" => Cmd::ResponseFlags,
        "RESPONSE_FLAGS_LONG" => Cmd::ResponseFlagsLong,
        "BYTES_RECEIVED" => Cmd::BytesReceived,
        "BYTES_SENT" => Cmd::BytesSent,
        "DURATION" => Cmd::Duration,
        "REQUEST_DURATION" => Cmd::RequestDuration,
        "RESPONSE_DURATION" => Cmd::ResponseDuration,
        "RESPONSE_TX_DURATION" => Cmd::ResponseTxDuration,
        "UPSTREAM_HOST" => Cmd::UpstreamHost,
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Cmd::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Cmd::UpstreamLocal(Full),
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Cmd::UpstreamLocal(Ip),
        "UPSTREAM_LOCAL_PORT" => Cmd::UpstreamLocal(Port),
        "UPSTREAM_REMOTE_ADDRESS" => Cmd::UpstreamRemote(Full),
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Cmd::UpstreamRemote(Ip),
        "UPSTREAM_REMOTE_PORT" => Cmd::UpstreamRemote(Port),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Cmd::UpstreamTransportFailureReason,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Cmd::UpstreamRequestAttemptCount,
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            Cmd::DownstreamRemote(Full)
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => Cmd::DownstreamRemote(Ip),
        "DOWNSTREAM_REMOTE_PORT" | "DOWNSTREAM_DIRECT_REMOTE_PORT" => Cmd::DownstreamRemote(Port),
        "DOWNSTREAM_LOCAL_ADDRESS" => Cmd::DownstreamLocal(Full),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Cmd::DownstreamLocal(Ip),
        "DOWNSTREAM_LOCAL_PORT" => Cmd::DownstreamLocal(Port),
        "ROUTE_NAME" => Cmd::RouteName,
        "REQUEST_HEADERS_BYTES" => Cmd::RequestHeadersBytes,
        "RESPONSE_HEADERS_BYTES" => Cmd::ResponseHeadersBytes,
        "HOSTNAME" => Cmd::Fixed(Some(hostname())),
        "VIRTUAL_CLUSTER_NAME"
        | "REQUESTED_SERVER_NAME"
        | "CONNECTION_TERMINATION_DETAILS"
        | "DOWNSTREAM_TLS_VERSION"
        | "DOWNSTREAM_TLS_CIPHER"
        | "DOWNSTREAM_TLS_SESSION_ID"
        | "DOWNSTREAM_PEER_SUBJECT"
        | "DOWNSTREAM_PEER_ISSUER"
        | "DOWNSTREAM_PEER_URI_SAN"
        | "DOWNSTREAM_PEER_DNS_SAN"
        | "DOWNSTREAM_PEER_CERT"
        | "DOWNSTREAM_PEER_SERIAL"
        | "DOWNSTREAM_PEER_FINGERPRINT_256"
        | "DOWNSTREAM_PEER_FINGERPRINT_1"
        | "DOWNSTREAM_LOCAL_SUBJECT"
        | "DOWNSTREAM_LOCAL_URI_SAN"
        | "DOWNSTREAM_LOCAL_DNS_SAN"
        | "UPSTREAM_TLS_VERSION"
        | "UPSTREAM_TLS_CIPHER"
        | "UPSTREAM_TLS_SESSION_ID"
        | "UPSTREAM_PEER_SUBJECT"
        | "UPSTREAM_PEER_ISSUER"
        | "UPSTREAM_PEER_URI_SAN"
        | "UPSTREAM_PEER_DNS_SAN"
        | "UPSTREAM_PEER_CERT"
        | "UPSTREAM_LOCAL_SUBJECT"
        | "UPSTREAM_LOCAL_URI_SAN"
        | "UPSTREAM_LOCAL_DNS_SAN" => Cmd::Absent,
        _ => return None,
    })
}

/// A piece of a format string.
pub type Piece = crate::router::format::Piece<Cmd>;

/// A compiled format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Piece>);

impl Template {
    /// Compiles a format string; `path` names it in errors.
    pub fn compile(v: &str, path: &str) -> Result<Template, Error> {
        let with_arg = ["REQ", "RESP", "TRAILER", "ENVIRONMENT"];
        compile_pieces(v, path, command, &with_arg, COMMANDS).map(Template)
    }

    /// Whether any command is `c` (by kind).
    pub fn uses(&self, f: impl Fn(&Cmd) -> bool) -> bool {
        self.0.iter().any(|p| matches!(p, Piece::Cmd(c, _) if f(c)))
    }

    /// Writes the value as text: a missing value is `-` (`omit`: nothing).
    pub fn write_text(&self, r: &Record, e: &Emit, omit: bool, out: &mut Vec<u8>) {
        for p in &self.0 {
            match p {
                Piece::Lit(l) => out.extend_from_slice(l),
                Piece::Cmd(c, max) => {
                    let start = out.len();
                    match value(c, r, e, out) {
                        Val::Missing if !omit => out.push(b'-'),
                        Val::Missing => {}
                        Val::Num(n) => {
                            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes())
                        }
                        Val::Str(v) => {
                            out.extend_from_slice(&v[..max.unwrap_or(usize::MAX).min(v.len())])
                        }
                        Val::Written => {
                            if let Some(max) = max {
                                out.truncate(start + (out.len() - start).min(*max));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes the value as a JSON value: one command alone keeps its type (a number, or
    /// `null` when missing); anything else is a string.
    pub fn write_json(&self, r: &Record, e: &Emit, out: &mut Vec<u8>) {
        if let [Piece::Cmd(c, max)] = self.0.as_slice() {
            let start = out.len();
            let cut = |v: &[u8]| v.len().min(max.unwrap_or(usize::MAX));
            match value(c, r, e, out) {
                Val::Missing => out.extend_from_slice(b"null"),
                Val::Num(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
                Val::Str(v) => json_string(&v[..cut(v)], out),
                // Addresses and times: nothing to escape.
                Val::Written => {
                    let n = cut(&out[start..]);
                    out.truncate(start + n);
                    out.insert(start, b'"');
                    out.push(b'"');
                }
            }
            return;
        }
        let mut s = Vec::with_capacity(64);
        self.write_text(r, e, false, &mut s);
        json_string(&s, out);
    }

    /// Whether the value is missing (one command alone whose value is missing).
    pub fn missing(&self, r: &Record, e: &Emit) -> bool {
        matches!(self.0.as_slice(), [Piece::Cmd(c, _)] if matches!(value(c, r, e, &mut Vec::new()), Val::Missing))
    }
}

/// A command's value for one request.
enum Val<'a> {
    Missing,
    Num(u64),
    Str(&'a [u8]),
    /// Appended to the output already (an address, a time).
    Written,
}

/// Appends `a` (or the part asked for) without the formatting machinery: an IPv4 address is
/// written digit by digit.
fn write_addr(a: SocketAddr, part: AddrPart, out: &mut Vec<u8>) {
    use std::io::Write;
    let mut digits = itoa::Buffer::new();
    if part != AddrPart::Port {
        match a.ip() {
            std::net::IpAddr::V4(ip) => {
                out.reserve(22);
                for (i, o) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    if o >= 100 {
                        out.push(b'0' + o / 100);
                    }
                    if o >= 10 {
                        out.push(b'0' + o / 10 % 10);
                    }
                    out.push(b'0' + o % 10);
                }
            }
            std::net::IpAddr::V6(ip) if part == AddrPart::Full => {
                let _ = write!(out, "[{ip}]");
            }
            std::net::IpAddr::V6(ip) => {
                let _ = write!(out, "{ip}");
            }
        }
        if part == AddrPart::Ip {
            return;
        }
        out.push(b':');
    }
    out.extend_from_slice(digits.format(a.port()).as_bytes());
}

fn addr(a: Option<SocketAddr>, part: AddrPart, out: &mut Vec<u8>) -> Val<'static> {
    match (a, part) {
        (None, _) => Val::Missing,
        (Some(a), AddrPart::Port) => Val::Num(a.port() as u64),
        (Some(a), part) => {
            write_addr(a, part, out);
            Val::Written
        }
    }
}

fn ms(from: std::time::Instant, to: Option<std::time::Instant>) -> Val<'static> {
    match to {
        Some(t) => Val::Num(t.saturating_duration_since(from).as_millis() as u64),
        None => Val::Missing,
    }
}

#[inline]
fn value<'a>(c: &'a Cmd, r: &'a Record, e: &'a Emit, out: &mut Vec<u8>) -> Val<'a> {
    let s = |b: &'a [u8]| Val::Str(b);
    match c {
        Cmd::Req(h, alt) => match &r.request {
            Some(q) => q
                .header(h)
                .or_else(|| alt.as_ref().and_then(|a| q.header(a)))
                .map_or(Val::Missing, s),
            None => Val::Missing,
        },
        Cmd::Resp(h, alt) => r
            .response_header(h)
            .or_else(|| alt.as_deref().and_then(|a| r.response_header(a)))
            .map_or(Val::Missing, s),
        Cmd::StartTime(f) => {
            f.write(e.start_wall(r), out);
            Val::Written
        }
        Cmd::Protocol => s(if r.minor == 0 {
            b"HTTP/1.0"
        } else {
            b"HTTP/1.1"
        }),
        Cmd::ResponseCode => Val::Num(r.status as u64),
        Cmd::ResponseCodeDetails => r.detail.map_or(Val::Missing, |d| s(d.text().as_bytes())),
        // A retry's flag beside the detail's: joined in Envoy's order (rare: not kept inline).
        Cmd::ResponseFlags | Cmd::ResponseFlagsLong if r.retry_flag.is_some() => {
            let long = matches!(c, Cmd::ResponseFlagsLong);
            out.extend_from_slice(super::response_flags(r.detail, r.retry_flag, long).as_bytes());
            Val::Written
        }
        Cmd::ResponseFlags => s(r
            .detail
            .and_then(Detail::flag)
            .map_or(&b"-"[..], |f| f.0.as_bytes())),
        Cmd::ResponseFlagsLong => s(r
            .detail
            .and_then(Detail::flag)
            .map_or(&b"-"[..], |f| f.1.as_bytes())),
        Cmd::BytesReceived => Val::Num(r.bytes_received),
        Cmd::BytesSent => Val::Num(r.bytes_sent),
        Cmd::Duration => ms(r.start, Some(e.end)),
        Cmd::RequestDuration => ms(r.start, r.request_done),
        Cmd::ResponseDuration => ms(r.start, r.response_start),
        Cmd::ResponseTxDuration => match r.response_start {
            Some(first) => ms(first, r.response_done),
            None => Val::Missing,
        },
        Cmd::UpstreamHost => addr(r.host, AddrPart::Full, out),
        Cmd::UpstreamCluster => r
            .cluster
            .as_ref()
            .map_or(Val::Missing, |c| s(c.cfg.name.as_bytes())),
        Cmd::UpstreamLocal(p) => addr(r.upstream_local, *p, out),
        Cmd::UpstreamRemote(p) => addr(r.host.filter(|_| r.connected), *p, out),
        Cmd::UpstreamTransportFailureReason => r
            .detail
            .and_then(Detail::transport_failure)
            .map_or(Val::Missing, |t| s(t.as_bytes())),
        Cmd::UpstreamRequestAttemptCount => Val::Num(u64::from(r.attempts)),
        Cmd::DownstreamRemote(p) => addr(Some(e.peer), *p, out),
        Cmd::DownstreamLocal(p) => addr(e.local, *p, out),
        Cmd::RouteName => r.route.as_deref().map_or(Val::Missing, |n| s(n.as_bytes())),
        Cmd::RequestHeadersBytes => Val::Num(r.request.as_ref().map_or(0, |q| q.header_bytes())),
        Cmd::ResponseHeadersBytes => Val::Num(r.response_header_bytes()),
        Cmd::Fixed(v) => v.as_deref().map_or(Val::Missing, s),
        Cmd::Absent => Val::Missing,
    }
}

/// Writes `s` as a JSON string, as Envoy 1.40 does: valid UTF-8 goes as it is, with `"` and
/// `\\` escaped and control characters as `\\n`-style or `\\u00XX` escapes; anything else is
/// read as Latin-1, every byte from 0x80 up written `\\u00XX` and `"`, `\\` as `\\u0022`,
/// `\\u005c` (`a\\xffb` gives `"a\\u00ffb"`). A line is valid JSON whatever a client sent.
pub fn json_string(s: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let u = |out: &mut Vec<u8>, b: u8| {
        out.extend_from_slice(b"\\u00");
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    };
    let utf8 = std::str::from_utf8(s).is_ok();
    out.push(b'"');
    for &b in s {
        match b {
            b'"' | b'\\' if !utf8 => u(out, b),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b if b < 0x20 || (b >= 0x80 && !utf8) => u(out, b),
            b => out.push(b),
        }
    }
    out.push(b'"');
}

/// A JSON format: an object whose string values are templates, kept in key order (Envoy
/// writes the keys sorted, which is how they are given here).
#[derive(Debug, Clone, PartialEq)]
pub enum JsonNode {
    Template(Template),
    /// A number, boolean or null from the config, written as given.
    Raw(Vec<u8>),
    Object(Vec<(Vec<u8>, JsonNode)>),
    List(Vec<JsonNode>),
}

impl JsonNode {
    /// Compiles a configured JSON value.
    pub fn compile(v: &serde_json::Value, path: &str) -> Result<JsonNode, Error> {
        Ok(match v {
            serde_json::Value::String(s) => JsonNode::Template(Template::compile(s, path)?),
            serde_json::Value::Object(m) => {
                let mut fields = Vec::with_capacity(m.len());
                for (k, v) in m {
                    let mut key = Vec::new();
                    json_string(k.as_bytes(), &mut key);
                    fields.push((key, JsonNode::compile(v, &format!("{path}.{k}"))?));
                }
                JsonNode::Object(fields)
            }
            serde_json::Value::Array(a) => JsonNode::List(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| JsonNode::compile(v, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            other => JsonNode::Raw(other.to_string().into_bytes()),
        })
    }

    /// Whether any template in it uses a command `f` takes.
    pub fn uses(&self, f: &dyn Fn(&Cmd) -> bool) -> bool {
        match self {
            JsonNode::Template(t) => t.uses(f),
            JsonNode::Raw(_) => false,
            JsonNode::Object(fields) => fields.iter().any(|(_, n)| n.uses(f)),
            JsonNode::List(items) => items.iter().any(|n| n.uses(f)),
        }
    }

    /// Writes it; with `omit`, a field whose value is missing is left out.
    pub fn write(&self, r: &Record, e: &Emit, omit: bool, out: &mut Vec<u8>) {
        match self {
            JsonNode::Template(t) => t.write_json(r, e, out),
            JsonNode::Raw(b) => out.extend_from_slice(b),
            JsonNode::Object(fields) => {
                out.push(b'{');
                let mut first = true;
                for (k, v) in fields {
                    if omit && matches!(v, JsonNode::Template(t) if t.missing(r, e)) {
                        continue;
                    }
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(k);
                    out.push(b':');
                    v.write(r, e, omit, out);
                }
                out.push(b'}');
            }
            JsonNode::List(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write(r, e, omit, out);
                }
                out.push(b']');
            }
        }
    }
}
