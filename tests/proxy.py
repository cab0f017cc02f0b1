"""A TCP proxy between the agent and S3 that counts bytes and can cut the network.

`cut()` drops every open connection and refuses new ones (the listening socket is closed, so a
connect gets ECONNREFUSED); `restore()` listens again on the same port. `before_forward`, when
set, sees every block the agent sends before S3 does (to act on S3 at a precise request).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from tests.servers import free_port


class FaultProxy:
    def __init__(self, target_url: str) -> None:
        host_port = target_url.split("://", 1)[1].rstrip("/")
        host, port = host_port.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = free_port()
        self.bytes_up = 0  # agent -> S3: what the agent sent
        self.content_md5_headers = 0  # requests that carried an integrity header
        self.before_forward: Callable[[bytes], None] | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while data := src.recv(256 * 1024):
                if upward:
                    with self._lock:
                        self.bytes_up += len(data)
                        self.content_md5_headers += data.lower().count(b"\r\ncontent-md5: ")
                    if self.before_forward is not None:
                        self.before_forward(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                with self._lock:
                    self._conns.discard(sock)

    def cut(self) -> None:
        """The network is gone: refuse new connections, reset the open ones."""
        if self._listener is not None:
            # close() alone does not wake a thread blocked in accept() on Linux (it would go on
            # accepting); shutdown() does.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()
