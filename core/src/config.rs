//! The config snapshot: the one value that crosses from the control plane into the engine.
//!
//! Python (`pyproxy.config`) validates an Envoy v3 bootstrap and lowers it into this shape,
//! serialised as JSON, once per change. Everything here is already validated and has Envoy's
//! defaults filled in, so the engine never re-checks user input beyond what compiling needs
//! (e.g. regex syntax). Durations are milliseconds; `0` means "disabled" where Envoy allows it.
//!
//! Field names are the Envoy field names wherever one exists, so a reader can map each field to
//! Envoy's docs. Unknown fields are rejected: a mismatch between the Python lowering and this
//! schema is a bug we want to see at once.

use serde::Deserialize;

/// A whole validated configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Listeners, each served by every worker through its own SO_REUSEPORT socket.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Upstream clusters, referenced by name from routes.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Envoy's bootstrap `overload_manager`, if configured.
    #[serde(default)]
    pub overload: Option<Overload>,
}

/// Envoy `overload_manager`: resource monitors read every `refresh_interval_ms`, and actions
/// their pressures trigger.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overload {
    /// How often the monitors are read (Envoy default 1 s).
    pub refresh_interval_ms: u64,
    /// Unique names.
    pub monitors: Vec<ResourceMonitor>,
    /// Unique names; each trigger names a monitor above.
    pub actions: Vec<OverloadAction>,
}

/// One resource monitor: its name (the stats' `overload.<name>.*`) and what it reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceMonitor {
    pub name: String,
    pub kind: MonitorKind,
}

/// What a resource monitor reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MonitorKind {
    /// `fixed_heap`: the allocated heap over `max_heap_size_bytes` (> 0).
    FixedHeap { max_heap_size_bytes: u64 },
    /// `injected_resource`: the pressure written in a file, a number from 0 to 1.
    InjectedResource { filename: String },
    /// `global_downstream_max_connections`: at most this many client connections across
    /// every worker (> 0); checked as each connection is accepted (Envoy's proactive
    /// resource), its pressure reads 0.
    GlobalDownstreamMaxConnections {
        max_active_downstream_connections: u64,
    },
}

/// One overload action and its triggers (at least one, on distinct monitors).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadAction {
    /// Envoy's action name, for the stats (`envoy.overload_actions.stop_accepting_requests`).
    pub name: String,
    pub kind: ActionKind,
    pub triggers: Vec<Trigger>,
    /// `reduce_timeouts`: the timers it scales, each at most once.
    #[serde(default)]
    pub timer_scale_factors: Vec<TimerScale>,
}

/// One timer `reduce_timeouts` scales: at the action's scale *s* it runs
/// `min + (max - min) * (1 - s)`, where max is the configured timeout.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerScale {
    pub timer: ScaledTimer,
    pub min: TimerMin,
}

/// The timers pyproxy scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScaledTimer {
    /// The connection manager's `common_http_protocol_options.idle_timeout`.
    HttpDownstreamConnectionIdle,
    /// The stream idle timeout (the route's `idle_timeout`, else `stream_idle_timeout`).
    HttpDownstreamStreamIdle,
}

/// A scaled timer's least duration.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TimerMin {
    /// `min_timeout`, in ms (no more than the timer's own).
    MinTimeoutMs(u64),
    /// `min_scale`, a fraction (0 to 1) of the timer's own.
    MinScale(f64),
}

impl TimerMin {
    /// A timer of `max_ms` at scale `s` (0 to 1).
    pub fn scaled(self, max_ms: u64, s: f32) -> u64 {
        if s <= 0.0 || max_ms == 0 {
            return max_ms;
        }
        let lo = match self {
            TimerMin::MinTimeoutMs(m) => m.min(max_ms),
            TimerMin::MinScale(f) => (max_ms as f64 * f.clamp(0.0, 1.0)) as u64,
        };
        // Never 0, which would mean no timeout at all: a saturated timer with no least
        // duration fires at once.
        (lo + ((max_ms - lo) as f64 * (1.0 - f64::from(s.min(1.0)))) as u64).max(1)
    }
}

