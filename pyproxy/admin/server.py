"""The admin HTTP/1.1 server: its own uvloop loop in a daemon thread, h11 for the protocol.

The admin port is for people and scrapers, not for traffic, so it lives apart from the engine's
workers: a stuck admin request can never delay a proxied one, and the engine's calls it makes
release the GIL and run in the loop's executor (see endpoints.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from contextlib import suppress
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

import h11
import uvloop

from pyproxy.admin import endpoints
from pyproxy.errors import BindError

if TYPE_CHECKING:
    from pyproxy.proxy import Proxy

log = logging.getLogger("pyproxy.admin")

_READ_SIZE = 64 * 1024


class AdminServer:
    """Envoy's admin interface on `host:port` for one `Proxy`."""

    def __init__(self, proxy: Proxy, host: str, port: int) -> None:
        self._proxy = proxy
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requested = False
        self._address: tuple[str, int] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound (host, port) while listening."""
        return self._address

    @property
    def open_connections(self) -> int:
        """Admin connections currently open (tests assert none leak past stop())."""
        return len(self._connections)

    def start(self) -> tuple[str, int]:
        """Binds and starts serving; returns the bound address once listening. Raises
        pyproxy.errors.BindError if the address cannot be bound."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("AdminServer.start() called twice")
            ready = threading.Event()
            failure: list[BaseException] = []
            self._thread = threading.Thread(
                target=self._run,
                args=(ready, failure),
                name="pyproxy-admin",
                daemon=True,
            )
            self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        assert self._address is not None
        return self._address

    def stop(self) -> None:
        """Closes the listener and every admin connection, stops the loop and joins its thread.
        Idempotent; safe from any thread, including a handler's own (then it does not join)."""
        with self._lock:
            thread, loop, stopping = self._thread, self._loop, self._stopping
            first = not self._stop_requested
            self._stop_requested = True
        if thread is None:
            return
        if first and loop is not None and stopping is not None:
            with suppress(RuntimeError):  # the loop already closed on its own
                loop.call_soon_threadsafe(stopping.set)
        if threading.current_thread() is not thread:
            thread.join()

    # --- loop thread -----------------------------------------------------------------------------

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(ready, failure))
            loop.run_until_complete(loop.shutdown_default_executor())
        except BaseException as err:  # reported to start() if it is still waiting
            if not ready.is_set():
                failure.append(err)
            else:
                log.exception("admin server loop failed")
        finally:
            self._address = None
            loop.close()
            ready.set()

    def _bind(self) -> socket.socket:
        # One socket on the first address the host resolves to: with port 0, binding every
        # resolved address (as asyncio.start_server does) could give each a different port.
        family, kind, proto, _, addr = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    async def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._on_connection, sock=self._bind())
        except OSError as err:
            where = f"{self._host}:{self._port}"
            failure.append(BindError(f"admin: cannot bind {where}: {err.strerror or err}"))
            ready.set()
            return
        with self._lock:
            self._loop, self._stopping = loop, stopping
            if self._stop_requested:  # stop() raced with start()
                stopping.set()
        host, port = server.sockets[0].getsockname()[:2]
        self._address = (host, port)
        self._context = endpoints.Context(self._proxy, loop)
        ready.set()
        try:
            await stopping.wait()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await server.wait_closed()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while await self._exchange(conn, reader, writer):
                conn.start_next_cycle()
        except h11.RemoteProtocolError as err:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status = err.error_status_hint
                body = f"{HTTPStatus(status).phrase}: {err}\n"
                with suppress(h11.LocalProtocolError, ConnectionError):
                    await self._send(conn, writer, endpoints.Response(status, body), head=False)
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            # stop() cancels open connections. Ending quietly is deliberate: asyncio's
            # start_server calls task.exception() on this task when it ends, which would log a
            # cancelled task as an error.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def _exchange(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Serves one request; True if the connection stays open for another."""
        event = await _next_event(conn, reader)
        if not isinstance(event, h11.Request):
            return False  # closed between requests
        method = event.method.decode("ascii")
        target = event.target.decode("ascii", "replace")
        while not isinstance(event, h11.EndOfMessage):  # the admin API takes no bodies
            event = await _next_event(conn, reader)
            if isinstance(event, h11.ConnectionClosed):
                return False
        try:
            response = await endpoints.dispatch(self._context, method, target)
        except Exception as err:  # a handler bug must not kill the connection
            log.exception("admin %s %s failed", method, target)
            response = endpoints.Response(500, f"internal error: {type(err).__name__}: {err}\n")
        await self._send(conn, writer, response, head=method == "HEAD")
        if response.after is not None:
            try:
                response.after()
            except Exception:
                log.exception("admin %s: post-response action failed", target)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    @staticmethod
    async def _send(
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        response: endpoints.Response,
        *,
        head: bool,
    ) -> None:
        # Envoy's admin headers, in its order. No content-length: like Envoy, h11 then frames
        # the body chunked for HTTP/1.1 clients (and close-delimited for HTTP/1.0 ones).
        headers = [
            ("content-type", response.content_type),
            ("cache-control", "no-cache, max-age=0"),
            ("x-content-type-options", "nosniff"),
            ("date", formatdate(usegmt=True)),
            ("server", "pyproxy"),
        ]
        reason = HTTPStatus(response.status).phrase.encode("ascii")
        data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        body = response.body.encode("utf-8")
        if body and not head:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        writer.write(data)
        await writer.drain()


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(_READ_SIZE))
