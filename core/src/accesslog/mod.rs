//! Access logs: the connection manager's `access_log`, a line per request written by the
//! worker that served it.
//!
//! A listener with access logs gives each request a [`Record`] (boxed, hung on the
//! connection only while the request lasts), which the request path fills in as it goes: the
//! request as the router left it, the upstream host, the response head as sent, byte counts,
//! times, and why it ended ([`Detail`]: Envoy's `%RESPONSE_CODE_DETAILS%` and response flag).
//! When the request ends, each log whose filter takes it formats a line into the worker's
//! buffer for its destination (`sink.rs`). A listener without access logs pays a test of an
//! `Option` at each of those places, and nothing else.

pub mod format;
pub mod sink;
pub mod time;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::{AccessLog, Comparison, ComparisonOp, LogFilter, LogFormat};
use crate::http1::head::HeaderMap;
use crate::router::{HeaderMatch, RouteRequest};
use crate::Error;
use format::{Cmd, JsonNode, Template};
pub use sink::{LogBufs, Sink};

/// Why a request ended as it did: Envoy's response code details, with the response flag each
/// comes with (checked against the envoy binary; docs/envoy-behaviour.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    ViaUpstream,
    DirectResponse,
    RouteNotFound,
    ClusterNotFound,
    NoHealthyUpstream,
    ConnectRefused,
    ConnectTimeout,
    ResetBeforeTermination,
    ResetBeforeProtocol,
    ResetAfterTermination,
    ResetAfterProtocol,
    ResponseTimeout,
    StreamIdleTimeout,
    RequestOverallTimeout,
    RequestHeaderTimeout,
    DownstreamDisconnect,
    CodecError,
    HeadersTooLarge,
    InvalidTransferEncoding,
    ContentLengthAndChunked,
    LowVersion,
    HttpsInPlaintext,
    MissingHost,
    AbsolutePathRejected,
    PathNormalizationFailed,
    PathRedirect,
    UpgradeFailed,
    UnderscoreHeader,
}

impl Detail {
    /// `%RESPONSE_CODE_DETAILS%`.
    pub fn text(self) -> &'static str {
        match self {
            Detail::ViaUpstream => "via_upstream",
            Detail::DirectResponse => "direct_response",
            Detail::RouteNotFound => "route_not_found",
            Detail::ClusterNotFound => "cluster_not_found",
            Detail::NoHealthyUpstream => "no_healthy_upstream",
            Detail::ConnectRefused => "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
            Detail::ConnectTimeout => "upstream_reset_before_response_started{connection_timeout}",
            Detail::ResetBeforeTermination => {
                "upstream_reset_before_response_started{connection_termination}"
            }
            Detail::ResetBeforeProtocol => "upstream_reset_before_response_started{protocol_error}",
            Detail::ResetAfterTermination => {
                "upstream_reset_after_response_started{connection_termination}"
            }
            Detail::ResetAfterProtocol => "upstream_reset_after_response_started{protocol_error}",
            Detail::ResponseTimeout => "response_timeout",
            Detail::StreamIdleTimeout => "stream_idle_timeout",
            Detail::RequestOverallTimeout => "request_overall_timeout",
            Detail::RequestHeaderTimeout => "request_header_timeout",
            Detail::DownstreamDisconnect => "downstream_remote_disconnect",
            Detail::CodecError => "http1.codec_error",
            Detail::HeadersTooLarge => "http1.headers_too_large",
            Detail::InvalidTransferEncoding => "http1.invalid_transfer_encoding",
            Detail::ContentLengthAndChunked => "http1.content_length_and_chunked_not_allowed",
            Detail::LowVersion => "low_version",
            Detail::HttpsInPlaintext => "http1.https_url_on_plaintext_connection",
            Detail::MissingHost => "missing_host_header",
            Detail::AbsolutePathRejected => "absolute_path_rejected",
            Detail::PathNormalizationFailed => "path_normalization_failed",
            Detail::PathRedirect => "direct_response",
            Detail::UpgradeFailed => "upgrade_failed",
            Detail::UnderscoreHeader => "http1.unexpected_underscore",
        }
    }

    /// The response flag, short and long (`%RESPONSE_FLAGS%`, `%RESPONSE_FLAGS_LONG%`).
    pub fn flag(self) -> Option<(&'static str, &'static str)> {
        Some(match self {
            Detail::RouteNotFound => ("NR", "NoRouteFound"),
            Detail::ClusterNotFound => ("NC", "NoClusterFound"),
            Detail::NoHealthyUpstream => ("UH", "NoHealthyUpstream"),
            Detail::ConnectRefused | Detail::ConnectTimeout => ("UF", "UpstreamConnectionFailure"),
            Detail::ResetBeforeTermination | Detail::ResetAfterTermination => {
                ("UC", "UpstreamConnectionTermination")
            }
            Detail::ResetBeforeProtocol | Detail::ResetAfterProtocol => {
                ("UPE", "UpstreamProtocolError")
            }
            Detail::ResponseTimeout => ("UT", "UpstreamRequestTimeout"),
            Detail::StreamIdleTimeout => ("SI", "StreamIdleTimeout"),
            Detail::DownstreamDisconnect => ("DC", "DownstreamConnectionTermination"),
            Detail::CodecError
            | Detail::HeadersTooLarge
            | Detail::InvalidTransferEncoding
            | Detail::ContentLengthAndChunked
            | Detail::LowVersion
            | Detail::HttpsInPlaintext
            | Detail::UnderscoreHeader => ("DPE", "DownstreamProtocolError"),
            _ => return None,
        })
    }

    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub fn transport_failure(self) -> Option<&'static str> {
        (self == Detail::ConnectRefused).then_some("delayed_connect_error:_Connection_refused")
    }
}