/// The overload actions pyproxy takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// New requests get 503 `envoy overloaded` (with the action's scale as a probability).
    StopAcceptingRequests,
    /// Responses carry `connection: close` (with the scale as a probability).
    DisableHttpKeepalive,
    /// The listeners stop accepting: new connections wait in the kernel's queue.
    StopAcceptingConnections,
    /// New connections are closed as they are accepted (with the scale as a probability).
    RejectIncomingConnections,
    /// Free memory goes back to the system every 10 s while it is active.
    ShrinkHeap,
    /// Idle timers run shorter ([`TimerScale`]).
    ReduceTimeouts,
}

/// A trigger: a monitor's pressure turned into the action's scale, 0 to 1.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// The monitor's name.
    pub monitor: String,
    /// `threshold`: saturated (1) at or above `value`, else 0. `scaled`: 0 at or below
    /// `scaling_threshold`, 1 at or above `saturation_threshold`, linear between.
    pub kind: TriggerKind,
}

/// The two kinds of trigger.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TriggerKind {
    Threshold {
        value: f64,
    },
    Scaled {
        scaling_threshold: f64,
        saturation_threshold: f64,
    },
}

impl TriggerKind {
    /// The action's scale at `pressure`.
    pub fn scale(&self, pressure: f64) -> f64 {
        match *self {
            TriggerKind::Threshold { value } => {
                if pressure >= value {
                    1.0
                } else {
                    0.0
                }
            }
            TriggerKind::Scaled {
                scaling_threshold: lo,
                saturation_threshold: hi,
            } => {
                if pressure <= lo {
                    0.0
                } else if pressure >= hi {
                    1.0
                } else {
                    (pressure - lo) / (hi - lo)
                }
            }
        }
    }
}

/// One listener with its single HTTP connection manager.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Envoy `name`; unique. A listener is identified across snapshots by name.
    pub name: String,
    /// IP literal to bind (`0.0.0.0`, `127.0.0.1`, `::`).
    pub address: String,
    /// Port; `0` asks the kernel for one (shared by all workers of this listener).
    pub port: u16,
    /// Envoy `per_connection_buffer_limit_bytes` (default 1 MiB): bounds how much of a body
    /// is held per connection before reading from the other side pauses.
    #[serde(default = "default_buffer_limit")]
    pub per_connection_buffer_limit_bytes: u32,
    /// Envoy `drain_type`: which drains close this listener's connections.
    #[serde(default)]
    pub drain_type: DrainType,
    /// The `envoy.filters.network.http_connection_manager` settings.
    pub hcm: HttpConnectionManager,
}

/// Envoy `Listener.DrainType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DrainType {
    /// Every drain: the server's (shutdown, `/drain_listeners`), the listener's removal, and a
    /// failed health check (`/healthcheck/fail`).
    #[default]
    Default,
    /// Not a failed health check.
    ModifyOnly,
}

fn default_buffer_limit() -> u32 {
    1024 * 1024
}

/// Envoy `HttpProtocolOptions.HeadersWithUnderscoresAction`: what a request header whose name
/// has an `_` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnderscoresAction {
    /// Passed on.
    #[default]
    Allow,
    /// The request is refused with a 400 and the connection closed
    /// (`http1.requests_rejected_with_underscores_in_headers`).
    RejectRequest,
    /// The header is dropped (`http1.dropped_headers_with_underscores`, once per header).
    DropHeader,
}

/// Envoy's `path_with_escaped_slashes_action`: what `%2F` and `%5C` (either case) in a path get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EscapedSlashes {
    /// Left as they are (Envoy's default).
    #[default]
    KeepUnchanged,
    /// The request is refused (400).
    RejectRequest,
    /// Unescaped; the client is sent a 307 to the path that makes (once normalized).
    UnescapeAndRedirect,
    /// Unescaped, and the request goes on.
    UnescapeAndForward,
}

fn default_drain_timeout_ms() -> u64 {
    5_000
}

fn default_max_headers_count() -> u32 {
    crate::http1::head::MAX_HEADERS as u32
}

