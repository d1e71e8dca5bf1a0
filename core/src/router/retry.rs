//! A route's `retry_policy`, as Envoy's router applies it: which upstream answers and failures
//! are tried again (`retry_on`), how often (`num_retries`), how long each try may take
//! (`per_try_timeout`) and how long to wait between tries (a jittered exponential back-off).
//! The decisions are Envoy's `RetryStateImpl` (docs/envoy-behaviour.md section 24); the
//! request path that acts on them is `worker/forward.rs`.

use super::{HeaderMatch, RouteRequest};
use crate::config::RetryPolicyConfig;
use crate::error::Error;
use crate::http1::head::HeaderMap;

const FIVE_XX: u32 = 1;
const GATEWAY_ERROR: u32 = 1 << 1;
const RESET: u32 = 1 << 2;
const RESET_BEFORE_REQUEST: u32 = 1 << 3;
const CONNECT_FAILURE: u32 = 1 << 4;
const ENVOY_RATELIMITED: u32 = 1 << 5;
const RETRIABLE_4XX: u32 = 1 << 6;
const RETRIABLE_STATUS_CODES: u32 = 1 << 7;
const GRPC_CANCELLED: u32 = 1 << 8;
const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 9;
const GRPC_INTERNAL: u32 = 1 << 10;
const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 11;
const GRPC_UNAVAILABLE: u32 = 1 << 12;
/// HTTP/2 and HTTP/3 conditions: known, never met over an HTTP/1.1 upstream.
const NEVER: u32 = 1 << 13;
const RETRIABLE_HEADERS: u32 = 1 << 14;
const GRPC: u32 = GRPC_CANCELLED
    | GRPC_DEADLINE_EXCEEDED
    | GRPC_INTERNAL
    | GRPC_RESOURCE_EXHAUSTED
    | GRPC_UNAVAILABLE;

/// A compiled retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    on: u32,
    /// `retriable_headers` and `retriable_request_headers`.
    response_headers: Box<[HeaderMatch]>,
    request_headers: Box<[HeaderMatch]>,
    pub num_retries: u32,
    /// 0: none.
    pub per_try_timeout_ms: u64,
    /// 0: none.
    pub per_try_idle_timeout_ms: u64,
    status_codes: Box<[u16]>,
    base_ms: u64,
    max_ms: u64,
    /// `previous_hosts`: a retry picks again (up to `host_selection_retries` more times)
    /// while it lands on a host already tried.
    pub previous_hosts: bool,
    pub host_selection_retries: u32,
}

/// Why an attempt ended without a response head, for [`RetryPolicy::retries_reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The connection could not be made (refused, or `connect_timeout`).
    ConnectFailure,
    /// The upstream closed, reset or sent no valid head once the request had gone to it.
    Upstream,
    /// The try's `per_try_timeout` passed (Envoy resets the stream: a local reset).
    PerTryTimeout,
}

impl RetryPolicy {
    pub fn compile(c: &RetryPolicyConfig, path: &str) -> Result<RetryPolicy, Error> {
        let mut on = 0;
        for t in &c.retry_on {
            on |= match t.as_str() {
                "5xx" => FIVE_XX,
                "gateway-error" => GATEWAY_ERROR,
                "reset" => RESET,
                "reset-before-request" => RESET_BEFORE_REQUEST,
                "connect-failure" => CONNECT_FAILURE,
                "envoy-ratelimited" => ENVOY_RATELIMITED,
                "retriable-4xx" => RETRIABLE_4XX,
                "retriable-status-codes" => RETRIABLE_STATUS_CODES,
                "cancelled" => GRPC_CANCELLED,
                "deadline-exceeded" => GRPC_DEADLINE_EXCEEDED,
                "internal" => GRPC_INTERNAL,
                "resource-exhausted" => GRPC_RESOURCE_EXHAUSTED,
                "unavailable" => GRPC_UNAVAILABLE,
                "retriable-headers" => RETRIABLE_HEADERS,
                "refused-stream" | "http3-post-connect-failure" => NEVER,
                other => {
                    return Err(Error::config(format!(
                        "{path}.retry_on: unknown retry condition {other:?}"
                    )))
                }
            };
        }
        if c.base_interval_ms == 0 {
            return Err(Error::config(format!(
                "{path}.retry_back_off.base_interval: must be greater than 0"
            )));
        }
        let max_ms = c.max_interval_ms.unwrap_or(10 * c.base_interval_ms);
        if max_ms < c.base_interval_ms {
            return Err(Error::config(format!(
                "{path}.retry_back_off.max_interval: must be greater than or equal to the base_interval"
            )));
        }
        let matchers = |list: &[crate::config::HeaderMatcher], field: &str| {
            list.iter()
                .enumerate()
                .map(|(i, m)| HeaderMatch::compile(m, &format!("{path}.{field}[{i}]")))
                .collect::<Result<Box<[_]>, _>>()
        };
        Ok(RetryPolicy {
            on,
            response_headers: matchers(&c.retriable_headers, "retriable_headers")?,
            request_headers: matchers(&c.retriable_request_headers, "retriable_request_headers")?,
            num_retries: c.num_retries,
            per_try_timeout_ms: c.per_try_timeout_ms,
            per_try_idle_timeout_ms: c.per_try_idle_timeout_ms,
            status_codes: c.retriable_status_codes.clone().into(),
            base_ms: c.base_interval_ms,
            max_ms,
            previous_hosts: c.previous_hosts,
            host_selection_retries: c.host_selection_retry_max_attempts,
        })
    }

