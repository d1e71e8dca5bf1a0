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

/// A route's compiled `regex_rewrite`: the pattern (searched, not anchored) and the
/// substitution in the `regex` crate's syntax.
#[derive(Debug, Clone)]
pub struct PathRewrite {
    pub regex: Regex,
    pub replacement: Vec<u8>,
}

impl PathRewrite {
    /// Compiles a `regex_rewrite`. RE2's substitution syntax (`\0`-`\9`: the whole match or a
    /// group, `\\`: a backslash) becomes the `regex` crate's (`${N}`, `$$` for a `$`); any
    /// other escape, or a group the pattern does not have, is refused.
    pub fn compile(re: &str, substitution: &str, path: &str) -> Result<PathRewrite, Error> {
        let regex = Regex::new(re).map_err(|e| {
            Error::config(format!("{path}.pattern.regex: invalid regex {re:?}: {e}"))
        })?;
        let groups = regex.captures_len();
        let mut replacement = Vec::with_capacity(substitution.len());
        let mut chars = substitution.bytes();
        while let Some(b) = chars.next() {
            match b {
                b'\\' => match chars.next() {
                    Some(b'\\') => replacement.push(b'\\'),
                    Some(d @ b'0'..=b'9') if usize::from(d - b'0') < groups => {
                        replacement.extend_from_slice(b"${");
                        replacement.push(d);
                        replacement.push(b'}');
                    }
                    other => {
                        return Err(Error::config(format!(
                            "{path}.substitution: {substitution:?}: \\{} is not a group of the pattern (\\0 to \\{}) nor \\\\",
                            other.map(|c| (c as char).to_string()).unwrap_or_default(),
                            groups - 1
                        )))
                    }
                },
                b'$' => replacement.extend_from_slice(b"$$"),
                _ => replacement.push(b),
            }
        }
        Ok(PathRewrite { regex, replacement })
    }

    /// The path rewritten (every match replaced), or `None` when the result would be empty
    /// (Envoy then leaves the path as it was).
    pub fn apply(&self, path: &[u8]) -> Option<Vec<u8>> {
        let out = self.regex.replace_all(path, self.replacement.as_slice());
        (!out.is_empty()).then(|| out.into_owned())
    }
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