/// HTTP connection manager settings (Envoy `HttpConnectionManager`), defaults as Envoy's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnectionManager {
    /// Stats prefix: stats are `http.<stat_prefix>.*`.
    pub stat_prefix: String,
    /// Value of the `server` response header (Envoy default `envoy`).
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// `OVERWRITE` (default), `APPEND_IF_ABSENT` or `PASS_THROUGH`.
    #[serde(default = "default_server_header_transformation")]
    pub server_header_transformation: String,
    /// Envoy `use_remote_address` (default false).
    #[serde(default)]
    pub use_remote_address: bool,
    /// Envoy `xff_num_trusted_hops` (default 0).
    #[serde(default)]
    pub xff_num_trusted_hops: u32,
    /// Envoy `skip_xff_append` (default false).
    #[serde(default)]
    pub skip_xff_append: bool,
    /// Envoy `generate_request_id` (default true).
    #[serde(default = "default_true")]
    pub generate_request_id: bool,
    /// Envoy `preserve_external_request_id` (default false).
    #[serde(default)]
    pub preserve_external_request_id: bool,
    /// Envoy `max_request_headers_kb` (default 60).
    #[serde(default = "default_max_headers_kb")]
    pub max_request_headers_kb: u32,
    /// Envoy `stream_idle_timeout` in ms (default 300000; 0 disables).
    #[serde(default = "default_stream_idle_ms")]
    pub stream_idle_timeout_ms: u64,
    /// Envoy `request_headers_timeout` in ms (default 0: disabled).
    #[serde(default)]
    pub request_headers_timeout_ms: u64,
    /// Envoy `common_http_protocol_options.max_stream_duration` in ms (default 0: none): a
    /// forwarded request's whole life, from its first byte.
    #[serde(default)]
    pub max_stream_duration_ms: u64,
    /// Envoy `request_timeout` in ms (default 0: disabled).
    #[serde(default)]
    pub request_timeout_ms: u64,
    /// Envoy `common_http_protocol_options.idle_timeout` in ms (default 3600000; 0 disables).
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    /// Envoy `common_http_protocol_options.max_requests_per_connection` (0: unlimited): the
    /// response to the request that reaches it closes the connection.
    #[serde(default)]
    pub max_requests_per_connection: u32,
    /// Envoy `common_http_protocol_options.max_connection_duration` in ms (0: none): once a
    /// connection is this old, its next response closes it, and an idle one closes after
    /// `drain_timeout_ms`.
    #[serde(default)]
    pub max_connection_duration_ms: u64,
    /// Envoy `drain_timeout` in ms (default 5000): how long a connection whose
    /// `max_connection_duration` is over stays open, idle, for a last request.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Envoy `common_http_protocol_options.max_headers_count` (default 100): a request with
    /// more headers gets a 431.
    #[serde(default = "default_max_headers_count")]
    pub max_headers_count: u32,
    /// Envoy `common_http_protocol_options.headers_with_underscores_action`.
    #[serde(default)]
    pub headers_with_underscores_action: UnderscoresAction,
    /// Envoy `strip_any_host_port` (default false): the `host` loses its port before routing.
    #[serde(default)]
    pub strip_any_host_port: bool,
    /// Envoy `strip_matching_host_port` (default false): only a port that is the listener's.
    #[serde(default)]
    pub strip_matching_host_port: bool,
    /// Envoy `normalize_path` (default false): RFC 3986 dot segments and escapes, as Envoy.
    #[serde(default)]
    pub normalize_path: bool,
    /// Envoy `merge_slashes` (default false).
    #[serde(default)]
    pub merge_slashes: bool,
    /// Envoy `path_with_escaped_slashes_action` (default `KEEP_UNCHANGED`).
    #[serde(default)]
    pub path_with_escaped_slashes_action: EscapedSlashes,
    /// Envoy `proxy_100_continue` (default false: answer `100 Continue` locally).
    #[serde(default)]
    pub proxy_100_continue: bool,
    /// Envoy `via` (default empty: none): appended to the `via` of requests and responses.
    #[serde(default)]
    pub via: String,
    /// Envoy `always_set_request_id_in_response` (default false): every response says the
    /// request's `x-request-id`, proxied or local (not a codec refusal).
    #[serde(default)]
    pub always_set_request_id_in_response: bool,
    /// Envoy `upgrade_configs`: the upgrade types (lower-case) forwarded unless a route says
    /// otherwise; an entry with `enabled: false` is left out.
    #[serde(default)]
    pub upgrade_types: Vec<String>,
    /// Router filter `suppress_envoy_headers` (default false).
    #[serde(default)]
    pub suppress_envoy_headers: bool,
    /// The inline `route_config`.
    pub route_config: RouteConfiguration,
    /// Envoy `access_log`: each request is written to every entry whose filter takes it.
    #[serde(default)]
    pub access_log: Vec<AccessLog>,
}