/// The request as logged: as the router left it (its edits, rewrites and
/// `x-envoy-original-*` records), or as the connection manager had it when it answered.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    pub headers: HeaderMap,
    /// Routed: `:scheme` is known (the connection manager sets it before routing).
    pub routed: bool,
    /// The scheme of an absolute-form target.
    pub absolute_https: Option<bool>,
    /// `CONNECT` has no `:path`.
    pub connect: bool,
}

impl LoggedRequest {
    fn view(&self) -> RouteRequest<'_> {
        RouteRequest {
            method: &self.method,
            target: &self.target,
            headers: &self.headers,
            absolute_https: self.absolute_https,
        }
    }

    /// A header, or `:method`, `:path`, `:authority`, `:scheme`.
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        match name {
            b":method" => Some(&self.method),
            b":path" => (!self.connect).then_some(&self.target[..]),
            b":authority" => self.headers.get(b"host"),
            b":scheme" => self.routed.then(|| self.view().scheme()),
            n => self.headers.get(n),
        }
    }
}

/// What a request's log lines are made from.
#[derive(Debug)]
pub struct Record {
    /// When its first bytes were taken up.
    pub start: Instant,
    pub request: Option<Box<LoggedRequest>>,
    /// `0` for HTTP/1.0.
    pub minor: u8,
    /// The response code sent (0: none).
    pub status: u16,
    pub detail: Option<Detail>,
    pub route: Option<Arc<str>>,
    pub cluster: Option<Arc<str>>,
    /// The upstream host picked.
    pub host: Option<SocketAddr>,
    /// A connection to it was had (`%UPSTREAM_REMOTE_ADDRESS%`), and its local address.
    pub connected: bool,
    pub upstream_local: Option<SocketAddr>,
    /// The router sent it upstream, or tried (`%UPSTREAM_REQUEST_ATTEMPT_COUNT%`).
    pub attempted: bool,
    /// The response head as it went to the client.
    pub response_head: Option<Vec<u8>>,
    /// Body bytes read from the client and sent to it (an upgrade's: the tunnel's bytes).
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// When the request was read whole, the upstream's response began, it was sent whole.
    pub request_done: Option<Instant>,
    pub response_start: Option<Instant>,
    pub response_done: Option<Instant>,
}

impl Record {
    /// A record for a request whose first bytes came at `start`.
    pub fn new(start: Instant) -> Record {
        Record {
            start,
            request: None,
            minor: 1,
            status: 0,
            detail: None,
            route: None,
            cluster: None,
            host: None,
            connected: false,
            upstream_local: None,
            attempted: false,
            response_head: None,
            bytes_received: 0,
            bytes_sent: 0,
            request_done: None,
            response_start: None,
            response_done: None,
        }
    }

    /// A response header as sent (the first, if several).
    pub fn response_header(&self, name: &[u8]) -> Option<&[u8]> {
        let head = self.response_head.as_deref()?;
        let mut lines = head.split(|&b| b == b'\n').skip(1);
        lines.find_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = memchr::memchr(b':', line)?;
            line[..colon].eq_ignore_ascii_case(name).then(|| {
                let v = &line[colon + 1..];
                let start = v
                    .iter()
                    .position(|b| !matches!(b, b' ' | b'\t'))
                    .unwrap_or(v.len());
                let end = v
                    .iter()
                    .rposition(|b| !matches!(b, b' ' | b'\t'))
                    .map_or(start, |e| e + 1);
                &v[start..end.max(start)]
            })
        })
    }
}

/// What a line needs that the record does not hold.
pub struct Emit {
    pub peer: SocketAddr,
    /// The client connection's local address (looked up only when a log asks for it).
    pub local: Option<SocketAddr>,
    /// When the request ended.
    pub end: Instant,
    /// The clock now, and the wall clock now: the start's wall time is taken from them.
    pub now: Instant,
    pub wall: SystemTime,
}

impl Emit {
    fn start_wall(&self, r: &Record) -> SystemTime {
        self.wall - self.now.saturating_duration_since(r.start)
    }
}

enum Format {
    Text(Template, bool),
    Json(JsonNode, bool),
}

