//! Message body framing: decoding what a peer sends and encoding what we send.
//!
//! Bodies are streamed: the decoder hands out whatever body bytes the read buffer holds (never
//! more than the buffer), so a 100 MB upload passes through a bounded buffer. Chunked bodies are
//! decoded and re-encoded with our own chunk boundaries, as Envoy does; HTTP/1 trailers are read
//! and dropped (Envoy's default without `enable_trailers`).

use bytes::{Buf, BytesMut};

use super::head::is_tchar;

/// How a message's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `content-length: n`.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Until the peer closes (responses only).
    Close,
}

/// A body framing violation (bad chunk size line, missing CRLF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    Close,
    Done,
}

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The first `n` bytes of the buffer are body bytes (never 0). The caller takes them
    /// (copies them out and `advance`s the buffer) before it decodes again: no `Bytes` handle,
    /// with its reference count, is made for bytes that are copied at once.
    Data(usize),
    /// More bytes are needed.
    NeedMore,
    /// The body is complete.
    End,
}

/// Incremental body decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
}

/// Longest chunk-size or trailer line (without its CRLF) we accept, however its bytes arrive.
const MAX_CHUNK_LINE: usize = 4096;

impl Decoder {
    /// A decoder for `framing`.
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Decoder { state }
    }

    /// Whether the body ends only when the peer closes.
    pub fn is_close_delimited(&self) -> bool {
        self.state == State::Close
    }

    /// Called when the peer closed: completes a close-delimited body, else the body is truncated.
    pub fn on_eof(&mut self) -> Result<(), BodyError> {
        match self.state {
            State::Close | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(BodyError),
        }
    }

    /// Takes the next piece of body out of `buf`, at most `max` bytes of data.
    pub fn decode(&mut self, buf: &mut BytesMut, max: usize) -> Result<Decoded, BodyError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(rem) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (rem.min(buf.len() as u64) as usize).min(max);
                    let rem = rem - n as u64;
                    self.state = if rem == 0 {
                        State::Done
                    } else {
                        State::Length(rem)
                    };
                    return Ok(Decoded::Data(n));
                }
                State::Close => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = buf.len().min(max);
                    return Ok(Decoded::Data(n));
                }
                State::ChunkSize => match parse_chunk_size(buf)? {
                    Some((used, size)) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    None => {
                        // Room for a line of the limit and its CR, the LF still to come.
                        if buf.len() > MAX_CHUNK_LINE + 1 {
                            return Err(BodyError);
                        }
                        return Ok(Decoded::NeedMore);
                    }
                },
                State::ChunkData(rem) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (rem.min(buf.len() as u64) as usize).min(max);
                    let rem = rem - n as u64;
                    self.state = if rem == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(rem)
                    };
                    return Ok(Decoded::Data(n));
                }
                State::ChunkDataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError);
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    // Trailer lines until an empty line; checked as Envoy does, then dropped.
                    // Each must end in CRLF: a bare LF is refused, as in the chunk-size line.
                    match memchr::memchr(b'\n', buf) {
                        Some(i) if i == 0 || buf[i - 1] != b'\r' => return Err(BodyError),
                        // `i` is the LF's index: the line is `i - 1` bytes before its CR.
                        Some(i) if i - 1 > MAX_CHUNK_LINE => return Err(BodyError),
                        Some(1) => {
                            buf.advance(2);
                            self.state = State::Done;
                        }
                        Some(i) => {
                            if !trailer_line_ok(&buf[..i - 1]) {
                                return Err(BodyError);
                            }
                            buf.advance(i + 1);
                        }
                        None => {
                            if buf.len() > MAX_CHUNK_LINE + 1 {
                                return Err(BodyError);
                            }
                            return Ok(Decoded::NeedMore);
                        }
                    }
                }
            }
        }
    }
}