/// One access log (Envoy `config.accesslog.v3.AccessLog` with a file, stdout or stderr
/// logger).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// Where the lines go.
    pub sink: LogSink,
    /// How a line is made (the control plane fills in Envoy's default format when the config
    /// gives none).
    pub format: LogFormat,
    /// Which requests are logged (all, without one).
    #[serde(default)]
    pub filter: Option<LogFilter>,
    /// Where the format and the destination are in the user's config, for errors (else the
    /// snapshot's own path is named).
    #[serde(default)]
    pub format_at: String,
    #[serde(default)]
    pub sink_at: String,
}

/// Where an access log writes, externally tagged: `{"file": "/var/log/a.log"}`, `"stdout"`,
/// `"stderr"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LogSink {
    File(String),
    Stdout,
    Stderr,
}

/// Envoy `SubstitutionFormatString`: a text line or a JSON object per request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LogFormat {
    /// The line, commands and all; nothing is added (Envoy's default format ends in `\n`).
    Text {
        text: String,
        #[serde(default)]
        omit_empty_values: bool,
    },
    /// A JSON object whose string values may hold commands; written on one line.
    Json {
        json: serde_json::Map<String, serde_json::Value>,
        #[serde(default)]
        omit_empty_values: bool,
    },
}

/// Envoy `AccessLogFilter`, externally tagged by its Envoy field name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LogFilter {
    /// The response code compared with a value.
    StatusCode(Comparison),
    /// The request's duration in ms compared with a value.
    Duration(Comparison),
    /// Not a health check request (pyproxy answers none: always true).
    NotHealthCheck,
    /// A request header matches.
    Header(HeaderMatcher),
    /// Any of these response flags is set (any flag at all, when empty).
    ResponseFlag(Vec<String>),
    And(Vec<LogFilter>),
    Or(Vec<LogFilter>),
}

/// Envoy `ComparisonFilter`: `op` and the runtime value's `default_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    pub op: ComparisonOp,
    pub value: u64,
}

/// Envoy `ComparisonFilter.Op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ComparisonOp {
    Ge,
    Eq,
    Le,
    Ne,
}

impl HttpConnectionManager {
    /// The path settings, together.
    #[inline]
    pub fn path_options(&self) -> crate::http1::path::PathOptions {
        crate::http1::path::PathOptions {
            normalize: self.normalize_path,
            merge_slashes: self.merge_slashes,
            escaped_slashes: self.path_with_escaped_slashes_action,
        }
    }
}

fn default_server_name() -> String {
    "envoy".to_string()
}
fn default_server_header_transformation() -> String {
    "OVERWRITE".to_string()
}
fn default_true() -> bool {
    true
}
fn default_max_headers_kb() -> u32 {
    60
}
fn default_stream_idle_ms() -> u64 {
    300_000
}
fn default_idle_ms() -> u64 {
    3_600_000
}

/// A header to add (Envoy `HeaderValueOption`, lowered).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    /// Lower-case header name.
    pub key: String,
    /// Value, with Envoy's `%...%` commands (router/format.rs).
    pub value: String,
    /// `true`: append another value (`APPEND_IF_EXISTS_OR_ADD`, Envoy's default);
    /// `false`: replace existing values (`OVERWRITE_IF_EXISTS_OR_ADD`).
    #[serde(default = "default_true")]
    pub append: bool,
    /// Envoy `keep_empty_value`: add the header even when its value is empty.
    #[serde(default)]
    pub keep_empty_value: bool,
}

/// The four header-manipulation lists shared by route config, virtual host and route.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderMutations {
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    /// Lower-case header names.
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Lower-case header names.
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
}

/// Envoy `RouteConfiguration`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfiguration {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    #[serde(flatten)]
    pub headers: HeaderMutations,
}

/// Envoy `VirtualHost`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    /// Lower-case domains: exact (`example.com`, `example.com:8080`), suffix wildcard
    /// (`*.example.com`), prefix wildcard (`example.*`) or `*`.
    pub domains: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Envoy `require_tls: ALL` (`NONE` is false).
    #[serde(default)]
    pub require_tls: bool,
    #[serde(flatten)]
    pub headers: HeaderMutations,
}

/// Envoy `Route`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "match")]
    pub route_match: RouteMatch,
    pub action: RouteAction,
    #[serde(flatten)]
    pub headers: HeaderMutations,
}

/// Envoy `RouteMatch`: exactly one path specifier plus optional header/query matchers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Envoy `case_sensitive` (default true); applies to `prefix` and `path`.
    #[serde(default = "default_true")]
    pub case_sensitive: bool,
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    #[serde(default)]
    pub query_parameters: Vec<QueryParameterMatcher>,
}

