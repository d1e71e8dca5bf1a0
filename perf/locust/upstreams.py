"""Upstreams for the locust scenario: one process, one event loop, several ports.

    python perf/locust/upstreams.py            # ports 18100-18104, see UPSTREAMS
    python perf/locust/upstreams.py --base-port 28100

Each port plays one service of perf/locust/envoy.yaml and answers every request with a body
of that service's size. Every response carries `x-upstream: <service>` so the locustfile can
check that the proxy routed the request to the right cluster. Request bodies (Content-Length
or chunked) are read and their size is reported in `x-received-bytes`.

It speaks just enough HTTP/1.1 for a load test (keep-alive, pipelining, both body framings)
and uses uvloop when it is installed. It prints `ready <ports>` on stdout once every port
listens, so a script can wait for that line instead of sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

# (offset from --base-port, service name, content type, body size in bytes)
UPSTREAMS = [
    (0, "web-a", "text/html; charset=utf-8", 1024),
    (1, "web-b", "text/html; charset=utf-8", 1024),
    (2, "assets", "application/javascript", 64 * 1024),
    (3, "api", "application/json", 512),
    (4, "api-canary", "application/json", 512),
]

_MAX_HEAD = 64 * 1024


def _body(name: str, content_type: str, size: int) -> bytes:
    if content_type == "application/json":
        prefix = b'{"service": "' + name.encode() + b'", "pad": "'
        suffix = b'"}\n'
        return prefix + b"x" * max(0, size - len(prefix) - len(suffix)) + suffix
    line = f"<p>{name}</p>\n".encode()
    return (line * (size // len(line) + 1))[:size]


class Upstream(asyncio.Protocol):
    """One connection: parse request heads and bodies, answer each with the canned response."""

    def __init__(self, head: bytes, payload: bytes) -> None:
        # `head` is the status line and fixed headers, each line ending in CRLF; the empty
        # line comes after the per-request `x-received-bytes`.
        self.head = head
        self.payload = payload
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        # Body state of the request being read: None (reading a head), an int (bytes of a
        # Content-Length body left) or "chunked".
        self.body: int | str | None = None
        self.received = 0
        self.method = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None and not self.transport.is_closing():
            if self.body is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > _MAX_HEAD:
                        self.transport.close()
                    return
                self._head(bytes(self.buf[:end]))
                del self.buf[: end + 4]
            elif isinstance(self.body, int):
                take = min(self.body, len(self.buf))
                del self.buf[:take]
                self.body -= take
                self.received += take
                if self.body:
                    return
                self._respond()
            elif not self._chunk():
                return

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        self.method = lines[0].split(b" ", 1)[0]
        self.received = 0
        length = 0
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if chunked:
            self.body = "chunked"
        elif length:
            self.body = length
        else:
            self._respond()

    def _chunk(self) -> bool:
        """Consumes one chunk (or the last chunk and trailers); False when more bytes are needed."""
        eol = self.buf.find(b"\r\n")
        if eol < 0:
            return False
        size = int(bytes(self.buf[:eol]).split(b";", 1)[0], 16)
        if size == 0:
            # Trailer lines, if any, then the empty line: the first CRLFCRLF from the size line's end.
            end = self.buf.find(b"\r\n\r\n", eol)
            if end < 0:
                return False
            del self.buf[: end + 4]
            self._respond()
            return True
        if len(self.buf) < eol + 2 + size + 2:
            return False
        del self.buf[: eol + 2 + size + 2]
        self.received += size
        return True

    def _respond(self) -> None:
        self.body = None
        assert self.transport is not None
        received = b"x-received-bytes: %d\r\n\r\n" % self.received
        payload = b"" if self.method == b"HEAD" else self.payload
        self.transport.writelines((self.head, received, payload))


def _response(name: str, content_type: str, size: int) -> tuple[bytes, bytes]:
    payload = _body(name, content_type, size)
    head = (
        f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {len(payload)}\r\nx-upstream: {name}\r\n"
    ).encode()
    return head, payload


async def serve(host: str, base_port: int) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for offset, name, content_type, size in UPSTREAMS:
        head, payload = _response(name, content_type, size)
        servers.append(
            await loop.create_server(
                lambda h=head, p=payload: Upstream(h, p),
                host,
                base_port + offset,
                reuse_address=True,
                backlog=4096,
            )
        )
    ports = " ".join(str(base_port + o) for o, *_ in UPSTREAMS)
    print(f"ready {ports}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--base-port", type=int, default=18100)
    args = p.parse_args()
    run = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    run(serve(args.host, args.base_port))


if __name__ == "__main__":
    main()
