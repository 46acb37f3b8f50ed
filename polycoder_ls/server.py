"""The language server: typed state and the orchestration the thin handlers call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from typing import Any, NoReturn

import attrs
import cattrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInternalError, JsonRpcInvalidParams
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from . import __version__
from .config import Settings, apply_settings
from .documents import DocumentStore
from .engine import Engine, LoadEvents
from .engine.backend import Backend
from .engine.cpu_kernels import remove_unfinished_builds
from .engine_state import EngineStatus, resolve_model, short_model_name
from .framing import Broken, MessageFramer, Skipped
from .framing import Event as FramingEvent
from .pipeline import CompletionPipeline
from .processes import end_children
from .prompt import window_notice

log = logging.getLogger(__name__)

CONFIGURATION_SECTION = "polycoder"
COMPLETION_METHODS = (types.TEXT_DOCUMENT_INLINE_COMPLETION, types.TEXT_DOCUMENT_COMPLETION)
READ_CHUNK_BYTES = 65536
MESSAGE_ID = re.compile(r'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")')


ANSWERED = object()
"""Stands for a request answered with an error while it was read: nothing more to do."""


def _reason(error: BaseException | None) -> str:
    """What was wrong with a message's params, in one line."""
    if isinstance(error, cattrs.ClassValidationError):
        return "; ".join(cattrs.transform_error(error))[:300]
    return str(error)[:300] if error is not None else "unreadable params"


class PolycoderProtocol(LanguageServerProtocol):
    """Document sync goes to our DocumentStore only: pygls's own copy would split every line
    on each keystroke and treats \\f and \\u2028 as line breaks, which LSP does not.

    Every request gets an answer: params that do not deserialize get InvalidParams (pygls logs
    and drops them), a request before `initialize` ServerNotInitialized, one after `shutdown`
    InvalidRequest."""

    initialize_seen = False

    def __init__(self, server: Any, converter: Any) -> None:
        super().__init__(server, converter)
        self.completion_read: contextvars.ContextVar[tuple[str, int | None] | None] = (
            contextvars.ContextVar("completion_read", default=None)
        )
        """While a completion request is handled and answered: its document and the document's
        version when the request was read. The handler starts, and its answer is sent, on
        later turns of the event loop, after edits read in the meantime: an answer for a
        text that has changed since is sent empty."""

    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except (JsonRpcInvalidParams, JsonRpcInternalError) as error:
            if "id" not in data or "method" not in data:
                raise
            message = f"invalid params for {data['method']}: {_reason(error.__cause__)}"
            self.reply_error(data["id"], types.ErrorCodes.InvalidParams, message)
            return ANSWERED

    def reply_error(self, msg_id: Any, code: int, message: str) -> None:
        log.warning("answered request %r with error %d: %s", msg_id, code, message)
        self._send_response(msg_id, error=types.ResponseError(code=code, message=message))

    def handle_message(self, message: Any) -> None:
        if message is ANSWERED:
            return
        method, msg_id = getattr(message, "method", None), getattr(message, "id", None)
        is_request = method is not None and msg_id is not None
        if method == types.INITIALIZE:
            self.initialize_seen = True
        elif is_request and not self.initialize_seen:
            code = types.ErrorCodes.ServerNotInitialized
            self.reply_error(msg_id, code, f"{method} before initialize")
            return
        if is_request and self._shutdown and method != types.EXIT:
            code = types.ErrorCodes.InvalidRequest
            self.reply_error(msg_id, code, f"{method} after shutdown")
            return
        if is_request:
            self.completion_read.set(self._read_completion(method, message))
        super().handle_message(message)

    def _read_completion(self, method: str | None, message: Any) -> tuple[str, int | None] | None:
        if method not in COMPLETION_METHODS:
            return None
        uri = message.params.text_document.uri
        return uri, self._documents().version(uri)

    def _documents(self) -> DocumentStore:
        assert isinstance(self._server, PolycoderLanguageServer)
        return self._server.pipeline.documents

    def _send_handler_result(self, future: Any, *, msg_id: Any) -> None:
        read = self.completion_read.get()
        if read is not None and not future.cancelled() and future.exception() is None:
            uri, version = read
            result = future.result()
            if self._documents().version(uri) != version and getattr(result, "items", None):
                log.debug("answer to %r is for a text edited since: sent empty", msg_id)
                future = concurrent.futures.Future()
                future.set_result(attrs.evolve(result, items=[]))
        super()._send_handler_result(future, msg_id=msg_id)

    def _user_handler(self, method: str, params: Any) -> Generator[Any, Any, None]:
        if (handler := self.fm.features.get(method)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: Any) -> Generator[Any, Any, None]:
        yield from self._user_handler(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: Any) -> Generator[Any, Any, None]:
        yield from self._user_handler(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: Any) -> Generator[Any, Any, None]:
        yield from self._user_handler(types.TEXT_DOCUMENT_DID_CLOSE, params)


