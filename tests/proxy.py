"""A TCP proxy between the agent and S3 that counts bytes, can cut the network, and can damage
one byte of one part on the wire.

`cut()` drops every open connection and refuses new ones (the listening socket is closed, so a
connect gets ECONNREFUSED); `restore()` listens again on the same port. `flip_byte_of_part(n)`
flips one byte in the body of the next UploadPart of part `n` (the HTTP requests going up are
framed by their Content-Length, so keep-alive connections work too). `before_forward`, when
set, sees every block the agent sends before S3 does (to act on S3 at a precise request).
`fail_ratio` answers that fraction of requests itself, 500 InternalError or 503 SlowDown in turn,
without forwarding them (S3 under load); `failed` counts them.
`bytes_up_by_path` counts what went up per request path (`/bucket/key`: one object's parts), and
`refuse_copies` answers every UploadPartCopy 501 NotImplemented, as a server without it would.
`sent` records when each block went up (monotonic time, bytes): the rate seen on the wire.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import unquote

from tests.servers import free_port

# The headers by which a request asks the server to prove its body: a digest to check, or (the
# algorithm alone) a request for the server's own checksum of what it received.
INTEGRITY = (b"content-md5", b"x-amz-checksum-crc32c", b"x-amz-sdk-checksum-algorithm")


class FaultProxy:
    def __init__(self, target_url: str) -> None:
        host_port = target_url.split("://", 1)[1].rstrip("/")
        host, port = host_port.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = free_port()
        self.bytes_up = 0  # agent -> S3: what the agent sent
        self.bytes_up_by_path: dict[str, int] = {}  # the same per request path (/bucket/key)
        self.sent: list[tuple[float, int]] = []  # (monotonic time, bytes) of each block up
        self.integrity_headers = 0  # Content-MD5 and checksum headers the requests carried
        self.before_forward: Callable[[bytes], None] | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._flip_part: int | None = None  # part number whose next upload gets a byte flipped
        self.flipped: list[int] = []  # parts damaged so far
        self.fail_ratio = 0.0
        self.failed = 0  # requests answered 5xx by the proxy itself
        self._rng = random.Random(15)
        self.refuse_copies = False  # answer every UploadPartCopy 501 NotImplemented, as some do
        self.copies_refused = 0

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

    def bytes_sent_between(self, start: float, end: float) -> int:
        """Bytes the agent sent up in the monotonic interval [start, end)."""
        with self._lock:
            return sum(n for at, n in self.sent if start <= at < end)

    def flip_byte_of_part(self, number: int) -> None:
        """Damage the body of the next UploadPart of part `number` (one byte, once)."""
        with self._lock:
            self._flip_part = number

    def answer_instead(self, head: bytes) -> bytes | None:
        """A 5xx answer for this request, or None to forward it (see `fail_ratio`)."""
        with self._lock:
            if self.fail_ratio <= 0 or self._rng.random() >= self.fail_ratio:
                return None
            self.failed += 1
            code, status = (
                ("InternalError", "500 Internal Server Error")
                if self.failed % 2
                else ("SlowDown", "503 Slow Down")
            )
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            "<Message>injected by the test proxy</Message></Error>"
        ).encode()
        if head.startswith(b"HEAD "):
            body = b""
        return (
            f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        framer = _RequestFramer(self, src) if upward else None
        try:
            while data := src.recv(256 * 1024):
                if framer is not None:
                    with self._lock:
                        self.bytes_up += len(data)
                        self.sent.append((time.monotonic(), len(data)))
                        self.integrity_headers += sum(
                            data.lower().count(b"\r\n" + name + b": ") for name in INTEGRITY
                        )
                    if self.before_forward is not None:
                        self.before_forward(data)
                    data = framer.feed(data)
                    if framer.answer is not None:
                        dst.sendall(data)
                        _answer_and_drain(src, framer.answer)
                        return
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


def _answer_and_drain(client: socket.socket, answer: bytes) -> None:
    """Answer the client ourselves; read what it still sends (a body) until it closes, so that
    closing does not reset the connection before it has read the answer."""
    client.sendall(answer)
    client.shutdown(socket.SHUT_WR)
    while client.recv(256 * 1024):
        pass


class _RequestFramer:
    """Follows the HTTP requests on one connection; flips a byte of the chosen part's body."""

    FLIP_AT = 1000  # body offset of the damaged byte

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client  # where a refusal is answered, the request never forwarded
        self.head = b""
        self.body_left = 0
        self.body_seen = 0
        self.damage = False
        self.answer: bytes | None = None  # the proxy answers this request itself
        self.path = ""  # of the request being forwarded, without its query

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            if self.body_left:
                take = data[: self.body_left]
                data = data[len(take) :]
                chunk = bytearray(take)
                at = self.FLIP_AT - self.body_seen
                if self.damage and 0 <= at < len(chunk):
                    chunk[at] ^= 0xFF
                    self.damage = False
                self.body_seen += len(take)
                self.body_left -= len(take)
                self._count(len(take))
                out += chunk
                continue
            self.head += data
            data = b""
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                break
            head, data = self.head[: end + 4], self.head[end + 4 :]
            self.head = b""
            self.answer = self.proxy.answer_instead(head)
            if self.answer is not None:
                return bytes(out)  # neither this request nor anything after it goes up
            self._start(head)
            self._count(len(head))
            if self._refused(head):
                continue
            out += head
        return bytes(out)

    def _refused(self, head: bytes) -> bool:
        """An UploadPartCopy while copies are refused: answered here (it has no body)."""
        if not self.proxy.refuse_copies or b"\r\nx-amz-copy-source:" not in head.lower():
            return False
        with self.proxy._lock:
            self.proxy.copies_refused += 1
        self.client.sendall(_REFUSAL)
        return True

    def _count(self, size: int) -> None:
        with self.proxy._lock:
            by_path = self.proxy.bytes_up_by_path
            by_path[self.path] = by_path.get(self.path, 0) + size

    def _start(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        self.body_left, self.body_seen = length, 0
        target = lines[0].split(" ")[1] if " " in lines[0] else ""
        self.path = unquote(target.split("?", 1)[0])
        with self.proxy._lock:
            number = self.proxy._flip_part
            wanted = (
                number is not None
                and lines[0].startswith("PUT ")
                and "uploadId=" in target
                and f"partNumber={number}" in target.replace("&", " ").split("?")[-1].split()
                and length > self.FLIP_AT
            )
            if wanted:
                assert number is not None
                self.proxy._flip_part = None
                self.proxy.flipped.append(number)
        self.damage = wanted


_REFUSAL_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code>'
    b"<Message>UploadPartCopy is not implemented here (test proxy)</Message></Error>"
)
_REFUSAL = (
    b"HTTP/1.1 501 Not Implemented\r\nContent-Type: application/xml\r\n"
    + f"Content-Length: {len(_REFUSAL_BODY)}\r\n\r\n".encode()
    + _REFUSAL_BODY
)
