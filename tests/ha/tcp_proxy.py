"""A TCP proxy on 127.0.0.1 that can be paused: a network partition between one client and a server.

While paused, nothing passes in either direction: bytes already sent are held, new connections are
accepted and held too, so the client sees silence (its own timeouts fire), not a refusal. ``resume``
closes what was held; later connections pass again. Every socket closes with ``stop`` at the latest.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

POLL_SECONDS = 0.1
CHUNK = 65536


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL_SECONDS)
        self.port = int(self._listener.getsockname()[1])
        self._paused = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.connections = 0
        # What the client sent through: bytes, and the monotonic time of the last forwarded chunk.
        self.bytes_up = 0
        self.last_up: float | None = None

    def __enter__(self) -> TcpProxy:
        thread = threading.Thread(target=self._accept, name="tcp-proxy-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        with self._lock:
            held = list(self._sockets)
            self._sockets.clear()
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
        self._paused.clear()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            held = list(self._sockets)
            self._sockets.clear()
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._track(client)
            if self._paused.is_set():
                continue  # held: accepted, never answered
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            self._track(upstream)
            for source, target, up in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(target=self._pump, args=(source, target, up), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, target: socket.socket, up: bool) -> None:
        source.settimeout(POLL_SECONDS)
        while not self._stopped.is_set():
            if self._paused.is_set():
                self._paused_wait()
                continue
            try:
                data = source.recv(CHUNK)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if self._paused.is_set():
                self._paused_wait()  # the partition began during the read: these bytes never arrive
                break
            try:
                target.sendall(data)
            except OSError:
                break
            if up:
                self.bytes_up += len(data)
                self.last_up = time.monotonic()
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _paused_wait(self) -> None:
        while self._paused.is_set() and not self._stopped.is_set():
            self._stopped.wait(POLL_SECONDS)
