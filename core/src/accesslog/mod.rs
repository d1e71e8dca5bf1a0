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
use std::time::{Duration, Instant, SystemTime};

use crate::config::{AccessLog, Comparison, ComparisonOp, LogFilter, LogFormat};
use crate::http1::head::{HeaderMap, RequestHead};
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
    /// A circuit breaker refused the request (`max_pending_requests`, `max_requests`).
    Overflow,
    ResetBeforeTermination,
    ResetBeforeProtocol,
    ResetAfterTermination,
    ResetAfterProtocol,
    ResponseTimeout,
    /// A retry policy's `per_try_timeout` passed.
    PerTryTimeout,
    /// A retry policy's `per_try_idle_timeout` passed.
    PerTryIdleTimeout,
    StreamIdleTimeout,
    RequestOverallTimeout,
    RequestHeaderTimeout,
    /// The connection manager's (or the route's) `max_stream_duration` passed.
    MaxDurationTimeout,
    /// The overload manager's `stop_accepting_requests` refused the request.
    Overload,
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
            Detail::Overflow => "upstream_reset_before_response_started{overflow}",
            Detail::ResetBeforeTermination => {
                "upstream_reset_before_response_started{connection_termination}"
            }
            Detail::ResetBeforeProtocol => "upstream_reset_before_response_started{protocol_error}",
            Detail::ResetAfterTermination => {
                "upstream_reset_after_response_started{connection_termination}"
            }
            Detail::ResetAfterProtocol => "upstream_reset_after_response_started{protocol_error}",
            Detail::ResponseTimeout => "response_timeout",
            Detail::PerTryTimeout => "upstream_per_try_timeout",
            Detail::PerTryIdleTimeout => "upstream_per_try_idle_timeout",
            Detail::StreamIdleTimeout => "stream_idle_timeout",
            Detail::RequestOverallTimeout => "request_overall_timeout",
            Detail::RequestHeaderTimeout => "request_header_timeout",
            Detail::MaxDurationTimeout => "max_duration_timeout",
            Detail::Overload => "overload",
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
            Detail::Overflow => ("UO", "UpstreamOverflow"),
            Detail::ResetBeforeTermination | Detail::ResetAfterTermination => {
                ("UC", "UpstreamConnectionTermination")
            }
            Detail::ResetBeforeProtocol | Detail::ResetAfterProtocol => {
                ("UPE", "UpstreamProtocolError")
            }
            Detail::ResponseTimeout | Detail::PerTryTimeout | Detail::PerTryIdleTimeout => {
                ("UT", "UpstreamRequestTimeout")
            }
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

/// A retry policy's say in the response flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryFlag {
    /// `URX`: the retries were used up.
    LimitExceeded,
    /// `UO`: the cluster's `max_retries` refused one more.
    Overflow,
}

impl RetryFlag {
    fn flag(self) -> (&'static str, &'static str) {
        match self {
            RetryFlag::LimitExceeded => ("URX", "UpstreamRetryLimitExceeded"),
            RetryFlag::Overflow => ("UO", "UpstreamOverflow"),
        }
    }
}

/// `%RESPONSE_FLAGS%` (`long`: `%RESPONSE_FLAGS_LONG%`) of a retry flag and a detail, joined
/// by `,` in the order Envoy set them (the retry's decision came first: `URX,UF`, `UO,UC`).
pub fn response_flags(detail: Option<Detail>, retry: Option<RetryFlag>, long: bool) -> String {
    let pick = |f: (&'static str, &'static str)| if long { f.1 } else { f.0 };
    let mut flags: Vec<&str> = Vec::with_capacity(2);
    if let Some(f) = retry.map(RetryFlag::flag) {
        flags.push(pick(f));
    }
    if let Some(f) = detail.and_then(Detail::flag).map(pick) {
        if !flags.contains(&f) {
            flags.push(f);
        }
    }
    if flags.is_empty() {
        return "-".into();
    }
    flags.join(",")
}

/// The request as logged: as the router left it (its edits, rewrites and
/// `x-envoy-original-*` records), or as the connection manager had it when it answered.
/// The head is the request's own, moved here once written upstream (its method and target
/// point into its header bytes: nothing is copied).
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub head: RequestHead,
    /// The target as it went upstream, when a rewrite changed it.
    pub rewritten: Option<Vec<u8>>,
    /// Routed: `:scheme` is known (the connection manager sets it before routing).
    pub routed: bool,
}

