//! Header values with Envoy's substitution commands (`%DOWNSTREAM_REMOTE_ADDRESS%`,
//! `%REQ(x-a)%`, `%%` for a `%`), compiled once per snapshot: a value without commands stays a
//! plain byte string and costs nothing more to add. The commands pyproxy supports are those an
//! HTTP/1 proxy without TLS can answer exactly; any other is refused when the configuration
//! is compiled, never sent as text.

use std::net::SocketAddr;

use crate::http1::head::HeaderMap;
use crate::Error;

/// What a command stands for (the parsed form; see [`Value::compile`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    RemoteAddr,
    RemoteIp,
    RemotePort,
    LocalAddr,
    LocalIp,
    LocalPort,
    Protocol,
    /// Resolved when compiled.
    Hostname(Vec<u8>),
    /// A request header (or `:method`, `:path`, `:authority`, `:scheme`), then a fallback.
    Req(Vec<u8>, Option<Vec<u8>>),
    /// A response header, then a fallback (empty before the response).
    Resp(Vec<u8>, Option<Vec<u8>>),
    ResponseCode,
    UpstreamAddr,
}

/// A run of literal bytes or a command (`C`: a header value's [`Cmd`], or an access log's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<C = Cmd> {
    Lit(Vec<u8>),
    /// A command and the `:N` length it is cut to.
    Cmd(C, Option<usize>),
}

/// A configured header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Static(Vec<u8>),
    Template(Vec<Piece>),
}

/// Compiles a string with substitution commands into pieces: `command` maps a command's name
/// and argument to its parsed form, or refuses it. A refused command is malformed (no valid
/// command at its position) when its name is one of `with_arg`, which need a well-formed
/// argument, and otherwise not supported, the error listing `supported`.
pub(crate) fn compile_pieces<C>(
    v: &str,
    path: &str,
    command: impl Fn(&str, Option<&str>) -> Option<C>,
    with_arg: &[&str],
    supported: &str,
) -> Result<Vec<Piece<C>>, Error> {
    let tokens = lex(v).map_err(|at| bad_command(path, v, at))?;
    let mut pieces = Vec::with_capacity(tokens.len());
    for t in tokens {
        match t {
            Token::Lit(l) => pieces.push(Piece::Lit(l)),
            Token::Cmd {
                name,
                arg,
                max_len,
                at,
            } => {
                let cmd = command(name, arg).ok_or_else(|| {
                    if with_arg.contains(&name) {
                        bad_command(path, v, at)
                    } else {
                        Error::config(format!(
                            "{path}: {v:?}: %{name}{}% is not supported by pyproxy (supported: {supported})",
                            arg.map(|a| format!("({a})")).unwrap_or_default()
                        ))
                    }
                })?;
                pieces.push(Piece::Cmd(cmd, max_len));
            }
        }
    }
    Ok(pieces)
}

/// The request a value may read (`%REQ(...)%`).
#[derive(Debug, Clone, Copy)]
pub struct ReqView<'a> {
    pub method: &'a [u8],
    /// Path and query, as routed.
    pub target: &'a [u8],
    /// The request's headers; `None` while they are the map being edited (request edits).
    pub headers: Option<&'a HeaderMap>,
    /// `:scheme` is https.
    pub https: bool,
}

/// What the commands read. `local` is looked up only when a value asks for it.
pub struct Cx<'a> {
    pub peer: SocketAddr,
    pub local: &'a dyn Fn() -> Option<SocketAddr>,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor: u8,
    pub request: Option<ReqView<'a>>,
    /// The response code; 0 before there is one.
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    /// The edits are a response's (a forwarded one or a local reply): `%RESP(...)%` reads
    /// the response headers as the edits so far leave them. Request edits have no response.
    pub response: bool,
}

const COMMANDS: &str = "DOWNSTREAM_REMOTE_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, \
DOWNSTREAM_REMOTE_PORT, DOWNSTREAM_DIRECT_REMOTE_ADDRESS(_WITHOUT_PORT), \
DOWNSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, DOWNSTREAM_LOCAL_PORT, \
PROTOCOL, HOSTNAME, REQ(...), RESP(...), RESPONSE_CODE, UPSTREAM_HOST, UPSTREAM_REMOTE_ADDRESS";

