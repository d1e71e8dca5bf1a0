"""A recording HTTP/1.1 upstream for tests: asyncio on its own thread, bound to port 0.

Every request is recorded (method, target, headers in wire order with their original case,
body length and sha256). Behaviour is chosen by the request path:

- ``/delay/<ms>/...``      answer after ``ms`` milliseconds
- ``/status/<code>/...``   answer with that status
- ``/bytes/<n>``           stream ``n`` bytes of ``b"x"`` with content-length
- ``/chunked/<n>``         stream ``n`` bytes chunked, in 4 KiB chunks
- ``/close/<n>``           ``n`` bytes with no length, then close (close-delimited)
- ``/hang``                read the request and never answer
- ``/reset``               close the connection without answering
- anything else            200 with a JSON echo of the request

Responses to every request carry ``x-upstream-port`` so tests can tell which upstream served it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import dataclass, field


@dataclass
class Recorded:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body_len: int
    body_sha256: str

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


@dataclass
class Upstream:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    connections: int = 0
    open_connections: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.AbstractServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Upstream:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()

            async def main() -> None:
                self._server = await asyncio.start_server(self._serve, self.host, self.port)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()
                async with self._server:
                    await self._server.serve_forever()

            try:
                self._loop.run_until_complete(main())
            except (asyncio.CancelledError, RuntimeError):
                pass

        self._thread = threading.Thread(target=run, daemon=True, name="test-upstream")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("test upstream did not start")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        def close() -> None:
            server.close()
            for t in asyncio.all_tasks(loop):
                t.cancel()

        loop.call_soon_threadsafe(close)
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
            self.open_connections += 1
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
                headers: list[tuple[str, str]] = []
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").rstrip("\r\n").partition(":")
                    headers.append((k, v.strip()))
                lower = {k.lower(): v for k, v in headers}
                sha = hashlib.sha256()
                n = 0
                if "content-length" in lower:
                    remaining = int(lower["content-length"])
                    while remaining:
                        chunk = await reader.read(min(remaining, 65536))
                        if not chunk:
                            return
                        sha.update(chunk)
                        n += len(chunk)
                        remaining -= len(chunk)
                elif lower.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readline()).split(b";")[0].strip(), 16)
                        if size == 0:
                            while (await reader.readline()) not in (b"\r\n", b""):
                                pass
                            break
                        data = await reader.readexactly(size)
                        await reader.readexactly(2)
                        sha.update(data)
                        n += size
                rec = Recorded(method, target, version, headers, n, sha.hexdigest())
                with self._lock:
                    self.requests.append(rec)
                keep = await self._respond(rec, writer)
                if not keep or lower.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        except asyncio.CancelledError:
            # stop() cancels handlers still waiting (/hang): ending quietly is the point.
            return
        finally:
            with self._lock:
                self.open_connections -= 1
            writer.close()

    async def _respond(self, rec: Recorded, w: asyncio.StreamWriter) -> bool:
        parts = rec.target.split("?")[0].strip("/").split("/")
        head = f"x-upstream-port: {self.port}\r\n"
        kind = parts[0] if parts else ""
        if kind == "delay" and len(parts) > 1:
            await asyncio.sleep(int(parts[1]) / 1000)
            kind = ""
        if kind == "hang":
            await asyncio.sleep(3600)
            return False
        if kind == "reset":
            return False
        if kind == "bytes":
            n = int(parts[1])
            w.write(f"HTTP/1.1 200 OK\r\n{head}content-length: {n}\r\n\r\n".encode())
            block = b"x" * 65536
            while n:
                k = min(n, len(block))
                w.write(block[:k])
                await w.drain()
                n -= k
            return True
        if kind == "chunked":
            n = int(parts[1])
            w.write(f"HTTP/1.1 200 OK\r\n{head}transfer-encoding: chunked\r\n\r\n".encode())
            while n:
                k = min(n, 4096)
                w.write(b"%x\r\n" % k + b"y" * k + b"\r\n")
                await w.drain()
                n -= k
            w.write(b"0\r\n\r\n")
            await w.drain()
            return True
        if kind == "close":
            n = int(parts[1])
            w.write(f"HTTP/1.1 200 OK\r\n{head}connection: close\r\n\r\n".encode() + b"z" * n)
            await w.drain()
            return False
        status = int(parts[1]) if kind == "status" and len(parts) > 1 else 200
        body = json.dumps(
            {
                "method": rec.method,
                "target": rec.target,
                "headers": rec.headers,
                "body_len": rec.body_len,
                "body_sha256": rec.body_sha256,
            }
        ).encode()
        if rec.method == "HEAD" or status in (204, 304):
            w.write(f"HTTP/1.1 {status} X\r\n{head}content-length: {len(body)}\r\n\r\n".encode())
        else:
            w.write(
                f"HTTP/1.1 {status} X\r\n{head}content-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
        await w.drain()
        return True