/// Parses a chunk-size line strictly: 1 to 16 hex digits, optional whitespace and
/// `;extension`s with no control characters (HTAB aside), then CRLF. An empty size, a bare LF
/// or a control byte in an extension is an error, so we never frame a body differently from
/// a proxy in front of us (the chunk-extension smuggling class). Returns (line length, size).
fn parse_chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, BodyError> {
    let mut size: u64 = 0;
    let mut digits = 0;
    let mut i = 0;
    while i < buf.len() {
        let d = match buf[i] {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        digits += 1;
        if digits > 16 {
            return Err(BodyError);
        }
        size = (size << 4) | u64::from(d);
        i += 1;
    }
    if i == buf.len() {
        return Ok(None);
    }
    // After the size only whitespace, an extension or the line's end (`0x5` is no size).
    if digits == 0 || !matches!(buf[i], b' ' | b'\t' | b';' | b'\r') {
        return Err(BodyError);
    }
    while i < buf.len() {
        if i > MAX_CHUNK_LINE {
            return Err(BodyError);
        }
        match buf[i] {
            b'\r' => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((i + 2, size))),
                    Some(_) => Err(BodyError),
                };
            }
            b'\t' => {}
            b if b < 0x20 || b == 0x7f => return Err(BodyError),
            _ => {}
        }
        i += 1;
    }
    Ok(None)
}