impl Value {
    /// Compiles a configured value; `path` names it in errors.
    pub fn compile(v: &str, path: &str) -> Result<Value, Error> {
        if !v.contains('%') {
            return Ok(Value::Static(v.as_bytes().to_vec()));
        }
        let pieces = compile_pieces(v, path, command, &["REQ", "RESP"], COMMANDS)?;
        Ok(match pieces.as_slice() {
            [] => Value::Static(Vec::new()),
            [Piece::Lit(l)] => Value::Static(l.clone()),
            _ => Value::Template(pieces),
        })
    }

    /// Whether the value reads the request (`%REQ(...)%`).
    pub fn reads_request(&self) -> bool {
        matches!(self, Value::Template(p) if p.iter().any(|p| matches!(p, Piece::Cmd(Cmd::Req(..), _))))
    }

    /// The value for this request or response; `own` is the header map being edited (a
    /// response's, for `%RESP(...)%`).
    pub fn render<'v>(&'v self, cx: &Cx<'_>, own: &HeaderMap) -> std::borrow::Cow<'v, [u8]> {
        let pieces = match self {
            Value::Static(v) => return std::borrow::Cow::Borrowed(v),
            Value::Template(p) => p,
        };
        let mut out = Vec::new();
        for p in pieces {
            match p {
                Piece::Lit(l) => out.extend_from_slice(l),
                Piece::Cmd(c, max) => {
                    let start = out.len();
                    render_cmd(c, cx, own, &mut out);
                    if let Some(max) = max {
                        out.truncate(start + (out.len() - start).min(*max));
                    }
                }
            }
        }
        std::borrow::Cow::Owned(out)
    }
}

/// A piece of a string with Envoy's substitution commands, as lexed: literal bytes (`%%` made
/// a `%`), or a `%NAME%`, `%NAME(arg)%` with an optional `:N` length before the closing `%`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    Lit(Vec<u8>),
    Cmd {
        name: &'a str,
        arg: Option<&'a str>,
        max_len: Option<usize>,
        /// Where its `%` is, for errors.
        at: usize,
    },
}

/// Splits `v` into literal runs and commands; `Err(position)` where a `%` starts no valid
/// command. Envoy's grammar: `%` `[A-Z0-9_]+` then `(` anything but `)` `)`, then `:digits`.
pub(crate) fn lex(v: &str) -> Result<Vec<Token<'_>>, usize> {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut lit = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            lit.push(b[i]);
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'%') {
            lit.push(b'%');
            i += 2;
            continue;
        }
        let start = i;
        let name_end = (i + 1..b.len())
            .find(|&j| !(b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_'))
            .unwrap_or(b.len());
        let name = &v[i + 1..name_end];
        if name.is_empty() {
            return Err(start);
        }
        let mut j = name_end;
        let mut arg = None;
        if b.get(j) == Some(&b'(') {
            let close = v[j..].find(')').ok_or(start)? + j;
            arg = Some(&v[j + 1..close]);
            j = close + 1;
        }
        let mut max_len = None;
        if b.get(j) == Some(&b':') {
            let digits_end = (j + 1..b.len())
                .find(|&k| !b[k].is_ascii_digit())
                .unwrap_or(b.len());
            max_len = Some(v[j + 1..digits_end].parse().map_err(|_| start)?);
            j = digits_end;
        }
        if b.get(j) != Some(&b'%') {
            return Err(start);
        }
        i = j + 1;
        if !lit.is_empty() {
            out.push(Token::Lit(std::mem::take(&mut lit)));
        }
        out.push(Token::Cmd {
            name,
            arg,
            max_len,
            at: start,
        });
    }
    if !lit.is_empty() {
        out.push(Token::Lit(lit));
    }
    Ok(out)
}

