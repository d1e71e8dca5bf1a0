//! Compiled string matchers shared by header and query-parameter matching.

use regex::bytes::Regex;

use crate::config::ValueMatch;
use crate::Error;

/// A compiled [`ValueMatch`].
#[derive(Debug, Clone)]
pub enum ValueMatcher {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
    Contains(Vec<u8>),
    Regex(Regex),
    Present(bool),
}

/// Compiles a regex that must match the whole input, as Envoy's `safe_regex` (RE2 full match).
pub fn full_regex(re: &str, path: &str) -> Result<Regex, Error> {
    Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| Error::config(format!("{path}: invalid regex {re:?}: {e}")))
}

impl ValueMatcher {
    /// Compiles `m`; `ignore_case` lower-cases the pattern (values are lower-cased when tested).
    pub fn compile(m: &ValueMatch, ignore_case: bool, path: &str) -> Result<ValueMatcher, Error> {
        let lc = |s: &str| {
            if ignore_case {
                s.to_ascii_lowercase().into_bytes()
            } else {
                s.as_bytes().to_vec()
            }
        };
        Ok(match m {
            ValueMatch::Exact(s) => ValueMatcher::Exact(lc(s)),
            ValueMatch::Prefix(s) => ValueMatcher::Prefix(lc(s)),
            ValueMatch::Suffix(s) => ValueMatcher::Suffix(lc(s)),
            ValueMatch::Contains(s) => ValueMatcher::Contains(lc(s)),
            ValueMatch::SafeRegex(re) => ValueMatcher::Regex(full_regex(re, path)?),
            ValueMatch::Present(p) => ValueMatcher::Present(*p),
        })
    }

    /// Tests a value (`None`: absent).
    pub fn matches(&self, v: Option<&[u8]>, ignore_case: bool) -> bool {
        let Some(v) = v else {
            return matches!(self, ValueMatcher::Present(false));
        };
        let lowered;
        let v = if ignore_case && !matches!(self, ValueMatcher::Regex(_)) {
            lowered = v.to_ascii_lowercase();
            &lowered[..]
        } else {
            v
        };
        match self {
            ValueMatcher::Exact(s) => v == &s[..],
            ValueMatcher::Prefix(s) => v.starts_with(s),
            ValueMatcher::Suffix(s) => v.ends_with(s),
            ValueMatcher::Contains(s) => memchr::memmem::find(v, s).is_some(),
            ValueMatcher::Regex(re) => re.is_match(v),
            ValueMatcher::Present(p) => *p,
        }
    }
}
