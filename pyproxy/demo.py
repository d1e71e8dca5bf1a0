"""A tiny demo upstream: answers every request with `200` and a line naming the request.

    python -m pyproxy.demo --port 8080

It speaks just enough HTTP/1.1 for `make run` and manual tries (keep-alive, Content-Length
bodies, chunked bodies by closing afterwards); it is not a test server and not a benchmark target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

__all__ = ["DemoProtocol", "main", "serve"]

_MAX_HEAD = 64 * 1024


class DemoProtocol(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.buffer = bytearray()
        self.body_left = 0
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            if self.body_left:
                eaten = min(self.body_left, len(self.buffer))
                del self.buffer[:eaten]
                self.body_left -= eaten
                if self.body_left:
                    return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self._respond(431, b"request header too large\n", close=True)
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            self._handle(head)

    def _handle(self, head: str) -> None:
        request_line, *header_lines = head.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3:
            self._respond(400, b"bad request line\n", close=True)
            return
        method, target, version = parts
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            close = True  # not worth a chunked decoder here: answer, then close
        else:
            with contextlib.suppress(ValueError):
                self.body_left = int(headers.get("content-length", "0"))
        body = f"Hello from the pyproxy demo upstream ({self.name}): {method} {target}\n"
        self._respond(200, body.encode(), close=close)

    def _respond(self, status: int, body: bytes, *, close: bool) -> None:
        assert self.transport is not None
        reason = {200: "OK", 400: "Bad Request", 431: "Request Header Fields Too Large"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "content-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\n"
            f"x-demo-upstream: {self.name}\r\n"
            + ("connection: close\r\n" if close else "")
            + "\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)
        if close:
            self.transport.close()


async def serve(host: str, port: int, name: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: DemoProtocol(name), host, port, reuse_address=True)
    bound = server.sockets[0].getsockname()
    print(f"pyproxy demo upstream {name!r} listening on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pyproxy.demo", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (printed)")
    p.add_argument("--name", default="demo", help="named in the body and x-demo-upstream")
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, args.name))


if __name__ == "__main__":
    main()