impl LoggedRequest {
    pub fn method(&self) -> &[u8] {
        self.head.method()
    }

    pub fn target(&self) -> &[u8] {
        self.rewritten.as_deref().unwrap_or(self.head.target())
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.head.headers
    }

    fn view(&self) -> RouteRequest<'_> {
        RouteRequest {
            method: self.method(),
            target: self.target(),
            headers: self.headers(),
            absolute_https: self.head.absolute_https(),
        }
    }

    /// Envoy's byte size of the request's header map: each name and value, with the request
    /// line's `:method`, `:path` and (once routed) `:scheme`, and `host` as `:authority`.
    pub fn header_bytes(&self) -> u64 {
        let mut n = 7 + self.method().len();
        if self.method() != b"CONNECT" {
            n += 5 + self.target().len();
        }
        if self.routed {
            n += 7 + self.view().scheme().len();
        }
        for (k, v) in self.headers().iter() {
            n += if k == b"host" { 10 } else { k.len() } + v.len();
        }
        n as u64
    }

    /// A header, or `:method`, `:path`, `:authority`, `:scheme`.
    pub fn header(&self, name: &format::ReqName) -> Option<&[u8]> {
        use format::ReqName;
        match name {
            ReqName::Method => Some(self.method()),
            // `CONNECT` has no `:path`.
            ReqName::Path => (self.method() != b"CONNECT").then(|| self.target()),
            ReqName::Authority => self.headers().get(b"host"),
            ReqName::Scheme => self.routed.then(|| self.view().scheme()),
            ReqName::Absent => None,
            ReqName::Header(n, bit) => self.headers().get_known(n, *bit),
        }
    }
}

/// The response as it went to the client.
#[derive(Debug)]
pub enum LoggedResponse {
    /// A proxied response's headers (moved here once written).
    Headers(HeaderMap),
    /// A local reply's head, as written (read back only when a log asks).
    Raw(Vec<u8>),
}

impl LoggedResponse {
    /// Each header's name and value.
    fn headers(&self) -> Box<dyn Iterator<Item = (&[u8], &[u8])> + '_> {
        match self {
            LoggedResponse::Headers(h) => Box::new(h.iter()),
            LoggedResponse::Raw(head) => {
                Box::new(head.split(|&b| b == b'\n').skip(1).filter_map(|line| {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let colon = memchr::memchr(b':', line)?;
                    Some((&line[..colon], line[colon + 1..].trim_ascii()))
                }))
            }
        }
    }
}

/// What a request's log lines are made from.
pub struct Record {
    /// When its first bytes were taken up.
    pub start: Instant,
    pub request: Option<LoggedRequest>,
    /// `0` for HTTP/1.0.
    pub minor: u8,
    /// The response code sent (0: none).
    pub status: u16,
    pub detail: Option<Detail>,
    pub route: Option<Arc<str>>,
    /// The cluster (this worker's: a count, not an atomic one, to hold).
    pub cluster: Option<std::rc::Rc<crate::upstream::ClusterRt>>,
    /// The upstream host picked.
    pub host: Option<SocketAddr>,
    /// A connection to it was had (`%UPSTREAM_REMOTE_ADDRESS%`), and its local address.
    pub connected: bool,
    pub upstream_local: Option<SocketAddr>,
    /// How often the router sent it upstream, or tried (`%UPSTREAM_REQUEST_ATTEMPT_COUNT%`).
    pub attempts: u32,
    /// Why the last try was not tried again although its route's retry policy took it:
    /// `URX` (no retries left) or `UO` (the cluster's `max_retries`), beside the detail's flag.
    pub retry_flag: Option<RetryFlag>,
    /// The response as it went to the client.
    pub response: Option<LoggedResponse>,
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
            attempts: 0,
            retry_flag: None,
            response: None,
            bytes_received: 0,
            bytes_sent: 0,
            request_done: None,
            response_start: None,
            response_done: None,
        }
    }

    /// Envoy's byte size of the response's header map: `:status` and its three digits, then
    /// each name and value (0 without a response).
    pub fn response_header_bytes(&self) -> u64 {
        self.response.as_ref().map_or(0, |h| {
            (10 + h.headers().map(|(k, v)| k.len() + v.len()).sum::<usize>()) as u64
        })
    }

    /// Keeps the request as logged; `read_whole`: it has no body (or upgrade tunnel) still to
    /// come, so it was complete when it began.
    pub fn set_request(&mut self, q: LoggedRequest, read_whole: bool) {
        self.request = Some(q);
        if read_whole {
            self.request_done = Some(self.start);
        }
    }

    /// A response header as sent (the first, if several).
    pub fn response_header(&self, name: &[u8]) -> Option<&[u8]> {
        match self.response.as_ref()? {
            LoggedResponse::Headers(h) => h.get(name),
            raw => raw
                .headers()
                .find_map(|(k, v)| k.eq_ignore_ascii_case(name).then_some(v)),
        }
    }
}