/// The path specifier, externally tagged: `{"prefix": "/"}`, `{"path": "/x"}`,
/// `{"safe_regex": "^/v[0-9]+/.*"}` (the regex must match the whole path, as Envoy's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathMatch {
    Prefix(String),
    Path(String),
    SafeRegex(String),
}

/// A string test, externally tagged, shared by header and query matchers.
/// `{"exact": "v"}`, `{"prefix": "v"}`, `{"suffix": "v"}`, `{"contains": "v"}`,
/// `{"safe_regex": "re"}` (whole-value match), `{"present": true}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ValueMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    SafeRegex(String),
    Present(bool),
}

/// Envoy `HeaderMatcher` (name lower-case).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcher {
    pub name: String,
    #[serde(rename = "match")]
    pub value_match: ValueMatch,
    #[serde(default)]
    pub invert_match: bool,
    /// Envoy `string_match.ignore_case` (default false).
    #[serde(default)]
    pub ignore_case: bool,
    /// Envoy `treat_missing_header_as_empty` (default false).
    #[serde(default)]
    pub treat_missing_header_as_empty: bool,
}

/// Envoy `QueryParameterMatcher`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterMatcher {
    pub name: String,
    #[serde(rename = "match")]
    pub value_match: ValueMatch,
    #[serde(default)]
    pub ignore_case: bool,
}

/// What a matched route does, externally tagged: `{"route": {...}}`, `{"redirect": {...}}`,
/// `{"direct_response": {...}}`. (Read once per config: the forward's size does not matter.)
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[allow(clippy::large_enum_variant)]
pub enum RouteAction {
    Route(ForwardAction),
    Redirect(RedirectAction),
    DirectResponse(DirectResponseAction),
}

/// Envoy `RouteAction` (forward to a cluster).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAction {
    /// Exactly one of `cluster` and `weighted_clusters` is set.
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub weighted_clusters: Option<Vec<WeightedCluster>>,
    /// Envoy `cluster_header` (lower-case): the cluster is the one this request header names.
    #[serde(default)]
    pub cluster_header: Option<String>,
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    /// Envoy route `regex_rewrite`: every match of `regex` in the path (not the query) is
    /// replaced by `substitution` (RE2's: `\N` a group, `\\` a backslash).
    #[serde(default)]
    pub regex_rewrite: Option<RegexRewrite>,
    #[serde(default)]
    pub host_rewrite_literal: Option<String>,
    #[serde(default)]
    pub auto_host_rewrite: bool,
    /// Envoy route `timeout` in ms (default 15000; 0 disables).
    #[serde(default = "default_route_timeout_ms")]
    pub timeout_ms: u64,
    /// Envoy route `idle_timeout` in ms: the stream idle timeout once this route is chosen
    /// (none: the connection manager's `stream_idle_timeout`; 0 disables).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Envoy route `max_stream_duration.max_stream_duration` in ms, over the connection
    /// manager's (none: the connection manager's; 0 disables).
    #[serde(default)]
    pub max_stream_duration_ms: Option<u64>,
    /// Envoy route `priority: HIGH`: its requests count against the cluster's `HIGH` circuit
    /// breakers and use connection pools of their own.
    #[serde(default)]
    pub high_priority: bool,
    /// Envoy route `upgrade_configs`: the route's own say on each upgrade type (lower-case),
    /// over the connection manager's.
    #[serde(default)]
    pub upgrade_configs: Vec<RouteUpgrade>,
    /// Envoy route `hash_policy`: the request's hash for a hashing load balancer.
    #[serde(default)]
    pub hash_policy: Vec<HashPolicyConfig>,
    /// Envoy `retry_policy`: the route's, else its virtual host's.
    #[serde(default)]
    pub retry_policy: Option<RetryPolicyConfig>,
    /// The route's (else its virtual host's) `per_request_buffer_limit_bytes`: how much of a
    /// request body is kept for a retry (none: the listener's buffer limit).
    #[serde(default)]
    pub per_request_buffer_limit_bytes: Option<u32>,
    /// The virtual host's `include_request_attempt_count`: `x-envoy-attempt-count` upstream.
    #[serde(default)]
    pub include_request_attempt_count: bool,
    /// The virtual host's `include_attempt_count_in_response`: `x-envoy-attempt-count` in the
    /// response.
    #[serde(default)]
    pub include_attempt_count_in_response: bool,
}

