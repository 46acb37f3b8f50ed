"""HTTP to the remote server (stdlib only): JSON requests and server-sent event streams,
each on a connection that another thread can close at once (a cancel)."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class RemoteError(Exception):
    """The server could not be asked or did not answer well; `reason` is one line."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    @property
    def refused_key(self) -> bool:
        return self.status in (401, 403)

    @property
    def server_fault(self) -> bool:
        """The server is down, unreachable, slow or failing (not: it rejected this request)."""
        return self.status is None or self.status >= 500


class Closed(Exception):
    """The exchange was closed by `close()` (a cancel) while it was under way."""


@dataclass(frozen=True)
class Endpoint:
    """The base URL of the API (http(s)://host[:port]/path) and how to authenticate."""

    url: str
    api_key: str | None
    timeout_seconds: float

    def connection(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        return kind(parts.hostname or "", parts.port, timeout=self.timeout_seconds)

    def path(self, name: str) -> str:
        return urlsplit(self.url).path.rstrip("/") + "/" + name

    def headers(self, body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream"}
        if body:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


class Exchange:
    """One request and its answer on a connection of its own."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._connection: http.client.HTTPConnection | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """End the exchange now, from any thread: the server sees the connection close, and
        the thread reading the answer gets Closed."""
        with self._lock:
            self._closed = True
            connection = self._connection
        sock = connection.sock if connection is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _release(self) -> None:
        """Free the connection (by the thread that reads the answer)."""
        if self._connection is not None:
            self._connection.close()

    def _send(self, method: str, name: str, body: bytes | None) -> http.client.HTTPResponse:
        connection = self._endpoint.connection()
        with self._lock:
            if self._closed:
                raise Closed
            self._connection = connection
        headers = self._endpoint.headers(body is not None)
        try:
            connection.request(method, self._endpoint.path(name), body, headers)
            response = connection.getresponse()
            if response.status >= 400:
                raise RemoteError(_http_reason(response), response.status)
        except (OSError, http.client.HTTPException) as error:
            self._release()
            raise self._failure(error) from error
        except RemoteError:
            self._release()
            raise
        return response

    def _failure(self, error: Exception) -> Exception:
        if self._closed:  # by close(): the socket was shut down under the reading thread
            return Closed()
        return RemoteError(_transport_reason(error, self._endpoint.timeout_seconds))

    def get_json(self, name: str) -> Any:
        return self._read_json(self._send("GET", name, None))

    def post_json(self, name: str, body: bytes) -> Any:
        return self._read_json(self._send("POST", name, body))

    def _read_json(self, response: http.client.HTTPResponse) -> Any:
        try:
            return json.loads(response.read())
        except (OSError, http.client.HTTPException) as error:
            raise self._failure(error) from error
        except ValueError as error:
            raise (
                self._failure(error)
                if self._closed
                else RemoteError(f"the answer is not JSON ({error})")
            ) from error
        finally:
            self._release()

    def events(self, name: str, body: bytes) -> Generator[Any, None, None]:
        """POST `body` and yield each server-sent event's JSON data until `[DONE]`."""
        response = self._send("POST", name, body)
        try:
            while True:
                line = response.readline()
                if not line:
                    raise RemoteError("the connection closed before the answer ended")
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                yield json.loads(data)
        except (OSError, http.client.HTTPException) as error:
            raise self._failure(error) from error
        except ValueError as error:
            raise (
                self._failure(error)
                if self._closed
                else RemoteError(f"an event is not JSON ({error})")
            ) from error
        finally:
            self._release()


def _transport_reason(error: Exception, timeout: float) -> str:
    if isinstance(error, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s (remote.timeoutSeconds)"
    if isinstance(error, socket.gaierror):
        return f"unknown host ({error.strerror or error})"
    if isinstance(error, http.client.RemoteDisconnected | ConnectionResetError):
        return "the connection was reset"
    if isinstance(error, OSError) and error.strerror:
        return f"cannot connect ({error.strerror})"
    return f"{type(error).__name__}: {error}"


def _http_reason(response: http.client.HTTPResponse) -> str:
    """'HTTP 404: <the server's message>'."""
    try:
        raw = response.read(4096)
    except (OSError, http.client.HTTPException):
        raw = b""
    message = raw.decode("utf-8", "replace").strip()
    try:
        decoded = json.loads(raw)
        error = decoded.get("error", decoded) if isinstance(decoded, dict) else decoded
        message = str(error.get("message", error) if isinstance(error, dict) else error)
    except ValueError:
        pass
    first = message.split("\n", 1)[0][:200]
    return f"HTTP {response.status}" + (f": {first}" if first else f" {response.reason}")