/// What a line needs that the record does not hold.
pub struct Emit {
    pub peer: SocketAddr,
    /// The client connection's local address (looked up only when a log asks for it).
    pub local: Option<SocketAddr>,
    /// When the request ended.
    pub end: Instant,
    /// The clock now, and the wall clock now (since the Unix epoch): the start's wall time is
    /// taken from them.
    pub now: Instant,
    pub wall: Duration,
}

impl Emit {
    fn start_wall(&self, r: &Record) -> Duration {
        self.wall
            .saturating_sub(self.now.saturating_duration_since(r.start))
    }
}

thread_local! {
    static WALL: std::cell::Cell<Option<(Instant, Duration)>> = const { std::cell::Cell::new(None) };
}

/// The wall-clock time at `now`, from an anchor the thread takes once a second (a clock read
/// and the arithmetic from it cost a logged request ~150 instructions; callgrind).
pub fn wall_at(now: Instant) -> Duration {
    const FRESH: Duration = Duration::from_secs(1);
    WALL.with(|w| match w.get() {
        // A turn's stamp may come just before the anchor taken within the turn.
        Some((at, wall)) if now >= at && now - at < FRESH => wall + (now - at),
        Some((at, wall)) if now < at && at - now < FRESH => wall.saturating_sub(at - now),
        _ => {
            let wall = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let at = Instant::now();
            w.set(Some((at, wall)));
            wall.saturating_sub(at.saturating_duration_since(now))
        }
    })
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
            let at = |given: &str, own: String| {
                if given.is_empty() {
                    own
                } else {
                    given.to_string()
                }
            };
            let format = match &a.format {
                LogFormat::Text {
                    text,
                    omit_empty_values,
                } => Format::Text(
                    Template::compile(text, &at(&a.format_at, format!("{p}.format")))?,
                    *omit_empty_values,
                ),
                LogFormat::Json {
                    json,
                    omit_empty_values,
                } => Format::Json(
                    JsonNode::compile(
                        &serde_json::Value::Object(json.clone()),
                        &at(&a.format_at, format!("{p}.format.json")),
                    )?,
                    *omit_empty_values,
                ),
            };
            let filter = a
                .filter
                .as_ref()
                .map(|f| Filter::compile(f, &format!("{p}.filter")))
                .transpose()?;
            let sink = Sink::get(&a.sink, &at(&a.sink_at, format!("{p}.sink")))?;
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

    /// The lines each log whose filter takes the request would write, each with whether it is
    /// a JSON log's (for the fuzz target).
    pub fn lines(&self, r: &Record, e: &Emit) -> Vec<(bool, Vec<u8>)> {
        self.taking(r, e)
            .map(|entry| {
                let mut line = Vec::new();
                entry.line(r, e, &mut line);
                (matches!(entry.format, Format::Json(..)), line)
            })
            .collect()
    }

    /// Writes the request's line to each log whose filter takes it.
    pub fn write(&self, r: &Record, e: &Emit, bufs: &LogBufs) {
        for entry in self.taking(r, e) {
            bufs.append(&entry.sink, |out| entry.line(r, e, out));
        }
    }

    /// The logs whose filter takes the request.
    fn taking<'a>(&'a self, r: &'a Record, e: &'a Emit) -> impl Iterator<Item = &'a Entry> {
        self.entries
            .iter()
            .filter(move |entry| entry.filter.as_ref().is_none_or(|f| f.takes(r, e)))
    }
}

