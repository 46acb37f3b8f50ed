"""A model hub on 127.0.0.1 that serves one local model directory the way the Hugging Face hub
does (model info, HEAD and GET of resolve/), for tests of downloading. Weight files wait for
`release` so a test decides when a download can end."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 64 * 1024


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class FakeHub:
    def __init__(self, repo_id: str, directory: Path) -> None:
        self.repo_id = repo_id
        self.files = {
            path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()
        }
        self.release = threading.Event()
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(handler.path).path)
        self.requests.append(f"{handler.command} {path}")
        if path.startswith(f"/api/models/{self.repo_id}/tree/"):
            tree = [
                {"type": "file", "path": name, "size": len(data), "oid": _sha1(data)}
                for name, data in sorted(self.files.items())
            ]
            self._send(handler, json.dumps(tree).encode(), body, "application/json")
            return
        if path.startswith(f"/api/models/{self.repo_id}"):
            info = {
                "id": self.repo_id,
                "sha": COMMIT,
                "siblings": [{"rfilename": name} for name in sorted(self.files)],
            }
            self._send(handler, json.dumps(info).encode(), body, "application/json")
            return
        prefix = f"/{self.repo_id}/resolve/"
        if path.startswith(prefix):
            name = path[len(prefix) :].split("/", 1)[-1]
            if name in self.files:
                self._send(handler, self.files[name], body, "application/octet-stream", name)
                return
        handler.send_response(404)
        handler.send_header("X-Error-Code", "EntryNotFound")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        data: bytes,
        body: bool,
        content_type: str,
        name: str | None = None,
    ) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        if name is not None:
            handler.send_header("X-Repo-Commit", COMMIT)
            handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.end_headers()
        if not body:
            return
        weights = name is not None and name.endswith((".safetensors", ".bin"))
        for start in range(0, len(data), CHUNK):
            handler.wfile.write(data[start : start + CHUNK])
            if weights and start == 0:
                handler.wfile.flush()
                self.release.wait(120)