enum Filter {
    Compare(bool, Comparison),
    Always,
    Header(HeaderMatch),
    Flags(Vec<String>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

impl Filter {
    fn compile(f: &LogFilter, path: &str) -> Result<Filter, Error> {
        let list = |fs: &[LogFilter], kind: &str| {
            fs.iter()
                .enumerate()
                .map(|(i, f)| Filter::compile(f, &format!("{path}.{kind}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match f {
            LogFilter::StatusCode(c) => Filter::Compare(false, *c),
            LogFilter::Duration(c) => Filter::Compare(true, *c),
            LogFilter::NotHealthCheck => Filter::Always,
            LogFilter::Header(h) => Filter::Header(HeaderMatch::compile(h, path)?),
            LogFilter::ResponseFlag(flags) => Filter::Flags(flags.clone()),
            LogFilter::And(fs) => Filter::And(list(fs, "and")?),
            LogFilter::Or(fs) => Filter::Or(list(fs, "or")?),
        })
    }

    fn takes(&self, r: &Record, e: &Emit) -> bool {
        match self {
            Filter::Compare(duration, c) => {
                let v = if *duration {
                    e.end.saturating_duration_since(r.start).as_millis() as u64
                } else {
                    r.status as u64
                };
                match c.op {
                    ComparisonOp::Ge => v >= c.value,
                    ComparisonOp::Eq => v == c.value,
                    ComparisonOp::Le => v <= c.value,
                    ComparisonOp::Ne => v != c.value,
                }
            }
            Filter::Always => true,
            Filter::Header(h) => match &r.request {
                Some(q) => h.matches(&q.view()),
                None => {
                    let empty = HeaderMap::default();
                    h.matches(&RouteRequest {
                        method: b"",
                        target: b"",
                        headers: &empty,
                        absolute_https: None,
                    })
                }
            },
            Filter::Flags(flags) => match r.detail.and_then(Detail::flag) {
                None => false,
                Some((short, _)) => flags.is_empty() || flags.iter().any(|f| f == short),
            },
            Filter::And(fs) => fs.iter().all(|f| f.takes(r, e)),
            Filter::Or(fs) => fs.iter().any(|f| f.takes(r, e)),
        }
    }
}

struct Entry {
    sink: Arc<Sink>,
    format: Format,
    filter: Option<Filter>,
}

/// A listener's access logs, compiled.
pub struct Logs {
    entries: Vec<Entry>,
    /// Some log writes the client connection's local address.
    pub needs_local: bool,
    /// Some log writes the upstream connection's local address.
    pub needs_upstream_local: bool,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl Logs {
    /// Compiles a connection manager's `access_log` (`None` when it has none), opening the
    /// files it names.
    pub fn compile(cfg: &[AccessLog], path: &str) -> Result<Option<Arc<Logs>>, Error> {
        if cfg.is_empty() {
            return Ok(None);
        }
        let mut entries = Vec::with_capacity(cfg.len());
        for (i, a) in cfg.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let format = match &a.format {
                LogFormat::Text {
                    text,
                    omit_empty_values,
                } => Format::Text(
                    Template::compile(text, &format!("{p}.format"))?,
                    *omit_empty_values,
                ),
                LogFormat::Json {
                    json,
                    omit_empty_values,
                } => Format::Json(
                    JsonNode::compile(
                        &serde_json::Value::Object(json.clone()),
                        &format!("{p}.format.json"),
                    )?,
                    *omit_empty_values,
                ),
            };
            let filter = a
                .filter
                .as_ref()
                .map(|f| Filter::compile(f, &format!("{p}.filter")))
                .transpose()?;
            let sink = Sink::get(&a.sink, &format!("{p}.sink"))?;
            entries.push(Entry {
                sink,
                format,
                filter,
            });
        }
        let uses = |f: &dyn Fn(&Cmd) -> bool| {
            entries.iter().any(|e| match &e.format {
                Format::Text(t, _) => t.uses(f),
                Format::Json(j, _) => j.uses(f),
            })
        };
        let needs_local = uses(&|c| matches!(c, Cmd::DownstreamLocal(_)));
        let needs_upstream_local = uses(&|c| matches!(c, Cmd::UpstreamLocal(_)));
        Ok(Some(Arc::new(Logs {
            entries,
            needs_local,
            needs_upstream_local,
        })))
    }

    /// Writes the request's line to each log whose filter takes it.
    pub fn write(&self, r: &Record, e: &Emit, bufs: &LogBufs) {
        for entry in &self.entries {
            if entry.filter.as_ref().is_some_and(|f| !f.takes(r, e)) {
                continue;
            }
            bufs.append(&entry.sink, |out| match &entry.format {
                Format::Text(t, omit) => t.write_text(r, e, *omit, out),
                Format::Json(j, omit) => {
                    j.write(r, e, *omit, out);
                    out.push(b'\n');
                }
            });
        }
    }
}
