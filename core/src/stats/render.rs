//! Renders a merged `StatsSnapshot` byte-for-byte the way Envoy 1.40's admin does:
//! `/stats` (text), `/stats?format=json` and `/stats/prometheus`.
//!
//! Dashboards, scrapers and scripts written against Envoy parse these outputs, so every
//! detail below (ordering, float formatting, tag order) was checked against a real Envoy 1.40;
//! the captures live in `core/tests/data/envoy_stats/` and the tests at the bottom replay them.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use regex::Regex;

use super::model::{HistValue, StatKind, StatsSnapshot, BUCKETS, QUANTILES};

/// Which admin endpoint's format to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `/stats`: `name: value` lines, then one line of quantiles per histogram.
    Text,
    /// `/stats?format=json`.
    Json,
    /// `/stats/prometheus`: tag-extracted names, `# TYPE` lines, cumulative buckets.
    Prometheus,
}

/// What to render and which stats to keep (Envoy's `filter` and `usedonly` query parameters).
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions<'a> {
    /// Output format.
    pub format: Format,
    /// Keep only stats whose full dotted name contains a match (RE2 partial match in Envoy).
    pub filter: Option<&'a Regex>,
    /// Drop stats never written and histograms without samples.
    pub used_only: bool,
}

/// Renders `snapshot` in the requested format. `snapshot.stats` and `snapshot.histograms` must
/// each be sorted by name (byte order), which is the order Envoy's text and JSON use.
pub fn render(snapshot: &StatsSnapshot, opts: &RenderOptions) -> String {
    let keep = |name: &str, used: bool| {
        (!opts.used_only || used) && opts.filter.is_none_or(|re| re.is_match(name))
    };
    let stats: Vec<_> = snapshot
        .stats
        .iter()
        .filter(|s| keep(&s.name, s.used))
        .collect();
    let hists: Vec<_> = snapshot
        .histograms
        .iter()
        .filter(|h| keep(&h.name, h.used()))
        .collect();
    let mut out = String::with_capacity(64 * (stats.len() + 4 * hists.len()));
    match opts.format {
        Format::Text => {
            for s in &stats {
                let _ = writeln!(out, "{}: {}", s.name, s.value);
            }
            for h in &hists {
                render_text_histogram(&mut out, h);
            }
        }
        Format::Json => render_json(&mut out, &stats, &hists),
        Format::Prometheus => render_prometheus(&mut out, &stats, &hists),
    }
    out
}

// Writing into a `String` cannot fail, so the `fmt::Result`s below are discarded (`let _ =`).

/// Envoy's supported quantiles as fractions, exactly as Envoy spells them: `99.9 / 100` is not
/// the double `0.999`, and the rank below is `ceil(q * count)`, so the constants must match.
const QUANTILE_FRACTIONS: [f64; QUANTILES.len()] =
    [0.0, 0.25, 0.5, 0.75, 0.90, 0.95, 0.99, 0.995, 0.999, 1.0];

/// A histogram bin in libcircllhist's terms: `count` samples somewhere in `[left, left+width)`.
#[derive(Debug, Clone, Copy)]
struct Bin {
    left: f64,
    width: f64,
    count: u64,
}

/// Quantiles of the samples in `bins` (ascending), or `None` without samples.
///
/// This is the rule Envoy 1.40's libcircllhist applies, reverse-engineered from its output and
/// checked digit for digit in the tests: the q-quantile is the sample of 1-based rank
/// `max(1, ceil(q * n))`; if that is the j-th of the c samples of its bin, it is reported at
/// `left + j / (c + 1) * width`, i.e. the c samples are assumed evenly spread inside the bin.
fn quantiles(bins: &[Bin]) -> Option<[f64; QUANTILES.len()]> {
    let total: u64 = bins.iter().map(|b| b.count).sum();
    if total == 0 {
        return None;
    }
    let mut out = [f64::NAN; QUANTILES.len()];
    for (slot, q) in out.iter_mut().zip(QUANTILE_FRACTIONS) {
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut before = 0u64;
        for bin in bins.iter().filter(|b| b.count > 0) {
            if rank <= before + bin.count {
                let j = (rank - before) as f64;
                *slot = bin.left + j / (bin.count + 1) as f64 * bin.width;
                break;
            }
            before += bin.count;
        }
    }
    Some(out)
}