class PolycoderLanguageServer(LanguageServer):
    """All server state, as typed attributes."""

    def __init__(self, engine: Backend) -> None:
        super().__init__(
            name="polycoder-ls",
            version=__version__,
            protocol_cls=PolycoderProtocol,
            max_workers=4,
        )
        self.settings = Settings()
        self.engine = engine
        self.pipeline = CompletionPipeline(engine, self.settings)
        self.reported_problems: set[str] = set()
        """The problems of the last settings object, so that each is shown once."""
        self.reported_window: str | None = None
        self.reported_remote_error = False
        self.shutdown_requested = False
        self.editor_watch: asyncio.Future[None] | None = None

    def report_server_error(self, error: Exception, source: Any) -> None:
        """A message that is no JSON: answered with ParseError when its id can be read."""
        if isinstance(error, json.JSONDecodeError) and (found := MESSAGE_ID.search(error.doc)):
            msg_id = json.loads(found.group(1))
            assert isinstance(self.protocol, PolycoderProtocol)
            self.protocol.reply_error(msg_id, types.ErrorCodes.ParseError, f"not JSON: {error}")
            return
        super().report_server_error(error, source)

    def start_io(self, stdin: Any = None, stdout: Any = None) -> None:
        """Serve the editor on stdin/stdout, framing messages with our resynchronising reader."""
        self._stop_event = stop_event = threading.Event()
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        descriptor = (stdin or sys.stdin.buffer).fileno()

        async def read() -> bytes:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, os.read, descriptor, READ_CHUNK_BYTES)

        try:
            asyncio.run(self._serve(read, stop_event))
        except BrokenPipeError:
            log.error("the editor closed the connection")
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self.shutdown()

    def start_tcp(self, host: str, port: int) -> None:
        """One editor per server: a second connection while one is active is closed at once
        (pygls would hand it the first editor's session and its replies)."""
        self._stop_event = stop_event = threading.Event()
        connected = False

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connected
            if connected:
                peer = writer.get_extra_info("peername")
                log.warning("refused a second connection from %s: an editor is connected", peer)
                writer.close()
                return
            connected = True
            self.protocol.set_writer(writer)
            await self._serve(lambda: reader.read(READ_CHUNK_BYTES), stop_event)
            self.shutdown()

        async def serve() -> None:
            self._server = await asyncio.start_server(connection, host, port)
            async with self._server:
                await self._server.serve_forever()

        try:
            asyncio.run(serve())
        except asyncio.CancelledError:
            log.debug("TCP server cancelled")

    async def _serve(
        self, read: Callable[[], Awaitable[bytes]], stop_event: threading.Event
    ) -> None:
        """Hand each framed message to the protocol until the stream ends."""
        with contextlib.suppress(NotImplementedError, RuntimeError):  # main thread, POSIX only
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._terminated)
        framer = MessageFramer()
        while not stop_event.is_set():
            data = await read()
            if not data:
                return
            for event in framer.feed(data, drained=len(data) < READ_CHUNK_BYTES):
                self._handle(event)

    def _handle(self, event: FramingEvent) -> None:
        if isinstance(event, Skipped):
            if not event.blank:
                log.warning("skipped %d bytes that belong to no message", event.size)
            return
        try:
            if isinstance(event, Broken):
                text = event.body.decode("utf-8", "replace")
                raise json.JSONDecodeError(event.reason, text, 0)
            self.protocol.handle_message(
                json.loads(event.body, object_hook=self.protocol.structure_message)
            )
        except Exception as error:
            log.exception("unable to handle a message")
            self.report_server_error(error, JsonRpcException)

    def exit_now(self, code: int) -> NoReturn:
        """Leave at once: a generation in progress must not keep the process (and its GPU
        memory) alive."""
        self.pipeline.jobs.cancel_all()
        self.engine.stop()
        end_children()  # a kernel build's compiler
        remove_unfinished_builds(also_this_process=True)
        logging.shutdown()
        os._exit(code)

    def completion_version(self) -> int | None:
        """In a completion handler: its document's version when the request was read."""
        assert isinstance(self.protocol, PolycoderProtocol)
        read = self.protocol.completion_read.get()
        return None if read is None else read[1]

    def workspace_folders(self) -> tuple[str, ...]:
        """The workspace folders' URIs (the root URI of a client without folders)."""
        folders = tuple(folder.uri for folder in self.workspace.folders.values())
        root = self.workspace.root_uri
        return folders or ((root,) if root else ())

    def _terminated(self) -> None:
        log.info("terminated (SIGTERM)")
        self.exit_now(0)

    @property
    def position_encoding(self) -> str:
        encoding = self.workspace.position_encoding or types.PositionEncodingKind.Utf16
        return str(getattr(encoding, "value", encoding))

    def show_message(self, message: str, kind: types.MessageType) -> None:
        log.log(logging.ERROR if kind == types.MessageType.Error else logging.WARNING, message)
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    # Settings and model -------------------------------------------------------------------

    def update_settings(self, raw: Any) -> bool:
        """Apply a settings object; report rejected values. True if the model must reload."""
        previous = self.settings
        self.settings, problems = apply_settings(previous, raw)
        for problem in problems:
            if problem not in self.reported_problems:  # the same object pushed and pulled
                self.show_message(f"polycoder-ls: {problem}", types.MessageType.Warning)
        self.reported_problems = set(problems)
        if self.settings != previous:
            self.pipeline.settings_changed(self.settings)
        return self.settings.needs_reload(previous)

    async def fetch_client_settings(self) -> Any:
        """The `polycoder` section of workspace/configuration, or None if the client has none."""
        capabilities = self.client_capabilities.workspace
        if capabilities is None or not capabilities.configuration:
            return None
        params = types.ConfigurationParams(
            items=[types.ConfigurationItem(section=CONFIGURATION_SECTION)]
        )
        try:
            answer = await asyncio.wait_for(self.workspace_configuration_async(params), 10)
        except Exception as error:  # a client that fails or never answers must not stop us
            log.warning("workspace/configuration failed: %r", error)
            return None
        return answer[0] if answer else None

    async def load_model(self) -> None:
        """(Re)load the configured model, showing work-done progress; problems are shown once.
        A model that must be downloaded first comes later, in the background, while the
        fallback model serves."""
        events = _BackgroundLoad(self, asyncio.get_running_loop())
        loaded = asyncio.wrap_future(self.engine.load(self.settings, events))
        self.pipeline.model_loading(loaded)
        async with self.work_progress(f"Loading {self.settings.model}"):
            status = await asyncio.shield(loaded)
        for notice in status.notices:
            self.show_message(f"polycoder-ls: {notice}", types.MessageType.Warning)
        self.report_model_problem(status)
        self.report_window()

    def report_window(self) -> None:
        """One message when the window in use is not the settings' (shown once per value)."""
        settings, limit = self.settings, self.engine.status.max_positions
        notice = window_notice(settings.context_tokens, settings.max_new_tokens, limit)
        if notice is not None and notice != self.reported_window:
            self.show_message(f"polycoder-ls: {notice}", types.MessageType.Warning)
        self.reported_window = notice

    def report_model_problem(self, status: EngineStatus) -> None:
        """One line when the configured model is not the one that serves, and will not be;
        for a remote server, when it is lost and when it answers again."""
        if status.backend == "remote":
            self.report_remote(status)
            return
        if status.error is None:
            if status.fallback_from is not None:
                log.info("serving %s", status.label)
            return
        if status.fallback_from is None or status.state != "ready":
            self.show_message(f"polycoder-ls: {status.error}", types.MessageType.Error)
            return
        configured = short_model_name(resolve_model(status.fallback_from))
        fallback = self.settings.fallback_model
        setting = " (fallbackModel)" if fallback and resolve_model(fallback) == status.model else ""
        self.show_message(
            f"polycoder-ls: serving {short_model_name(status.model)} instead of {configured}: "
            f"{status.error}{setting}",
            types.MessageType.Warning,
        )

    def report_remote(self, status: EngineStatus) -> None:
        if status.state == "error":
            retry = "; asking again in the background" if status.remote_url else ""
            self.show_message(f"polycoder-ls: {status.error}{retry}", types.MessageType.Error)
        elif status.state == "ready" and self.reported_remote_error:
            self.show_message(
                f"polycoder-ls: {status.remote_url} answers again", types.MessageType.Info
            )
        self.reported_remote_error = status.state == "error"

    def work_progress(self, title: str) -> _WorkDoneProgress:
        window = self.client_capabilities.window
        enabled = window is not None and bool(window.work_done_progress)
        return _WorkDoneProgress(self, title, enabled)