    /// Whether the policy may try this request again at all: it has a condition, and the
    /// request matches one of its `retriable_request_headers` if it has any (otherwise Envoy
    /// keeps no retry state for it).
    pub fn retries_request(&self, req: &RouteRequest<'_>) -> bool {
        self.on != 0
            && (self.request_headers.is_empty()
                || self.request_headers.iter().any(|m| m.matches(req)))
    }

    /// Whether a response with this status and head is tried again (Envoy's
    /// `wouldRetryFromHeaders`).
    pub fn retries_response(&self, status: u16, h: &HeaderMap) -> bool {
        // An upstream Envoy's overload refusal is never retried; its rate limiting only
        // under `envoy-ratelimited`.
        if h.contains(b"x-envoy-overloaded") {
            return false;
        }
        if h.contains(b"x-envoy-ratelimited") {
            return self.on & ENVOY_RATELIMITED != 0;
        }
        if self.on & FIVE_XX != 0 && (500..600).contains(&status) {
            return true;
        }
        if self.on & GATEWAY_ERROR != 0 && matches!(status, 502..=504) {
            return true;
        }
        if self.on & RETRIABLE_4XX != 0 && status == 409 {
            return true;
        }
        if self.on & RETRIABLE_STATUS_CODES != 0 && self.status_codes.contains(&status) {
            return true;
        }
        if self.on & RETRIABLE_HEADERS != 0
            && self
                .response_headers
                .iter()
                .any(|m| m.matches_response(status, h))
        {
            return true;
        }
        if self.on & GRPC != 0 {
            let grpc = h
                .get(b"grpc-status")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<u32>().ok());
            let bit = match grpc {
                Some(1) => GRPC_CANCELLED,
                Some(4) => GRPC_DEADLINE_EXCEEDED,
                Some(8) => GRPC_RESOURCE_EXHAUSTED,
                Some(13) => GRPC_INTERNAL,
                Some(14) => GRPC_UNAVAILABLE,
                _ => 0,
            };
            return self.on & bit != 0;
        }
        false
    }

    /// Whether an attempt that ended this way is tried again (Envoy's `wouldRetryFromReset`);
    /// `sent`: the request had begun to go upstream.
    pub fn retries_reset(&self, reset: Reset, sent: bool) -> bool {
        if reset == Reset::ConnectFailure && self.on & CONNECT_FAILURE != 0 {
            return true;
        }
        if self.on & (FIVE_XX | GATEWAY_ERROR | RESET) != 0 {
            return true;
        }
        self.on & RESET_BEFORE_REQUEST != 0 && !sent
    }

    /// A back-off for the request's tries, starting from the base interval.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            next_ms: self.base_ms,
            max_ms: self.max_ms,
        }
    }
}

/// Envoy's jittered exponential back-off: a random wait below an interval that starts at the
/// base and doubles after each wait, up to the maximum.
#[derive(Debug, Clone)]
pub struct Backoff {
    next_ms: u64,
    max_ms: u64,
}

