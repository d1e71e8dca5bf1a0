"""Raw-socket HTTP/1.1 upstream used by the Envoy wire survey.

Records every byte received (per connection) and answers a response chosen
by a keyword in the request path:

  hang      -> never answers
  midclose  -> sends a partial header block, then closes
  closenow  -> closes right after reading the request (no response bytes)
  midbody   -> 200 with Content-Length: 10, sends 5 body bytes, closes
  badstatus -> malformed status line
  basic     -> 200 OK, Content-Length: 5, X-Up, Server, Date, Connection: keep-alive
  chunked   -> 200 OK, Transfer-Encoding: chunked (two chunks)
  eofbody   -> HTTP/1.1 200 OK, no length, body then close
  http10    -> HTTP/1.0 200 OK, no length, body then close
  r204      -> 204 No Content
  r304      -> 304 Not Modified (with ETag and Content-Length: 5, no body)
  headresp  -> 200 OK, Content-Length: 5 (body only if method != HEAD)
  reason    -> HTTP/1.1 200 Custom Reason
  upclose   -> 200 OK with Connection: close, then close
  multi     -> duplicate Set-Cookie headers, mixed-case header names
  (default) -> 200 OK, Content-Length: 2, "ok"

If the request carries "Expect: 100-continue" the upstream first sends
"HTTP/1.1 100 Continue".
"""
import asyncio
import threading
import time

LOG = []  # list of (conn_id, bytes)
LOCK = threading.Lock()
_conn_counter = [0]


def reset():
    with LOCK:
        LOG.clear()


def snapshot():
    with LOCK:
        return list(LOG)


def _record(cid, data):
    with LOCK:
        LOG.append((cid, data))


RESPONSES = {
    "basic": lambda m: (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\nServer: upstream\r\n"
                        b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nConnection: keep-alive\r\n\r\nhello", False),
    "chunked": lambda m: (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n"
                          b"3\r\nabc\r\n5\r\nde\r\nf\r\n0\r\n\r\n", False),
    "eofbody": lambda m: (b"HTTP/1.1 200 OK\r\nX-Up: 1\r\n\r\nbody-until-close", True),
    "http10": lambda m: (b"HTTP/1.0 200 OK\r\nX-Up: 1\r\n\r\nbody-until-close", True),
    "r204": lambda m: (b"HTTP/1.1 204 No Content\r\nX-Up: 1\r\n\r\n", False),
    "r304": lambda m: (b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\nContent-Length: 5\r\n\r\n", False),
    "headresp": lambda m: (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\n" + (b"" if m == b"HEAD" else b"hello"), False),
    "reason": lambda m: (b"HTTP/1.1 200 Custom Reason\r\nContent-Length: 2\r\n\r\nok", False),
    "upclose": lambda m: (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", True),
    "multi": lambda m: (b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Mixed-Case: v\r\nSet-Cookie: b=2\r\n"
                        b"content-length: 2\r\n\r\nok", False),
}
DEFAULT = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False)


async def _handle(reader, writer):
    _conn_counter[0] += 1
    cid = _conn_counter[0]
    buf = b""
    try:
        while True:
            # read header block
            while b"\r\n\r\n" not in buf:
                d = await reader.read(65536)
                if not d:
                    return
                _record(cid, d)
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            method, path = lines[0].split(b" ")[:2]
            hdrs = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(b":")
                hdrs[k.strip().lower()] = v.strip()
            if hdrs.get(b"expect", b"").lower() == b"100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            # read body
            if b"chunked" in hdrs.get(b"transfer-encoding", b"").lower():
                while True:
                    while b"\r\n" not in buf:
                        d = await reader.read(65536)
                        if not d:
                            return
                        _record(cid, d)
                        buf += d
                    szl, rest = buf.split(b"\r\n", 1)
                    sz = int(szl.split(b";")[0], 16)
                    if sz == 0:
                        while b"\r\n\r\n" not in b"\r\n" + rest:
                            d = await reader.read(65536)
                            if not d:
                                return
                            _record(cid, d)
                            rest += d
                        idx = (b"\r\n" + rest).index(b"\r\n\r\n")
                        buf = rest[idx + 2:]
                        break
                    while len(rest) < sz + 2:
                        d = await reader.read(65536)
                        if not d:
                            return
                        _record(cid, d)
                        rest += d
                    buf = rest[sz + 2:]
            elif b"content-length" in hdrs:
                n = int(hdrs[b"content-length"])
                while len(buf) < n:
                    d = await reader.read(65536)
                    if not d:
                        return
                    _record(cid, d)
                    buf += d
                buf = buf[n:]
            p = path.decode("latin1")
            if "hang" in p:
                await asyncio.sleep(3600)
                return
            if "closenow" in p:
                writer.close()
                return
            if "midbody" in p:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
                await writer.drain()
                await asyncio.sleep(0.2)
                writer.close()
                return
            if "badstatus" in p:
                writer.write(b"HTTP/1.1 abc Broken\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                writer.close()
                return
            if "midclose" in p:
                writer.write(b"HTTP/1.1 200 OK\r\nX-Partial: 1\r\n")
                await writer.drain()
                writer.close()
                return
            resp, close = DEFAULT
            for k, fn in RESPONSES.items():
                if k in p:
                    resp, close = fn(method)
                    break
            writer.write(resp)
            await writer.drain()
            if close:
                writer.close()
                return
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        _record(cid, b"<<EOF>>")


def start(port):
    """Start the upstream in a daemon thread; returns when listening."""
    ready = threading.Event()

    def run():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        _server = loop.run_until_complete(asyncio.start_server(_handle, "127.0.0.1", port))  # noqa: F841 (kept referenced while the loop runs)
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait()
    time.sleep(0.05)