class _WorkDoneProgress:
    """`$/progress` begin/report/end, when the client supports it."""

    def __init__(self, server: LanguageServer, title: str, enabled: bool) -> None:
        self._server, self._title, self._enabled = server, title, enabled
        self._token = str(uuid.uuid4())
        self._begun = False

    async def begin(self) -> None:
        if not self._enabled:
            return
        progress = self._server.work_done_progress
        try:
            await asyncio.wait_for(progress.create_async(self._token), 10)
        except Exception as error:  # progress is cosmetic: never fail the load for it
            log.warning("progress not available: %r", error)
            self._enabled = False
            return
        progress.begin(self._token, types.WorkDoneProgressBegin(title=self._title, percentage=0))
        self._begun = True

    def report(self, message: str, percentage: int | None = None) -> None:
        if self._begun:
            value = types.WorkDoneProgressReport(message=message, percentage=percentage)
            self._server.work_done_progress.report(self._token, value)

    def end(self, message: str | None = None) -> None:
        if self._begun:
            self._begun = False
            value = types.WorkDoneProgressEnd(message=message)
            self._server.work_done_progress.end(self._token, value)

    async def __aenter__(self) -> None:
        await self.begin()

    async def __aexit__(self, *exc_info: object) -> None:
        self.end()


class _BackgroundLoad(LoadEvents):
    """A model downloaded and loaded while the fallback serves: progress with bytes, and the
    switch (or the reason it failed) once. Engine threads call in; the event loop acts."""

    def __init__(self, server: PolycoderLanguageServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server, self._loop = server, loop
        self._progress: _WorkDoneProgress | None = None
        self._begin: asyncio.Task[None] | None = None
        self._shown = (-1, 0.0)  # percentage and time of the last report sent
        self._latest = (0, 0)  # bytes done and in all, as last heard

    def download_progress(self, done_bytes: int, total_bytes: int) -> None:
        self._loop.call_soon_threadsafe(self._on_progress, done_bytes, total_bytes)

    def background_load_ended(self, status: EngineStatus) -> None:
        self._loop.call_soon_threadsafe(self._on_ended, status)

    def status_changed(self, status: EngineStatus) -> None:
        self._loop.call_soon_threadsafe(self._server.report_model_problem, status)

    def _on_progress(self, done: int, total: int) -> None:
        self._latest = (done, total)
        if self._progress is None:
            model = self._server.settings.model
            self._progress = self._server.work_progress(f"Downloading {model}")
            self._begin = asyncio.ensure_future(self._start(self._progress))
        else:
            self._report(self._progress, force=False)

    async def _start(self, progress: _WorkDoneProgress) -> None:
        await progress.begin()
        self._report(progress, force=True)

    def _report(self, progress: _WorkDoneProgress, force: bool) -> None:
        done, total = self._latest
        percentage = int(100 * done / total) if total else 0
        recent = time.monotonic() - self._shown[1] < 1
        if not force and percentage == self._shown[0] and recent:
            return
        self._shown = (percentage, time.monotonic())
        progress.report(f"{done / 1e6:.1f} of {total / 1e6:.1f} MB", percentage)

    def _on_ended(self, status: EngineStatus) -> None:
        if self._progress is not None:
            self._progress.end()
        self._server.pipeline.model_replaced()
        self._server.report_model_problem(status)


def create_server(engine: Engine | None = None) -> PolycoderLanguageServer:
    """`engine`: the in-process engine (a remote one is used when the settings ask)."""
    from .handlers import register_handlers

    server = PolycoderLanguageServer(Backend(engine))
    register_handlers(server)
    return server