impl Backoff {
    /// The next wait, in ms.
    pub fn next_ms(&mut self) -> u64 {
        let interval = self.next_ms.max(1);
        self.next_ms = if self.next_ms > self.max_ms / 2 {
            self.max_ms
        } else {
            self.next_ms * 2
        };
        fastrand::u64(0..interval).min(self.max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy's config with these conditions and codes, the rest Envoy's defaults.
    fn config(on: &[&str], codes: &[u16]) -> RetryPolicyConfig {
        RetryPolicyConfig {
            retry_on: on.iter().map(|s| s.to_string()).collect(),
            num_retries: 1,
            per_try_timeout_ms: 0,
            per_try_idle_timeout_ms: 0,
            retriable_status_codes: codes.to_vec(),
            base_interval_ms: 25,
            max_interval_ms: None,
            retriable_headers: vec![],
            retriable_request_headers: vec![],
            previous_hosts: false,
            host_selection_retry_max_attempts: 1,
        }
    }

    fn policy(on: &[&str], codes: &[u16]) -> RetryPolicy {
        RetryPolicy::compile(&config(on, codes), "r").unwrap()
    }

    fn head(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::default();
        for (k, v) in lines {
            h.append(k.as_bytes(), v.as_bytes());
        }
        h
    }

    #[test]
    fn status_conditions() {
        let none = head(&[]);
        let p = policy(&["5xx"], &[]);
        assert!(p.retries_response(500, &none) && p.retries_response(599, &none));
        assert!(!p.retries_response(409, &none) && !p.retries_response(200, &none));
        let p = policy(&["gateway-error"], &[]);
        assert!(!p.retries_response(500, &none) && p.retries_response(502, &none));
        assert!(p.retries_response(504, &none) && !p.retries_response(505, &none));
        let p = policy(&["retriable-4xx"], &[]);
        assert!(p.retries_response(409, &none) && !p.retries_response(404, &none));
        let p = policy(&["retriable-status-codes"], &[418]);
        assert!(p.retries_response(418, &none) && !p.retries_response(503, &none));
        // The codes alone do nothing without the condition.
        assert!(!policy(&["5xx"], &[418]).retries_response(418, &none));
    }

    #[test]
    fn envoy_headers_and_grpc() {
        let p = policy(&["5xx"], &[]);
        assert!(!p.retries_response(503, &head(&[("x-envoy-overloaded", "true")])));
        assert!(!p.retries_response(503, &head(&[("x-envoy-ratelimited", "true")])));
        let p = policy(&["envoy-ratelimited"], &[]);
        assert!(p.retries_response(429, &head(&[("x-envoy-ratelimited", "true")])));
        let p = policy(&["unavailable", "cancelled"], &[]);
        assert!(p.retries_response(200, &head(&[("grpc-status", "14")])));
        assert!(p.retries_response(200, &head(&[("grpc-status", "1")])));
        assert!(!p.retries_response(200, &head(&[("grpc-status", "13")])));
        assert!(!p.retries_response(503, &none_head()));
    }

    fn none_head() -> HeaderMap {
        HeaderMap::default()
    }

    #[test]
    fn reset_conditions() {
        let p = policy(&["connect-failure"], &[]);
        assert!(p.retries_reset(Reset::ConnectFailure, false));
        assert!(!p.retries_reset(Reset::Upstream, true));
        assert!(!p.retries_reset(Reset::PerTryTimeout, true));
        for on in ["5xx", "gateway-error", "reset"] {
            let p = policy(&[on], &[]);
            for r in [Reset::ConnectFailure, Reset::Upstream, Reset::PerTryTimeout] {
                assert!(p.retries_reset(r, true), "{on} {r:?}");
            }
        }
        let p = policy(&["reset-before-request"], &[]);
        assert!(p.retries_reset(Reset::ConnectFailure, false));
        assert!(!p.retries_reset(Reset::Upstream, true));
        assert!(!policy(&["retriable-4xx"], &[]).retries_reset(Reset::Upstream, true));
    }

    #[test]
    fn compile_refuses_bad_input() {
        let mut c = config(&["nope"], &[]);
        assert!(RetryPolicy::compile(&c, "r")
            .unwrap_err()
            .to_string()
            .contains("nope"));
        c.retry_on = vec!["5xx".into()];
        c.max_interval_ms = Some(10);
        assert!(RetryPolicy::compile(&c, "r").is_err());
        c.base_interval_ms = 0;
        assert!(RetryPolicy::compile(&c, "r").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let p = policy(&["5xx"], &[]);
        let mut b = p.backoff();
        // Intervals 25, 50, 100, 200, 250, 250: each wait is below its interval.
        for bound in [25, 50, 100, 200, 250, 250, 250] {
            for _ in 0..50 {
                let mut probe = b.clone();
                assert!(probe.next_ms() < bound);
            }
            b.next_ms();
        }
    }
}