/// The error for a `%` at `at` that starts no valid command.
pub(crate) fn bad_command(path: &str, v: &str, at: usize) -> Error {
    Error::config(format!(
        "{path}: {v:?}: no valid command at position {at} (a `%` starts a command such as \
         %REQ(x-a)%; write %% for a `%`)"
    ))
}

/// A `REQ`/`RESP` argument: `name` or `name?fallback`, lower-cased.
pub(crate) fn header_arg(arg: Option<&str>) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let a = arg?;
    let (h, alt) = match a.split_once('?') {
        Some((h, alt)) => (h, Some(alt.to_ascii_lowercase().into_bytes())),
        None => (a, None),
    };
    (!h.is_empty()).then(|| (h.to_ascii_lowercase().into_bytes(), alt))
}

fn command(name: &str, arg: Option<&str>) -> Option<Cmd> {
    let header = header_arg;
    Some(match (name, arg) {
        ("DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS", None) => Cmd::RemoteAddr,
        (
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
            | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
            None,
        ) => Cmd::RemoteIp,
        ("DOWNSTREAM_REMOTE_PORT" | "DOWNSTREAM_DIRECT_REMOTE_PORT", None) => Cmd::RemotePort,
        ("DOWNSTREAM_LOCAL_ADDRESS", None) => Cmd::LocalAddr,
        ("DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", None) => Cmd::LocalIp,
        ("DOWNSTREAM_LOCAL_PORT", None) => Cmd::LocalPort,
        ("PROTOCOL", None) => Cmd::Protocol,
        ("HOSTNAME", None) => Cmd::Hostname(hostname()),
        ("REQ", a) => {
            let (h, alt) = header(a)?;
            Cmd::Req(h, alt)
        }
        ("RESP", a) => {
            let (h, alt) = header(a)?;
            Cmd::Resp(h, alt)
        }
        ("RESPONSE_CODE", None) => Cmd::ResponseCode,
        ("UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS", None) => Cmd::UpstreamAddr,
        _ => return None,
    })
}

pub(crate) fn hostname() -> Vec<u8> {
    std::fs::read("/proc/sys/kernel/hostname")
        .map(|mut h| {
            h.retain(|b| !b.is_ascii_whitespace());
            h
        })
        .unwrap_or_default()
}

fn render_cmd(c: &Cmd, cx: &Cx<'_>, own: &HeaderMap, out: &mut Vec<u8>) {
    use std::io::Write;
    match c {
        Cmd::RemoteAddr => {
            let _ = write!(out, "{}", cx.peer);
        }
        Cmd::RemoteIp => {
            let _ = write!(out, "{}", cx.peer.ip());
        }
        Cmd::RemotePort => {
            let _ = write!(out, "{}", cx.peer.port());
        }
        Cmd::LocalAddr | Cmd::LocalIp | Cmd::LocalPort => {
            if let Some(a) = (cx.local)() {
                let _ = match c {
                    Cmd::LocalAddr => write!(out, "{a}"),
                    Cmd::LocalIp => write!(out, "{}", a.ip()),
                    _ => write!(out, "{}", a.port()),
                };
            }
        }
        Cmd::Protocol => out.extend_from_slice(if cx.minor == 0 {
            b"HTTP/1.0"
        } else {
            b"HTTP/1.1"
        }),
        Cmd::Hostname(h) => out.extend_from_slice(h),
        Cmd::Req(h, alt) => {
            if let Some(r) = &cx.request {
                let headers = r.headers.unwrap_or(own);
                let v = request_header(r, headers, h)
                    .or_else(|| alt.as_ref().and_then(|a| request_header(r, headers, a)));
                out.extend_from_slice(v.unwrap_or_default());
            }
        }
        Cmd::Resp(h, alt) => {
            if cx.response {
                let v = own.get(h).or_else(|| alt.as_ref().and_then(|a| own.get(a)));
                out.extend_from_slice(v.unwrap_or_default());
            }
        }
        Cmd::ResponseCode => {
            out.extend_from_slice(itoa::Buffer::new().format(cx.status).as_bytes());
        }
        Cmd::UpstreamAddr => {
            if let Some(a) = cx.upstream {
                let _ = write!(out, "{a}");
            }
        }
    }
}