impl Entry {
    /// Appends the log's line for the request (a JSON object ends in a newline of its own).
    fn line(&self, r: &Record, e: &Emit, out: &mut Vec<u8>) {
        match &self.format {
            Format::Text(t, omit) => t.write_text(r, e, *omit, out),
            Format::Json(j, omit) => {
                j.write(r, e, *omit, out);
                out.push(b'\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HeaderMatcher, LogSink, ValueMatch};
    use std::time::Duration;

    fn record() -> Record {
        let start = Instant::now();
        let mut raw = bytes::BytesMut::from(
            &b"GET /a?b=1 HTTP/1.1\r\nhost: example.com\r\nuser-agent: ua \"q\" \\\r\n\r\n"[..],
        );
        let head = crate::http1::head::parse_request_counted(&mut raw, 8192, 100)
            .unwrap()
            .unwrap();
        let mut r = Record::new(start);
        r.request = Some(LoggedRequest {
            head,
            rewritten: None,
            routed: true,
        });
        r.status = 200;
        r.detail = Some(Detail::ViaUpstream);
        r.host = Some("127.0.0.1:8080".parse().unwrap());
        r.connected = true;
        r.attempts = 1;
        r.response = Some(LoggedResponse::Raw(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nX-Up:  a b \r\n\r\n".to_vec(),
        ));
        r.bytes_sent = 2;
        r.request_done = Some(start);
        r.response_start = Some(start + Duration::from_millis(3));
        r.response_done = Some(start + Duration::from_millis(5));
        r
    }

    fn emit(r: &Record) -> Emit {
        Emit {
            peer: "10.0.0.1:5000".parse().unwrap(),
            local: None,
            end: r.start + Duration::from_millis(7),
            now: r.start,
            wall: Duration::from_millis(1_796_642_431_924),
        }
    }

    fn text(f: &str, r: &Record, omit: bool) -> String {
        let mut out = Vec::new();
        Template::compile(f, "t")
            .unwrap()
            .write_text(r, &emit(r), omit, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_commands() {
        let r = record();
        assert_eq!(
            text("[%START_TIME%] %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(x-up)% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %REQ(x-nope)% %RESPONSE_DURATION% %RESPONSE_TX_DURATION% %REQ(:AUTHORITY):4% 100%%", &r, false),
            // (No cluster: a worker-side cluster is the dataplane tests'.)
            "[2026-12-07T11:20:31.924Z] GET /a?b=1 HTTP/1.1 200 - 0 2 7 a b 127.0.0.1:8080 - 10.0.0.1 - 3 2 exam 100%"
        );
        // Missing values are empty with omit_empty_values.
        assert_eq!(text("<%REQ(x-nope)%><%ROUTE_NAME%>", &r, true), "<><>");
    }

    #[test]
    fn json_values_keep_their_type_and_strings_are_escaped() {
        let r = record();
        let v: serde_json::Value = serde_json::from_str(
            r#"{"z": "%RESPONSE_CODE%", "a": "%REQ(user-agent)%", "m": "%REQ(x-nope)%",
                "n": {"y": "%PROTOCOL%", "x": [1, "%BYTES_SENT%"]}, "t": true, "s": "c=%RESPONSE_CODE%"}"#,
        )
        .unwrap();
        let node = JsonNode::compile(&v, "j").unwrap();
        let mut out = Vec::new();
        node.write(&r, &emit(&r), false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":"ua \"q\" \\","m":null,"n":{"x":[1,2],"y":"HTTP/1.1"},"s":"c=200","t":true,"z":200}"#
        );
        let mut out = Vec::new();
        node.write(&r, &emit(&r), true, &mut out);
        assert!(!String::from_utf8(out).unwrap().contains("\"m\""));
    }

    #[test]
    fn unknown_and_malformed_commands_are_refused() {
        for (f, want) in [
            ("%NOPE%", "%NOPE% is not supported"),
            (
                "%DYNAMIC_METADATA(a:b)%",
                "%DYNAMIC_METADATA(a:b)% is not supported",
            ),
            ("%REQ()%", "no valid command at position 0"),
            ("%PROTOCOL(x)%", "%PROTOCOL(x)% is not supported"),
            ("a % b", "no valid command at position 2"),
        ] {
            let e = Template::compile(f, "p").unwrap_err();
            assert!(e.message().contains(want), "{f}: {}", e.message());
        }
    }

    #[test]
    fn filters_decide() {
        let r = record();
        let e = emit(&r);
        let cmp = |duration, op, value| {
            Filter::compile(
                &if duration {
                    LogFilter::Duration(Comparison { op, value })
                } else {
                    LogFilter::StatusCode(Comparison { op, value })
                },
                "f",
            )
            .unwrap()
        };
        assert!(cmp(false, ComparisonOp::Ge, 200).takes(&r, &e));
        assert!(!cmp(false, ComparisonOp::Ge, 201).takes(&r, &e));
        assert!(cmp(false, ComparisonOp::Ne, 404).takes(&r, &e));
        assert!(cmp(true, ComparisonOp::Le, 7).takes(&r, &e));
        assert!(!cmp(true, ComparisonOp::Eq, 6).takes(&r, &e));
        let header = |name: &str, v: &str| {
            Filter::compile(
                &LogFilter::Header(HeaderMatcher {
                    name: name.into(),
                    value_match: ValueMatch::Prefix(v.into()),
                    invert_match: false,
                    ignore_case: false,
                    treat_missing_header_as_empty: false,
                }),
                "f",
            )
            .unwrap()
        };
        assert!(header("user-agent", "ua").takes(&r, &e));
        assert!(header(":path", "/a").takes(&r, &e));
        assert!(!header("x-nope", "").takes(&r, &e));
        let flags = |f: &[&str]| {
            Filter::compile(
                &LogFilter::ResponseFlag(f.iter().map(|s| s.to_string()).collect()),
                "f",
            )
            .unwrap()
        };
        assert!(!flags(&[]).takes(&r, &e));
        let mut uh = record();
        uh.detail = Some(Detail::NoHealthyUpstream);
        assert!(flags(&[]).takes(&uh, &e));
        assert!(flags(&["NR", "UH"]).takes(&uh, &e));
        assert!(!flags(&["NR"]).takes(&uh, &e));
        let both = Filter::And(vec![cmp(false, ComparisonOp::Eq, 200), flags(&[])]);
        let either = Filter::Or(vec![cmp(false, ComparisonOp::Eq, 200), flags(&[])]);
        assert!(!both.takes(&r, &e) && either.takes(&r, &e));
    }

    #[test]
    fn any_format_string_compiles_or_is_refused_and_renders_without_panics() {
        // Strings over the grammar's own characters, so that most form commands.
        let alphabet = b"%()?:_%%ENVQRSTAHX019-: fzsEY";
        let cmds = [
            "%START_TIME(",
            "%REQ(",
            "%RESP(",
            "%START_TIME%",
            "%DURATION%",
            ")%",
            ":3%",
            "%UPSTREAM_HOST%",
            "%E",
            "%f",
            "%9f",
            "%Ez",
            "%s",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let r = record();
        let e = emit(&r);
        for _ in 0..20_000 {
            let mut f = String::new();
            for _ in 0..rng.usize(0..12) {
                if rng.bool() {
                    f.push_str(cmds[rng.usize(0..cmds.len())]);
                } else {
                    f.push(alphabet[rng.usize(0..alphabet.len())] as char);
                }
            }
            if let Ok(t) = Template::compile(&f, "p") {
                let mut out = Vec::new();
                t.write_text(&r, &e, rng.bool(), &mut out);
                let mut j = Vec::new();
                t.write_json(&r, &e, &mut j);
                assert!(
                    serde_json::from_slice::<serde_json::Value>(&j).is_ok(),
                    "{f:?}"
                );
            }
        }
    }

    #[test]
    fn lines_reach_the_file_whole_and_in_order() {
        let dir = std::env::temp_dir().join(format!("pyproxy-al-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.log");
        let _ = std::fs::remove_file(&path);
        let target = LogSink::File(path.to_string_lossy().into_owned());
        let sink = Sink::get(&target, "t").unwrap();
        // The same destination is one sink.
        assert!(Arc::ptr_eq(&sink, &Sink::get(&target, "t").unwrap()));
        let bufs = LogBufs::default();
        for i in 0..1000 {
            bufs.append(&sink, |out| {
                out.extend_from_slice(format!("line {i}\n").as_bytes())
            });
        }
        bufs.flush();
        sink::wait_written();
        let text = std::fs::read_to_string(&path).unwrap();
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