/// Envoy's `RetryPolicy`, as the control plane lowered it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicyConfig {
    /// The `retry_on` conditions, one per entry (`5xx`, `reset`, ...).
    #[serde(default)]
    pub retry_on: Vec<String>,
    #[serde(default = "one")]
    pub num_retries: u32,
    /// 0: none (the route timeout alone).
    #[serde(default)]
    pub per_try_timeout_ms: u64,
    /// `per_try_idle_timeout` in ms (0: none): a try whose upstream sends nothing for this
    /// long, once the request is in, ends.
    #[serde(default)]
    pub per_try_idle_timeout_ms: u64,
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    #[serde(default = "default_retry_base_ms")]
    pub base_interval_ms: u64,
    /// Default: ten times the base.
    #[serde(default)]
    pub max_interval_ms: Option<u64>,
    /// `retriable_headers`: a response matching any is tried again (`retriable-headers`).
    #[serde(default)]
    pub retriable_headers: Vec<HeaderMatcher>,
    /// `retriable_request_headers`: only a request matching one of them is tried again.
    #[serde(default)]
    pub retriable_request_headers: Vec<HeaderMatcher>,
    /// `retry_host_predicate` `previous_hosts`: a retry avoids the hosts already tried.
    #[serde(default)]
    pub previous_hosts: bool,
    /// How many times a retry's host is picked again when `previous_hosts` refuses it.
    #[serde(default)]
    pub host_selection_retry_max_attempts: u32,
}

fn one() -> u32 {
    1
}

fn default_retry_base_ms() -> u64 {
    25
}

/// A made-up cookie's extra attribute.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieAttribute {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// One entry of a route's `hash_policy`: exactly one source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashPolicyConfig {
    /// `header.header_name`.
    #[serde(default)]
    pub header: Option<String>,
    /// `cookie.name`.
    #[serde(default)]
    pub cookie: Option<String>,
    /// `cookie.ttl` in whole seconds: a request without the cookie gets one made up.
    #[serde(default)]
    pub cookie_ttl_s: Option<u64>,
    /// `cookie.path`.
    #[serde(default)]
    pub cookie_path: Option<String>,
    /// `cookie.attributes`.
    #[serde(default)]
    pub cookie_attributes: Vec<CookieAttribute>,
    /// `connection_properties.source_ip`.
    #[serde(default)]
    pub source_ip: bool,
    /// `query_parameter.name`.
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub terminal: bool,
}

/// A route's `regex_rewrite`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    pub regex: String,
    #[serde(default)]
    pub substitution: String,
}

/// One entry of a route's `upgrade_configs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteUpgrade {
    /// The type, lower-case (matched in any case).
    pub upgrade_type: String,
    /// Whether the route forwards it (false refuses it, whatever the connection manager says).
    pub enabled: bool,
}

fn default_route_timeout_ms() -> u64 {
    15_000
}

/// One entry of Envoy `weighted_clusters.clusters`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
    #[serde(flatten)]
    pub headers: HeaderMutations,
}

/// Envoy `RedirectAction`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RedirectAction {
    #[serde(default)]
    pub scheme_redirect: Option<String>,
    #[serde(default)]
    pub host_redirect: Option<String>,
    #[serde(default)]
    pub port_redirect: Option<u16>,
    #[serde(default)]
    pub path_redirect: Option<String>,
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default = "default_redirect_code")]
    pub response_code: u16,
    #[serde(default)]
    pub strip_query: bool,
}

fn default_redirect_code() -> u16 {
    301
}

/// Envoy `DirectResponseAction`; `body` is the inline body (`inline_string`), if any.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseAction {
    pub status: u16,
    #[serde(default)]
    pub body: Option<String>,
}