/// Whether a trailer line (without its CRLF) is one Envoy's codec takes: `name: value` with a
/// token for a name, or a continuation of the one before (it starts with a space or tab), and
/// no control character but HTAB in the value.
fn trailer_line_ok(line: &[u8]) -> bool {
    let value = match line.first() {
        Some(b' ' | b'\t') => line,
        _ => match memchr::memchr(b':', line) {
            Some(c) if c > 0 && line[..c].iter().all(|&b| is_tchar(b)) => &line[c + 1..],
            _ => return false,
        },
    };
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Appends `data` as one chunk of a chunked body.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut hex = [0u8; 16];
    let mut n = data.len();
    let mut i = hex.len();
    while n > 0 {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(d: &mut Decoder, buf: &mut BytesMut) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        loop {
            match d.decode(buf, 3).unwrap() {
                Decoded::Data(n) => {
                    out.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                }
                Decoded::NeedMore => return (out, false),
                Decoded::End => return (out, true),
            }
        }
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let mut d = Decoder::new(Framing::Chunked);
        let mut b =
            BytesMut::from(&b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT"[..]);
        assert_eq!(drain(&mut d, &mut b), (b"hello world".to_vec(), true));
        assert_eq!(&b[..], b"NEXT");
    }

    #[test]
    fn chunked_split_anywhere() {
        let wire = b"5\r\nhello\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            let mut d = Decoder::new(Framing::Chunked);
            let mut b = BytesMut::from(&wire[..cut]);
            let (mut got, done) = drain(&mut d, &mut b);
            assert!(!done);
            b.extend_from_slice(&wire[cut..]);
            let (rest, done) = drain(&mut d, &mut b);
            got.extend(rest);
            assert!(done, "cut at {cut}");
            assert_eq!(got, b"hello");
        }
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        // Regression: an empty size line was read as the last chunk and a bare LF inside a
        // chunk extension was accepted, letting a body smuggle a request past a front proxy.
        let cases: &[&[u8]] = &[
            b"zz\r\n",
            b"\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            b"2;\nxx\r\nab\r\n0\r\n\r\n",
            b"2;ext\x01\r\nab\r\n0\r\n\r\n",
            b"2\nab\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"2\r\nab\r\n0\r\nx-t: 1\n\r\n",
            b"2\r\nabXX0\r\n\r\n",
            // Regression: a size followed by anything but whitespace, `;` or CRLF was read
            // as the digits before it: `0x5` as the last chunk, smuggling what followed.
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5x\r\nhello\r\n0\r\n\r\n",
            // Trailer lines Envoy refuses: no colon, a bad name, a control byte.
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\nx t: 1\r\n\r\n",
            b"0\r\nx-t : 1\r\n\r\n",
            b"0\r\n: 1\r\n\r\n",
            b"0\r\nx(t: 1\r\n\r\n",
            b"0\r\nx-t: a\x01b\r\n\r\n",
            b"0\r\nx-t: a\x7fb\r\n\r\n",
            b"0\r\nx-t: a\rb\r\n\r\n",
        ];
        for wire in cases {
            let mut d = Decoder::new(Framing::Chunked);
            let mut b = BytesMut::from(*wire);
            let r = (0..8).try_for_each(|_| d.decode(&mut b, 100).map(|_| ()));
            assert_eq!(r, Err(BodyError), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn chunk_lines_and_trailers_envoy_takes() {
        for wire in [
            &b"5 x\r\nhello\r\n0\r\n\r\n"[..],
            b"5 ;a\r\nhello\r\n0\r\n\r\n",
            b"5 \t ;a=b\r\nhello\r\n0\r\n\r\n",
            b"5;\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-t:\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-t: 1\r\n folded\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-t: a\x80b\tc\r\ny: 2\r\n\r\n",
        ] {
            let mut d = Decoder::new(Framing::Chunked);
            let mut b = BytesMut::from(wire);
            let (got, end) = drain(&mut d, &mut b);
            assert_eq!((&got[..], end), (&b"hello"[..], true), "{wire:?}");
        }
    }

    #[test]
    fn a_long_chunk_line_is_refused_whether_it_arrives_whole_or_in_pieces() {
        // (wire, where its longest line ends (its CR), whether it is within the limit)
        let ext = |n: usize| {
            let w = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(n - 2));
            (w, n)
        };
        let trailer = |n: usize| {
            let w = format!("0\r\nx: {}\r\n\r\n", "t".repeat(n - 3));
            (w, 3 + n)
        };
        let cases = [
            (ext(MAX_CHUNK_LINE + 1), false),
            (trailer(MAX_CHUNK_LINE + 1), false),
            // Lines of exactly the limit (before their CRLF) pass.
            (ext(MAX_CHUNK_LINE), true),
            (trailer(MAX_CHUNK_LINE), true),
        ];
        for ((wire, cr), ok) in cases {
            let w = wire.as_bytes();
            assert_eq!(w[cr], b'\r');
            // Whole, in pieces, and cut between the long line's CR and its LF.
            let splits: [Vec<&[u8]>; 4] = [
                vec![w],
                w.chunks(1000).collect(),
                w.chunks(7).collect(),
                vec![&w[..cr + 1], &w[cr + 1..]],
            ];
            for reads in splits {
                let mut d = Decoder::new(Framing::Chunked);
                let mut b = BytesMut::new();
                let mut outcome = Ok(Decoded::NeedMore);
                for p in &reads {
                    b.extend_from_slice(p);
                    outcome = loop {
                        match d.decode(&mut b, usize::MAX) {
                            Ok(Decoded::Data(n)) => b.advance(n),
                            other => break other,
                        }
                    };
                    if outcome != Ok(Decoded::NeedMore) {
                        break;
                    }
                }
                let want = if ok { Ok(Decoded::End) } else { Err(BodyError) };
                let first = reads[0].len();
                assert_eq!(outcome, want, "first read {first} bytes, CR at {cr}");
            }
        }
    }

    #[test]
    fn length_stops_at_boundary() {
        let mut d = Decoder::new(Framing::Length(4));
        let mut b = BytesMut::from(&b"abcdGET"[..]);
        assert_eq!(drain(&mut d, &mut b), (b"abcd".to_vec(), true));
        assert_eq!(&b[..], b"GET");
    }

    #[test]
    fn close_delimited_ends_on_eof_only() {
        let mut d = Decoder::new(Framing::Close);
        assert!(d.on_eof().is_ok());
        let mut d = Decoder::new(Framing::Length(3));
        assert!(d.on_eof().is_err());
    }

    #[test]
    fn encodes_chunks() {
        let mut out = Vec::new();
        encode_chunk(&mut out, &[b'x'; 26]);
        assert!(out.starts_with(b"1a\r\n"));
    }
}
