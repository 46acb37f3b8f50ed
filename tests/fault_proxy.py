"""A TCP proxy in front of the real vLLM server that fails the way networks and reverse
proxies fail: an HTTP 503, a connection reset in the middle of a stream, no answer at all.

`mode` applies to each connection as it is accepted; "pass" forwards bytes both ways.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

MODES = ("pass", "http503", "reset_streams", "silent")
_BODY = b'{"error": {"message": "upstream is restarting"}}'
SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BODY), _BODY)
)


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.close()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._open.add(sock)
        return sock

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            mode = self.mode
            threading.Thread(
                target=self._serve, args=(self._track(client), mode), daemon=True
            ).start()

    def _serve(self, client: socket.socket, mode: str) -> None:
        with contextlib.ExitStack() as closing:
            closing.callback(client.close)
            request = client.recv(65536)
            if mode == "silent":
                while client.recv(65536):  # read, never answer, until the client gives up
                    pass
                return
            if mode == "http503":
                client.sendall(SERVICE_UNAVAILABLE)
                return
            upstream = self._track(socket.create_connection(("127.0.0.1", self.upstream_port)))
            closing.callback(upstream.close)
            upstream.sendall(request)
            requests = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
            requests.start()
            cut = mode == "reset_streams" and request.startswith(b"POST")
            if self._answer(upstream, client, cut):
                self._reset(client, requests)

    def _answer(self, upstream: socket.socket, client: socket.socket, cut: bool) -> bool:
        """Forward the answer; with `cut`, stop after its first event (True), also when one
        chunk from upstream holds several events (a fast server sends them together)."""
        while chunk := _recv(upstream):
            event = chunk.find(b"data:")
            if cut and event >= 0:
                end = chunk.find(b"\n\n", event)
                client.sendall(chunk if end < 0 else chunk[: end + 2])
                return True
            client.sendall(chunk)
        return False

    def _reset(self, client: socket.socket, requests: threading.Thread) -> None:
        """Close with a TCP reset (the socket must be free of the reading thread first)."""
        client.shutdown(socket.SHUT_RD)
        requests.join()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            target.sendall(chunk)
        target.shutdown(socket.SHUT_WR)