/// Envoy `Cluster`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// `STATIC` or `STRICT_DNS`.
    #[serde(rename = "type")]
    pub discovery: String,
    /// Envoy `connect_timeout` in ms (default 5000).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// `ROUND_ROBIN` (default), `LEAST_REQUEST` or `RANDOM`.
    #[serde(default = "default_lb_policy")]
    pub lb_policy: String,
    /// Envoy `least_request_lb_config.choice_count` (default 2).
    #[serde(default = "default_choice_count")]
    pub choice_count: u32,
    /// Envoy `ring_hash_lb_config.minimum_ring_size` (default 1024).
    #[serde(default = "default_min_ring")]
    pub minimum_ring_size: u64,
    /// Envoy `ring_hash_lb_config.maximum_ring_size` (default 8M).
    #[serde(default = "default_max_ring")]
    pub maximum_ring_size: u64,
    /// Envoy `maglev_lb_config.table_size` (default 65537, a prime).
    #[serde(default = "default_maglev_table")]
    pub maglev_table_size: u64,
    /// Envoy `per_connection_buffer_limit_bytes` (default 1 MiB).
    #[serde(default = "default_buffer_limit")]
    pub per_connection_buffer_limit_bytes: u32,
    /// Envoy `max_requests_per_connection` (0: unlimited).
    #[serde(default)]
    pub max_requests_per_connection: u32,
    /// Envoy `common_http_protocol_options.max_headers_count` (default 100): a response with
    /// more headers is a protocol error (502).
    #[serde(default = "default_max_headers_count")]
    pub max_headers_count: u32,
    /// Envoy `common_http_protocol_options.idle_timeout` for upstream connections in ms
    /// (default 3600000; 0 disables).
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    /// Envoy `dns_refresh_rate` in ms (default 5000), for `STRICT_DNS`.
    #[serde(default = "default_dns_refresh_ms")]
    pub dns_refresh_rate_ms: u64,
    /// Envoy `dns_lookup_family`: `AUTO` (default; Envoy's V4_PREFERRED), `V4_ONLY`,
    /// `V6_ONLY`, `V4_PREFERRED`, `ALL`.
    #[serde(default = "default_lookup_family")]
    pub dns_lookup_family: String,
    /// Flattened `load_assignment.endpoints[*].lb_endpoints[*]`.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// `circuit_breakers` thresholds of the `DEFAULT` priority (Envoy's defaults when absent).
    #[serde(default)]
    pub circuit_breakers: Thresholds,
    /// `circuit_breakers` thresholds of the `HIGH` priority.
    #[serde(default)]
    pub circuit_breakers_high: Thresholds,
    /// Envoy `health_checks[0]`: the cluster's active health check, if any.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Envoy `common_lb_config.healthy_panic_threshold` in percent (default 50): below this
    /// share of healthy hosts the balancer picks among all of them.
    #[serde(default = "default_panic_threshold")]
    pub healthy_panic_threshold: f64,
    /// Envoy `outlier_detection`: passive health checking, if any.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
}

/// Envoy `cluster.v3.OutlierDetection`, durations in ms; each field defaults as in Envoy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses (and, unless split, local failures) that eject a host.
    pub consecutive_5xx: u32,
    /// Consecutive 502, 503 and 504 responses that eject a host.
    pub consecutive_gateway_failure: u32,
    /// Consecutive local-origin failures (with `split_external_local_origin_errors`).
    pub consecutive_local_origin_failure: u32,
    /// How often ejected hosts are brought back and success rates are computed.
    pub interval_ms: u64,
    /// A host's ejection time, times the number of its ejections in a row.
    pub base_ejection_time_ms: u64,
    /// The longest ejection time.
    pub max_ejection_time_ms: u64,
    /// A random part up to this added to each ejection time.
    pub max_ejection_time_jitter_ms: u64,
    /// The most hosts ejected at once, in percent of the cluster's.
    pub max_ejection_percent: u32,
    /// Percent of detected ejections enforced, by kind.
    pub enforcing_consecutive_5xx: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub enforcing_success_rate: u32,
    pub enforcing_local_origin_success_rate: u32,
    pub enforcing_failure_percentage: u32,
    pub enforcing_failure_percentage_local_origin: u32,
    /// Success rate: hosts with enough requests needed, requests a host needs in an
    /// interval, and the standard deviation factor in thousandths.
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    pub success_rate_stdev_factor: u32,
    /// Failure percentage: the percent that ejects, hosts needed, requests a host needs.
    pub failure_percentage_threshold: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    /// Local-origin failures (connect failures, resets, timeouts) counted apart from the
    /// upstream's responses.
    pub split_external_local_origin_errors: bool,
    /// An ejected host that passes an active health check is brought back.
    pub successful_active_health_check_uneject_host: bool,
    /// One host may be ejected whatever `max_ejection_percent` says.
    pub always_eject_one_host: bool,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_time_ms: 300_000,
            max_ejection_time_jitter_ms: 0,
            max_ejection_percent: 10,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            split_external_local_origin_errors: false,
            successful_active_health_check_uneject_host: true,
            always_eject_one_host: false,
        }
    }
}