/// Maps our coarse buckets onto bins for `quantiles`. This is the approximation: Envoy keeps
/// ~90 log-linear bins per decade (two significant digits) while we only keep `BUCKETS`, so a
/// sample is only known to lie in `(BUCKETS[i-1], BUCKETS[i]]` and the quantile is interpolated
/// linearly across that whole range. Two ends are exact rather than interpolated: Envoy records
/// integers (`Histogram::recordValue(uint64_t)`), so the first bucket (`<= 0.5`) holds only
/// zeros, which Envoy reports as exactly `0`; the overflow bucket has no upper bound, so its
/// samples are reported at the last bound.
fn bins_of(h: &HistValue) -> Vec<Bin> {
    let bin = |left, width, count| Bin { left, width, count };
    let last = BUCKETS[BUCKETS.len() - 1];
    let to_bin = |(i, &count): (usize, &u64)| match i {
        0 => bin(0.0, 0.0, count),
        i if i < BUCKETS.len() => bin(BUCKETS[i - 1], BUCKETS[i] - BUCKETS[i - 1], count),
        _ => bin(last, 0.0, count),
    };
    h.buckets.iter().enumerate().map(to_bin).collect()
}

/// `name: P0(nan,x) P25(nan,y) ...`; the interval half is always `nan`, which is what Envoy
/// prints when no sample arrived since the last flush: we only keep cumulative data.
fn render_text_histogram(out: &mut String, h: &HistValue) {
    out.push_str(&h.name);
    out.push(':');
    match quantiles(&bins_of(h)).filter(|_| h.used()) {
        None => out.push_str(" No recorded values"),
        Some(values) => {
            for (p, v) in QUANTILES.iter().zip(values) {
                let _ = write!(out, " P{}(nan,{})", fmt_shortest(*p), fmt_shortest(v));
            }
        }
    }
    out.push('\n');
}

fn render_json(out: &mut String, stats: &[&super::model::StatValue], hists: &[&HistValue]) {
    out.push_str("{\"stats\":[");
    for (i, s) in stats.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        push_json_string(out, &s.name);
        let _ = write!(out, ",\"value\":{}}}", s.value);
    }
    // Envoy appends the histograms as one extra element of "stats", and only when at least one
    // histogram survived the filters.
    if !hists.is_empty() {
        if !stats.is_empty() {
            out.push(',');
        }
        out.push_str("{\"histograms\":{\"supported_quantiles\":[");
        for (i, p) in QUANTILES.iter().enumerate() {
            out.push_str(if i > 0 { "," } else { "" });
            out.push_str(&fmt_shortest(*p));
        }
        out.push_str("],\"computed_quantiles\":[");
        for (i, h) in hists.iter().enumerate() {
            out.push_str(if i > 0 { ",{\"name\":" } else { "{\"name\":" });
            push_json_string(out, &h.name);
            out.push_str(",\"values\":[");
            let values = quantiles(&bins_of(h)).filter(|_| h.used());
            for i in 0..QUANTILES.len() {
                let cumulative = match values.map(|v| v[i]).filter(|v| v.is_finite()) {
                    Some(v) => fmt_shortest(v),
                    None => "null".to_owned(),
                };
                out.push_str(if i > 0 { "," } else { "" });
                let _ = write!(out, "{{\"cumulative\":{cumulative},\"interval\":null}}");
            }
            out.push_str("]}");
        }
        out.push_str("]}}");
    }
    out.push_str("]}");
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A double the way fmt's `{}` prints it (what Envoy uses for quantiles): shortest round-trip
/// digits, `nan`/`inf`, and an exponent only below 1e-4 or from 1e16 up.
fn fmt_shortest(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "nan"
        } else if v > 0.0 {
            "inf"
        } else {
            "-inf"
        }
        .to_owned();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        return c_exponent(&format!("{v:e}"));
    }
    format!("{v}")
}

/// A double the way fmt's `{:.32g}` prints it (Envoy's prometheus `le` and `_sum` values).
fn fmt_g32(v: f64) -> String {
    if !v.is_finite() || v == 0.0 {
        return fmt_shortest(v);
    }
    let sci = format!("{v:.31e}"); // Rust rounds exactly, like fmt: d.ddd…e<exp>
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..32).contains(&exp) {
        return c_exponent(&sci);
    }
    let (sign, digits) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest.replace('.', "")),
        None => ("", mantissa.replace('.', "")),
    };
    let mut s = String::from(sign);
    if exp < 0 {
        s.push_str("0.");
        s.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
        s.push_str(&digits);
    } else {
        let (int, frac) = digits.split_at((exp as usize + 1).min(digits.len()));
        s.push_str(int);
        s.push('.');
        s.push_str(frac);
    }
    let trimmed = s.trim_end_matches('0').trim_end_matches('.');
    trimmed.to_owned()
}

