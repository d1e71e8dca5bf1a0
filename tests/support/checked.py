"""A keep-alive HTTP/1.1 test upstream whose health-check answers and served statuses a test
changes as it goes (active health checks, outlier detection)."""

from __future__ import annotations

import socket
import threading
import time


class CheckedUpstream:
    """A keep-alive HTTP/1.1 upstream on port 0. `GET /healthz...` is a health check: it is
    recorded (raw head, connection number, time) and answered with `self.status` (and
    `self.extra` headers), or never answered while `self.hang`. Anything else is answered with
    `self.serve_status` (200) and the upstream's name, or never answered while `serve_hang`, or
    its connection closed unanswered while `serve_reset`. `refuse()` stops listening and closes
    its connections, so connects are refused; `listen()` takes the same port again. With `tcp`, a connection
    instead answers `pong` to each `ping`."""

    def __init__(self, name: str = "u", tcp: bool = False) -> None:
        self.name = name
        self.tcp = tcp
        self.status = 200
        self.extra = ""
        self.serve_extra = ""
        self.serve_status = 200
        self.serve_hang = False
        self.serve_reset = False
        self.hang = False
        self.checks: list[tuple[bytes, int, float]] = []
        self.served: list[str] = []
        self.connections = 0
        self.closed = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def refuse(self) -> None:
        # shutdown() wakes the thread blocked in accept() (a close alone would leave the socket
        # listening until then).
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def listen(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def close(self) -> None:
        self.refuse()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                s, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                n = self.connections
                self._socks.append(s)
            threading.Thread(target=self._serve, args=(s, n), daemon=True).start()

    def _serve(self, s: socket.socket, conn: int) -> None:
        buf = b""
        try:
            while True:
                if self.tcp:
                    d = s.recv(4096)
                    if not d:
                        return
                    buf += d
                    while b"ping" in buf:
                        _, _, buf = buf.partition(b"ping")
                        with self._lock:
                            self.checks.append((b"ping", conn, time.monotonic()))
                        s.sendall(b"pong")
                    continue
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ")[1].decode()
                if path.startswith("/healthz"):
                    with self._lock:
                        self.checks.append((head, conn, time.monotonic()))
                    if self.hang:
                        continue
                    status, extra, body = self.status, self.extra, b""
                else:
                    with self._lock:
                        self.served.append(path)
                    if self.serve_reset:
                        return
                    if self.serve_hang:
                        continue
                    status, extra, body = self.serve_status, self.serve_extra, self.name.encode()
                s.sendall(
                    f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body
                )
        except OSError:
            return
        finally:
            with self._lock:
                self.closed += 1
            s.close()