fn default_panic_threshold() -> f64 {
    50.0
}

/// Envoy `core.v3.HealthCheck`, durations in ms and defaults filled in by the loader.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub timeout_ms: u64,
    pub interval_ms: u64,
    #[serde(default)]
    pub initial_jitter_ms: u64,
    #[serde(default)]
    pub interval_jitter_ms: u64,
    #[serde(default)]
    pub interval_jitter_percent: u32,
    /// Default: `interval_ms`.
    #[serde(default)]
    pub unhealthy_interval_ms: Option<u64>,
    /// Default: the unhealthy interval.
    #[serde(default)]
    pub unhealthy_edge_interval_ms: Option<u64>,
    /// Default: `interval_ms`.
    #[serde(default)]
    pub healthy_edge_interval_ms: Option<u64>,
    /// Until the cluster has made a connection for a request (default 60 s).
    #[serde(default = "default_no_traffic_ms")]
    pub no_traffic_interval_ms: u64,
    /// The no-traffic interval of a healthy host (default: `no_traffic_interval_ms`).
    #[serde(default)]
    pub no_traffic_healthy_interval_ms: Option<u64>,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    #[serde(default = "default_true")]
    pub reuse_connection: bool,
    #[serde(default)]
    pub http: Option<HttpHealthCheck>,
    #[serde(default)]
    pub tcp: Option<TcpHealthCheck>,
}

fn default_check_method() -> String {
    "GET".to_string()
}

fn default_no_traffic_ms() -> u64 {
    60_000
}

/// Envoy `HealthCheck.HttpHealthCheck`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    pub path: String,
    /// `GET` (default) or `HEAD`.
    #[serde(default = "default_check_method")]
    pub method: String,
    /// The `host` header (default: the cluster's name).
    #[serde(default)]
    pub host: Option<String>,
    /// `expected_statuses` as `[start, end)` ranges (default: 200 only).
    #[serde(default)]
    pub expected: Vec<(u16, u16)>,
    /// `retriable_statuses` as `[start, end)` ranges: such a response counts as a failure
    /// toward `unhealthy_threshold` rather than at once.
    #[serde(default)]
    pub retriable: Vec<(u16, u16)>,
    /// `request_headers_to_add`.
    #[serde(default)]
    pub add: Vec<HeaderAdd>,
    /// `request_headers_to_remove` (lower-case names).
    #[serde(default)]
    pub remove: Vec<String>,
}

/// One header a health check adds (lower-case name).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderAdd {
    pub name: String,
    pub value: String,
    /// `OVERWRITE_IF_EXISTS_OR_ADD`: replaces a header of that name (else joins it).
    #[serde(default)]
    pub overwrite: bool,
}

/// Envoy `HealthCheck.TcpHealthCheck`: bytes to send, and blocks that must come back, in
/// order (empty: a connect is the check).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {
    #[serde(default)]
    pub send: Vec<u8>,
    #[serde(default)]
    pub receive: Vec<Vec<u8>>,
}

/// One priority's `circuit_breakers.thresholds` entry, Envoy's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    pub max_connections: u64,
    pub max_pending_requests: u64,
    pub max_requests: u64,
    pub max_retries: u64,
    /// Whether the `remaining_*` gauges are kept.
    pub track_remaining: bool,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            track_remaining: false,
        }
    }
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_lb_policy() -> String {
    "ROUND_ROBIN".to_string()
}
fn default_maglev_table() -> u64 {
    65537
}

fn default_min_ring() -> u64 {
    1024
}

fn default_max_ring() -> u64 {
    8 << 20
}

fn default_choice_count() -> u32 {
    2
}
fn default_dns_refresh_ms() -> u64 {
    5_000
}
fn default_lookup_family() -> String {
    "AUTO".to_string()
}

/// One `lb_endpoint`: an IP literal for `STATIC`, a host name (or IP) for `STRICT_DNS`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    /// Envoy `load_balancing_weight` (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl Snapshot {
    /// Parses a snapshot from its JSON form.
    pub fn from_json(bytes: &[u8]) -> Result<Snapshot, crate::Error> {
        serde_json::from_slice(bytes)
            .map_err(|e| crate::Error::config(format!("invalid config snapshot: {e}")))
    }
}