/// Rewrites Rust's `1.5e-5` as C's `1.5e-05` (trailing zeros of the mantissa dropped, as %g does).
fn c_exponent(rust_sci: &str) -> String {
    let (mantissa, exp) = rust_sci.split_once('e').unwrap_or((rust_sci, "0"));
    let mantissa = if mantissa.contains('.') {
        mantissa.trim_end_matches('0').trim_end_matches('.')
    } else {
        mantissa
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    format!(
        "{mantissa}e{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.abs()
    )
}

// ---------------------------------------------------------------------------------------------
// Prometheus

/// Envoy's default tag extractors (`source/common/config/well_known_names.cc`, Envoy 1.40), in
/// Envoy's order: all regex ones, then all token ones. Each regex captures the text to cut from
/// the name as group 1 and the tag value as group 2. Patterns use ASCII classes where RE2's
/// `\d`/`\w` are ASCII-only. Add a family by adding a row in the right position. Not yet here:
/// `envoy.ssl_curve`, `envoy.ssl_sigalg`, `envoy.ssl_version` (their patterns add a capture
/// group, so they need checking against a TLS listener first).
const REGEX_EXTRACTORS: &[(&str, &str, Option<&str>)] = &[
    // (tag name, regex, value that must not be extracted)
    ("envoy.response_code", r"_rq(_([0-9]{3}))$", None),
    ("envoy.response_code_class", r"_rq_(([0-9]))xx$", None),
    (
        "envoy.dynamo_partition_id",
        r"^http\.<V>\.dynamodb\.table\.<V>\.capacity\.<V>(\.__partition_id=([0-9A-Za-z_]{7}))$",
        None,
    ),
    (
        "envoy.dynamo_operation",
        r"^http\.<V>\.dynamodb.(?:operation|table\.<V>\.capacity)(\.(<V>))(?:\.|$)",
        None,
    ),
    (
        "envoy.dynamo_table",
        r"^http\.<V>\.dynamodb.(?:table|error)\.((<V>)\.)",
        None,
    ),
    (
        "envoy.ssl_cipher",
        r"^listener\..*?\.ssl\.ciphers(\.([0-9A-Za-z_-]+))$",
        None,
    ),
    (
        "envoy.ssl_cipher_suite",
        r"^cluster\.<V>\.ssl\.ciphers(\.([0-9A-Za-z_-]+))$",
        None,
    ),
    (
        "envoy.http_conn_manager_prefix",
        r"^listener\..*?\.http\.((<V>)\.)",
        None,
    ),
    (
        "envoy.worker_id",
        r"^(?:listener\.(?:<A>|<V>)\.|server\.|listener_manager\.)worker_(([0-9]+)\.)",
        None,
    ),
    (
        "envoy.listener_address",
        r"^listener\.((<A>|<V>)\.)",
        Some("admin"),
    ),
    (
        "envoy.rds_route_config",
        r"^http\.<V>\.rds\.(([0-9A-Za-z_.-]+)\.)[0-9A-Za-z_]+?$",
        None,
    ),
];

/// Token patterns: `$` is the tag value, `*` any one token, `**` one or more tokens.
const TOKEN_EXTRACTORS: &[(&str, &str)] = &[
    (
        "envoy.mongo_callsite",
        "mongo.*.collection.*.callsite.$.query.**",
    ),
    ("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    ("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    ("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    ("envoy.http_user_agent", "http.*.user_agent.$.**"),
    ("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    ("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    ("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    ("envoy.tcp_prefix", "tcp.$.**"),
    ("envoy.udp_prefix", "udp.$.**"),
    ("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    ("envoy.ratelimit_prefix", "ratelimit.$.**"),
    ("envoy.cluster_name", "cluster.$.**"),
    ("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
    ("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
    ("envoy.http_conn_manager_prefix", "http.$.**"),
    ("envoy.virtual_host", "vhost.$.**"),
    ("envoy.mongo_prefix", "mongo.$.**"),
    ("envoy.route", "vhost.*.route.$.**"),
    ("envoy.thrift_prefix", "thrift.$.**"),
    ("envoy.redis_prefix", "redis.$.**"),
    (
        "envoy.local_http_ratelimit_prefix",
        "$.http_local_rate_limit.**",
    ),
    (
        "envoy.local_network_ratelimit_prefix",
        "local_rate_limit.$.**",
    ),
    (
        "envoy.local_listener_ratelimit_prefix",
        "listener_local_ratelimit.$.**",
    ),
    ("envoy.dns_filter_prefix", "dns_filter.$.**"),
];

enum Matcher {
    Regex(Regex, Option<&'static str>),
    Tokens(Vec<&'static str>),
}

struct Extractor {
    tag: &'static str,
    /// First name token the extractor needs; Envoy runs prefix-less extractors first, which
    /// is what decides the tag order in the output.
    prefix: Option<&'static str>,
    /// Another extractor has the same tag name: only the first that matches may add it.
    shared: bool,
    matcher: Matcher,
}

fn extractors() -> &'static [Extractor] {
    static EXTRACTORS: OnceLock<Vec<Extractor>> = OnceLock::new();
    EXTRACTORS.get_or_init(|| {
        let address =
            r"(?:(?:[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[[a-fA-F_0-9]+\])_[0-9]+)";
        let mut all: Vec<Extractor> = REGEX_EXTRACTORS
            .iter()
            .filter_map(|&(tag, re, negative)| {
                let expanded = re.replace("<A>", address).replace("<V>", r"[^.]+");
                // The table is constant and covered by a test, so a bad row only drops itself.
                let regex = Regex::new(&expanded).ok()?;
                let prefix = re
                    .strip_prefix('^')
                    .and_then(|r| r.split_once(r"\."))
                    .map(|(word, _)| word)
                    .filter(|w| {
                        !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    });
                Some(Extractor {
                    tag,
                    prefix,
                    shared: false,
                    matcher: Matcher::Regex(regex, negative),
                })
            })
            .collect();
        all.extend(TOKEN_EXTRACTORS.iter().map(|&(tag, pattern)| {
            let tokens: Vec<&'static str> = pattern.split('.').collect();
            let prefix = tokens
                .first()
                .copied()
                .filter(|t| !matches!(*t, "$" | "*" | "**"));
            Extractor {
                tag,
                prefix,
                shared: false,
                matcher: Matcher::Tokens(tokens),
            }
        }));
        for i in 0..all.len() {
            all[i].shared = all.iter().filter(|e| e.tag == all[i].tag).count() > 1;
        }
        // Stable sort: prefix-less extractors first, each group in table order (Envoy's
        // TagProducerImpl::forEachExtractorMatching).
        all.sort_by_key(|e| e.prefix.is_some());
        all
    })
}

/// Splits a stat name into Envoy's tag-extracted name and its tags, in Envoy's tag order.
fn extract_tags(name: &str) -> (String, Vec<(&'static str, String)>) {
    let first = name.split_once('.').map(|(first, _)| first);
    let mut tags: Vec<(&'static str, String)> = Vec::new();
    let mut removed: Vec<(usize, usize)> = Vec::new();
    for e in extractors()
        .iter()
        .filter(|e| e.prefix.is_none() || e.prefix == first)
    {
        if e.shared && tags.iter().any(|(t, _)| *t == e.tag) {
            continue;
        }
        let hit = match &e.matcher {
            Matcher::Regex(re, negative) => re.captures(name).and_then(|c| {
                let (cut, value) = (c.get(1)?, c.get(2)?);
                (Some(value.as_str()) != *negative).then(|| (cut.range(), value.as_str()))
            }),
            Matcher::Tokens(pattern) => match_tokens(name, pattern),
        };
        if let Some((cut, value)) = hit {
            tags.push((e.tag, value.to_owned()));
            removed.push((cut.start, cut.end));
        }
    }
    let extracted = name
        .char_indices()
        .filter(|(i, _)| !removed.iter().any(|&(s, e)| (s..e).contains(i)))
        .map(|(_, c)| c)
        .collect();
    (extracted, tags)
}

/// Envoy's TagExtractorTokensImpl: on a match, returns the byte range to cut (the value token
/// and the dot after it, or before it when it is the last token) and the value.
fn match_tokens<'n>(name: &'n str, pattern: &[&str]) -> Option<(std::ops::Range<usize>, &'n str)> {
    let mut tokens = Vec::new();
    let mut start = 0;
    for t in name.split('.') {
        tokens.push((start, t));
        start += t.len() + 1;
    }
    let at = search_tokens(&tokens, pattern)?;
    let &(start, value) = tokens.get(at)?; // `None` too when the pattern had no `$`
    let range = if at + 1 < tokens.len() {
        start..start + value.len() + 1
    } else {
        start.saturating_sub(1)..start + value.len()
    };
    Some((range, value))
}

/// Index of the token matched by `$`, if the whole name matches the pattern.
fn search_tokens(tokens: &[(usize, &str)], pattern: &[&str]) -> Option<usize> {
    match (pattern.first(), tokens.first()) {
        (None, None) => Some(usize::MAX), // matched; the caller's `$` slot fills this in
        (Some(&"**"), Some(_)) if pattern.len() == 1 => Some(usize::MAX),
        // In the middle `**` may also match no token (Envoy retries from the current one).
        (Some(&"**"), Some(_)) => (0..tokens.len()).find_map(|skip| {
            search_tokens(&tokens[skip..], &pattern[1..]).map(|i| offset(i, skip))
        }),
        (Some(&p), Some(&(_, t))) if p == "$" || p == "*" || p == t => {
            let rest = search_tokens(&tokens[1..], &pattern[1..])?;
            Some(if p == "$" { 0 } else { offset(rest, 1) })
        }
        _ => None,
    }
}

fn offset(i: usize, by: usize) -> usize {
    if i == usize::MAX {
        i
    } else {
        i + by
    }
}

/// `envoy_` + the sanitized tag-extracted name.
fn prometheus_name(extracted: &str) -> String {
    let mut s = String::with_capacity(extracted.len() + 6);
    s.push_str("envoy_");
    push_sanitized(&mut s, extracted);
    s
}

/// Prometheus names allow `[a-zA-Z0-9_]` only; Envoy replaces every other character by `_`.
fn push_sanitized(out: &mut String, name: &str) {
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
}

fn format_tags(tags: &[(&str, String)]) -> String {
    let mut s = String::new();
    for (i, (name, value)) in tags.iter().enumerate() {
        s.push_str(if i > 0 { "," } else { "" });
        push_sanitized(&mut s, name);
        let _ = write!(s, "=\"{value}\"");
    }
    s
}

/// Envoy's symbol-table order for full names within one metric family: token by token, so
/// `cluster.backend.x` sorts before `cluster.backend-b.x` (plain byte order says the opposite).
fn token_order(a: &str, b: &str) -> Ordering {
    a.split('.').cmp(b.split('.'))
}

/// One series: its full name (for ordering), its formatted tags, and what to print.
type Family<'a, T> = BTreeMap<String, Vec<(&'a str, String, T)>>;

fn group<'a, T>(items: impl Iterator<Item = (&'a str, T)>) -> Family<'a, T> {
    // Families are ordered by tag-extracted name in plain byte order (Envoy keys them by string).
    let mut families: Family<'a, T> = BTreeMap::new();
    for (name, item) in items {
        let (extracted, tags) = extract_tags(name);
        families
            .entry(extracted)
            .or_default()
            .push((name, format_tags(&tags), item));
    }
    for series in families.values_mut() {
        series.sort_by(|a, b| token_order(a.0, b.0));
    }
    families
}

fn render_prometheus(out: &mut String, stats: &[&super::model::StatValue], hists: &[&HistValue]) {
    for (kind, type_name) in [(StatKind::Counter, "counter"), (StatKind::Gauge, "gauge")] {
        let of_kind = stats
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| (s.name.as_str(), s.value));
        for (extracted, series) in group(of_kind) {
            let metric = prometheus_name(&extracted);
            let _ = writeln!(out, "# TYPE {metric} {type_name}");
            for (_, tags, value) in series {
                let _ = writeln!(out, "{metric}{{{tags}}} {value}");
            }
        }
    }
    for (extracted, series) in group(hists.iter().map(|h| (h.name.as_str(), *h))) {
        let metric = prometheus_name(&extracted);
        let _ = writeln!(out, "# TYPE {metric} histogram");
        for (_, tags, h) in series {
            let sep = if tags.is_empty() { "" } else { "," };
            let mut cumulative = 0u64;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative = cumulative.saturating_add(h.buckets.get(i).copied().unwrap_or(0));
                let _ = writeln!(
                    out,
                    "{metric}_bucket{{{tags}{sep}le=\"{}\"}} {cumulative}",
                    fmt_g32(*bound)
                );
            }
            let _ = writeln!(out, "{metric}_bucket{{{tags}{sep}le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{metric}_sum{{{tags}}} {}", fmt_g32(h.sum));
            let _ = writeln!(out, "{metric}_count{{{tags}}} {}", h.count);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Expected strings are real Envoy 1.40 output, captured as described in
    //! `core/tests/data/envoy_stats/README.md`; the snapshot fed to `render` is rebuilt from the
    //! same capture (`/stats?type=Counters|Gauges[&usedonly]`, histogram buckets from
    //! `/stats/prometheus`), so any difference is a rendering difference.

    use super::super::model::StatValue;
    use super::*;

    macro_rules! data {
        ($file:literal) => {
            include_str!(concat!("../../tests/data/envoy_stats/", $file))
        };
    }

    fn values(file: &'static str) -> impl Iterator<Item = (&'static str, u64)> {
        let parse = |(n, v): (&'static str, &str)| Some((n, v.parse().ok()?));
        file.lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(parse)
    }

    /// Rebuilds histogram `name` from its `_bucket`, `_sum` and `_count` lines in prom.txt.
    fn hist_from_prom(name: &str) -> HistValue {
        let (extracted, tags) = extract_tags(name);
        let (metric, tags) = (prometheus_name(&extracted), format_tags(&tags));
        let sep = if tags.is_empty() { "" } else { "," };
        let value = |suffix: String| -> &str {
            let line = format!("{metric}{suffix} ");
            let found = data!("prom.txt")
                .lines()
                .find_map(|l| l.strip_prefix(line.as_str()));
            found.unwrap_or_else(|| panic!("{line} not in prom.txt"))
        };
        let (mut buckets, mut below) = (Vec::new(), 0);
        for b in BUCKETS {
            let at: u64 = value(format!("_bucket{{{tags}{sep}le=\"{}\"}}", fmt_g32(b)))
                .parse()
                .unwrap();
            buckets.push(at - below);
            below = at;
        }
        let count: u64 = value(format!("_count{{{tags}}}")).parse().unwrap();
        buckets.push(count - below);
        let sum = value(format!("_sum{{{tags}}}")).parse().unwrap();
        HistValue {
            name: name.to_owned(),
            buckets,
            count,
            sum,
        }
    }

    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    fn snapshot(histograms: &[&str]) -> StatsSnapshot {
        let used: Vec<&str> = values(data!("counters_used.txt"))
            .chain(values(data!("gauges_used.txt")))
            .map(|(n, _)| n)
            .collect();
        let used = &used;
        let stat = |kind| {
            move |(name, value): (&str, u64)| StatValue {
                name: name.to_owned(),
                kind,
                value,
                used: used.contains(&name),
            }
        };
        let mut stats: Vec<_> = values(data!("counters.txt"))
            .map(stat(StatKind::Counter))
            .collect();
        stats.extend(values(data!("gauges.txt")).map(stat(StatKind::Gauge)));
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        let mut histograms: Vec<_> = histograms.iter().map(|h| hist_from_prom(h)).collect();
        histograms.sort_by(|a, b| a.name.cmp(&b.name));
        StatsSnapshot { stats, histograms }
    }

    #[test]
    fn renders_like_envoy() {
        let c = ["backend", "backend-b"];
        let per_cluster = |stats: &[&str]| -> Vec<String> {
            c.iter()
                .flat_map(|c| stats.iter().map(move |s| format!("cluster.{c}.{s}")))
                .collect()
        };
        let cx = per_cluster(&["upstream_cx_connect_ms", "upstream_cx_length_ms"]);
        let rq = per_cluster(&[
            "upstream_rq_time",
            "external.upstream_rq_time",
            "upstream_rq_per_cx",
        ]);
        let lh = [
            "http.ingress_http.downstream_cx_length_ms",
            "http.ingress_http.downstream_rq_time",
            "listener.0.0.0.0_38449.connections_accepted_per_socket_event",
            "listener.0.0.0.0_38449.downstream_cx_length_ms",
        ];
        let (cx, rq, lh) = (snapshot(&refs(&cx)), snapshot(&refs(&rq)), snapshot(&lh));
        let (text, json, prom) = (Format::Text, Format::Json, Format::Prometheus);
        let listener_http = r"^(listener\.0|http\.ingress_http|server\.worker)";
        let cases: &[(&StatsSnapshot, Format, &str, bool, &str)] = &[
            (
                &cx,
                text,
                "upstream_cx",
                false,
                data!("filter_upstream_cx.txt"),
            ),
            (
                &cx,
                text,
                "upstream_cx",
                true,
                data!("filter_upstream_cx_used.txt"),
            ),
            (
                &cx,
                json,
                "upstream_cx",
                false,
                data!("filter_upstream_cx.json"),
            ),
            (
                &cx,
                json,
                "upstream_cx",
                true,
                data!("filter_upstream_cx_used.json"),
            ),
            (
                &cx,
                prom,
                "upstream_cx",
                false,
                data!("prom_filter_upstream_cx.txt"),
            ),
            (
                &cx,
                prom,
                "upstream_cx",
                true,
                data!("prom_filter_upstream_cx_used.txt"),
            ),
            (
                &rq,
                prom,
                "upstream_rq",
                false,
                data!("prom_filter_upstream_rq.txt"),
            ),
            (
                &lh,
                prom,
                listener_http,
                false,
                data!("prom_filter_listener_http.txt"),
            ),
            (
                &rq,
                json,
                "rq_per_cx",
                false,
                data!("filter_emptyhist.json"),
            ),
            (
                &rq,
                json,
                "rq_per_cx",
                true,
                data!("filter_emptyhist_used.json"),
            ),
            (&cx, json, "nomatchatall", false, data!("filter_none.json")),
            (&cx, text, "nomatchatall", false, ""),
            (&cx, prom, "nomatchatall", false, ""),
        ];
        for &(snap, format, filter, used_only, expected) in cases {
            let re = Regex::new(filter).unwrap();
            let opts = RenderOptions {
                format,
                filter: Some(&re),
                used_only,
            };
            let got = render(snap, &opts);
            let case = format!("{format:?} filter={filter} used_only={used_only}");
            for (i, (g, e)) in got.lines().zip(expected.lines()).enumerate() {
                assert_eq!(g, e, "{case}: line {}", i + 1);
            }
            assert_eq!(got, expected, "{case}");
        }
    }

    /// Envoy's quantile rule on Envoy's own bins (libcircllhist: two significant digits), against
    /// the lines of histograms.txt. Bins were read off the same capture's prometheus buckets.
    #[test]
    fn quantiles_match_envoy() {
        let bin = |left, width, count| Bin { left, width, count };
        let cases = [
            ("server.initialization_time_ms", vec![bin(10.0, 1.0, 1)]),
            (
                "listener.0.0.0.0_38449.connections_accepted_per_socket_event",
                vec![bin(1.0, 0.1, 15)],
            ),
            (
                "cluster.backend.upstream_rq_time",
                vec![bin(0.0, 0.0, 2), bin(40.0, 1.0, 1), bin(41.0, 1.0, 8)],
            ),
            (
                "cluster.backend.upstream_cx_connect_ms",
                vec![bin(0.0, 0.0, 1)],
            ),
            (
                "http.ingress_http.downstream_rq_time",
                vec![
                    bin(0.0, 0.0, 1),
                    bin(1.0, 0.1, 2),
                    bin(41.0, 1.0, 10),
                    bin(43.0, 1.0, 2),
                ],
            ),
        ];
        for (name, bins) in cases {
            let mut line = format!("{name}:");
            for (p, v) in QUANTILES.iter().zip(quantiles(&bins).unwrap()) {
                line += &format!(" P{}(nan,{})", fmt_shortest(*p), fmt_shortest(v));
            }
            let prefix = format!("{name}:");
            let expected = data!("histograms.txt")
                .lines()
                .find(|l| l.starts_with(&prefix));
            assert_eq!(Some(line.as_str()), expected);
        }
        assert_eq!(quantiles(&[bin(1.0, 1.0, 0)]), None);
        assert_eq!(QUANTILES.map(|p| p / 100.0)[..8], QUANTILE_FRACTIONS[..8]);
    }

    /// Our coarse buckets: linear inside `(BUCKETS[i-1], BUCKETS[i]]`, zeros exact, overflow at
    /// the last bound (hand-computed with the rule above).
    #[test]
    fn quantiles_from_buckets() {
        let mut h = HistValue {
            name: "h".into(),
            buckets: vec![0; BUCKETS.len() + 1],
            count: 10,
            sum: 0.0,
        };
        h.buckets[0] = 2; // two 0 ms samples
        h.buckets[5] = 7; // seven in (25, 50]
        h.buckets[BUCKETS.len()] = 1; // one above 3600000
                                      // Ranks 1, 3, 5, 8, 9, 10, 10, ...; the j-th of 7 in (25, 50] is at 25 + j / 8 * 25.
        let top = 3600000.0;
        let expected = [0.0, 28.125, 34.375, 43.75, 46.875, top, top, top, top, top];
        assert_eq!(quantiles(&bins_of(&h)), Some(expected));
        h.buckets.truncate(3); // a short bucket vector is not an error
        assert_eq!(quantiles(&bins_of(&h)).map(|q| q[0]), Some(0.0));
    }

    /// Names, values and tag order as Envoy printed them in prom.txt (vhost: well_known_names.cc).
    #[test]
    fn tag_extraction() {
        let cases = [
            ("cluster.backend.upstream_rq_200", "cluster.upstream_rq{response_code=200,cluster_name=backend}"),
            ("cluster.backend-b.upstream_rq_2xx", "cluster.upstream_rq_xx{response_code_class=2,cluster_name=backend-b}"),
            ("cluster.backend.external.upstream_rq_404", "cluster.external.upstream_rq{response_code=404,cluster_name=backend}"),
            ("cluster.backend.upstream_cx_total", "cluster.upstream_cx_total{cluster_name=backend}"),
            ("http.ingress_http.downstream_rq_5xx", "http.downstream_rq_xx{response_code_class=5,http_conn_manager_prefix=ingress_http}"),
            ("http.async-client.no_cluster", "http.no_cluster{http_conn_manager_prefix=async-client}"),
            ("listener.0.0.0.0_38449.downstream_cx_total", "listener.downstream_cx_total{listener_address=0.0.0.0_38449}"),
            ("listener.[__1]_80.downstream_cx_total", "listener.downstream_cx_total{listener_address=[__1]_80}"),
            (
                "listener.0.0.0.0_38449.worker_0.downstream_cx_total",
                "listener.worker_downstream_cx_total{worker_id=0,listener_address=0.0.0.0_38449}",
            ),
            (
                "listener.0.0.0.0_38449.http.ingress_http.downstream_rq_2xx",
                "listener.http.downstream_rq_xx{response_code_class=2,http_conn_manager_prefix=ingress_http,listener_address=0.0.0.0_38449}",
            ),
            (
                "listener.admin.http.admin.downstream_rq_2xx",
                "listener.admin.http.downstream_rq_xx{response_code_class=2,http_conn_manager_prefix=admin}",
            ),
            ("server.worker_0.watchdog_miss", "server.worker_watchdog_miss{worker_id=0}"),
            ("server.uptime", "server.uptime{}"),
            ("cluster_manager.active_clusters", "cluster_manager.active_clusters{}"),
            ("cluster.backend", "cluster.backend{}"),
            ("vhost.all.vcluster.other.upstream_rq_retry", "vhost.vcluster.upstream_rq_retry{virtual_cluster=other,virtual_host=all}"),
        ];
        for (name, expected) in cases {
            let (extracted, tags) = extract_tags(name);
            let tags: Vec<String> = tags
                .iter()
                .map(|(t, v)| format!("{}={v}", t.trim_start_matches("envoy.")))
                .collect();
            assert_eq!(
                format!("{extracted}{{{}}}", tags.join(",")),
                expected,
                "{name}"
            );
        }
        let rows = REGEX_EXTRACTORS.len() + TOKEN_EXTRACTORS.len();
        assert_eq!(extractors().len(), rows, "a table row failed to compile");
        assert_eq!(
            prometheus_name("cluster.upstream-rq:x"),
            "envoy_cluster_upstream_rq_x"
        );
    }

    #[test]
    fn float_formats() {
        // prom.txt's `_sum` values: 32 digits identify the double, so reprinting must match.
        for line in data!("prom.txt").lines().filter(|l| l.contains("_sum{")) {
            let printed = line.rsplit(' ').next().unwrap();
            assert_eq!(fmt_g32(printed.parse().unwrap()), printed, "{line}");
        }
        // Expected values from C's printf("%.32g") (Python's "%.32g" % v).
        let g32 = [
            (0.1, "0.10000000000000000555111512312578"),
            (3600000.0, "3600000"),
            (1e40, "1.0000000000000000303786028427004e+40"),
            (-2.5e-7, "-2.4999999999999998868702795647156e-07"),
            (1e-5, "1.0000000000000000818030539140313e-05"),
        ];
        for (v, expected) in g32 {
            assert_eq!(fmt_g32(v), expected);
        }
        let shortest = [
            (0.0, "0"),
            (41.27272727272727, "41.27272727272727"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (f64::NAN, "nan"),
        ];
        for (v, expected) in shortest {
            assert_eq!(fmt_shortest(v), expected);
        }
        let mut s = String::new();
        push_json_string(&mut s, "a\"b\\c\u{1}");
        assert_eq!(s, r#""a\"b\\c\u0001""#);
    }
}