/// A request header, or the request's pseudo-headers (Envoy's HTTP/1 codec makes the request
/// line `:method`, `:path`, `:scheme` and `host` `:authority`).
pub(crate) fn request_header<'a>(
    r: &ReqView<'a>,
    headers: &'a HeaderMap,
    name: &[u8],
) -> Option<&'a [u8]> {
    match name {
        b":method" => Some(r.method),
        b":path" => Some(r.target),
        b":scheme" => Some(if r.https { b"https" } else { b"http" }),
        b":authority" => headers.get(b"host"),
        n => headers.get(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Result<Value, String> {
        Value::compile(v, "x").map_err(|e| e.message().to_string())
    }

    #[test]
    fn plain_values_stay_static_and_percent_percent_is_a_percent() {
        assert_eq!(parse("abc").unwrap(), Value::Static(b"abc".to_vec()));
        assert_eq!(parse("50%%").unwrap(), Value::Static(b"50%".to_vec()));
        assert_eq!(parse("%%").unwrap(), Value::Static(b"%".to_vec()));
        assert_eq!(parse("").unwrap(), Value::Static(Vec::new()));
    }

    #[test]
    fn malformed_and_unsupported_commands_are_refused() {
        for v in [
            "50%",
            "%",
            "a%b",
            "%REQ(x%",
            "%REQ()%",
            "%REQ%",
            "%PROTOCOL:x%",
            "%lower%",
        ] {
            let e = parse(v).unwrap_err();
            assert!(e.contains("no valid command"), "{v}: {e}");
        }
        for v in ["%FOO%", "%START_TIME%", "%PROTOCOL(x)%"] {
            let e = parse(v).unwrap_err();
            assert!(e.contains("is not supported by pyproxy"), "{v}: {e}");
        }
    }

    #[test]
    fn commands_render_from_the_request_and_response() {
        let mut req = HeaderMap::default();
        req.append(b"x-a", b"hello");
        req.append(b"host", b"h.example");
        let mut resp = HeaderMap::default();
        resp.append(b"x-up", b"1");
        let local = || Some("10.0.0.1:8080".parse().unwrap());
        let cx = Cx {
            peer: "[::1]:5000".parse().unwrap(),
            local: &local,
            minor: 1,
            request: Some(ReqView {
                method: b"GET",
                target: b"/p?q",
                headers: Some(&req),
                https: false,
            }),
            status: 503,
            upstream: Some("127.0.0.1:9".parse().unwrap()),
            response: true,
        };
        let cases = [
            ("%DOWNSTREAM_REMOTE_ADDRESS%", "[::1]:5000"),
            ("ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%;", "ip=::1;"),
            ("%DOWNSTREAM_REMOTE_PORT%", "5000"),
            ("%DOWNSTREAM_LOCAL_ADDRESS%", "10.0.0.1:8080"),
            ("%DOWNSTREAM_LOCAL_PORT%", "8080"),
            ("%PROTOCOL%", "HTTP/1.1"),
            ("%REQ(X-A)%", "hello"),
            ("%REQ(x-a):2%", "he"),
            ("a%REQ(x-missing)%b", "ab"),
            ("%REQ(x-missing?x-a)%", "hello"),
            (
                "%REQ(:path)% %REQ(:method)% %REQ(:authority)% %REQ(:scheme)%",
                "/p?q GET h.example http",
            ),
            ("%RESP(x-up)%", "1"),
            ("%RESPONSE_CODE%", "503"),
            ("%UPSTREAM_HOST%", "127.0.0.1:9"),
            ("100%% %PROTOCOL%", "100% HTTP/1.1"),
        ];
        for (v, want) in cases {
            let got = parse(v).unwrap().render(&cx, &resp).into_owned();
            assert_eq!(String::from_utf8(got).unwrap(), want, "{v}");
        }
    }
}
