"""The language server: typed state and the orchestration the thin handlers call."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Generator
from typing import Any, NoReturn

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from . import __version__
from .cache import CompletionCache
from .config import Settings, apply_settings
from .documents import Cursor, DocumentStore, cursor_at
from .engine import Engine
from .postprocess import Suggestion
from .status import LastRequest, Metrics

log = logging.getLogger(__name__)

# How long a request that arrives while the model loads waits for it.
LOAD_WAIT_SECONDS = 300.0
CONFIGURATION_SECTION = "polycoder"


class PolycoderProtocol(LanguageServerProtocol):
    """Document sync goes to our DocumentStore only: pygls's own copy would split every line
    on each keystroke and treats \\f and \\u2028 as line breaks, which LSP does not."""

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

    def __init__(self, engine: Engine) -> None:
        super().__init__(
            name="polycoder-ls",
            version=__version__,
            protocol_cls=PolycoderProtocol,
            max_workers=4,
        )
        self.settings = Settings()
        self.documents = DocumentStore()
        self.engine = engine
        self.cache = CompletionCache(self.settings.cache.size, self.settings.cache.ttl_seconds)
        self.metrics = Metrics()
        self.model_loaded: asyncio.Future[Any] | None = None
        self.shutdown_requested = False
        self.editor_watch: asyncio.Future[None] | None = None

    def exit_now(self, code: int) -> NoReturn:
        """Leave at once: a generation in progress must not keep the process (and its GPU
        memory) alive."""
        self.engine.stop()
        logging.shutdown()
        os._exit(code)

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
            self.show_message(f"polycoder-ls: {problem}", types.MessageType.Warning)
        if self.settings != previous:
            self.cache = CompletionCache(self.settings.cache.size, self.settings.cache.ttl_seconds)
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
        """(Re)load the configured model, showing work-done progress; errors are shown."""
        self.cache.clear()
        self.model_loaded = asyncio.wrap_future(self.engine.load(self.settings))
        async with self._progress(f"Loading {self.settings.model}"):
            status = await asyncio.shield(self.model_loaded)
        if status.fallback_from is not None:
            self.show_message(
                f"polycoder-ls: {status.error}. Serving the fallback model "
                f"'{self.settings.fallback_model}' instead (setting fallbackModel).",
                types.MessageType.Warning,
            )
        elif status.error is not None:
            self.show_message(f"polycoder-ls: {status.error}", types.MessageType.Error)

    def _progress(self, title: str) -> _WorkDoneProgress:
        window = self.client_capabilities.window
        enabled = window is not None and bool(window.work_done_progress)
        return _WorkDoneProgress(self, title, enabled)

    # Completion ---------------------------------------------------------------------------

    def cursor(self, uri: str, position: types.Position) -> tuple[Cursor, int] | None:
        document = self.documents.get(uri)
        if document is None:
            log.warning("completion requested for a document that is not open: %s", uri)
            return None
        if document.language_id in self.settings.disabled_languages:
            return None
        offset = document.offset_at(position.line, position.character, self.position_encoding)
        return cursor_at(document, offset), offset

    async def complete(
        self, uri: str, position: types.Position
    ) -> tuple[Suggestion, types.Range] | None:
        """The suggestion for the cursor at `position` and the range it replaces."""
        started = time.perf_counter()
        self.metrics.totals.requests += 1
        self.engine.cancel(uri)
        located = self.cursor(uri, position)
        if located is None:
            return None
        cursor, offset = located
        hit, suggestion = self.cache.lookup(uri, cursor)
        if hit:
            self.metrics.record(LastRequest(cache_hit=True, latency_ms=_ms_since(started)))
        else:
            version = self.documents.version(uri)
            suggestion = await self._generate(uri, cursor, started)
            if self.documents.version(uri) != version:
                return None  # the document changed while the model ran: the answer is stale
        if suggestion is None:
            return None
        return suggestion, self._replaced_range(uri, offset, suggestion)

    async def _generate(self, uri: str, cursor: Cursor, started: float) -> Suggestion | None:
        if not await self._model_ready():
            return None
        settings = self.settings
        future, cancel = self.engine.complete(uri, cursor, settings)
        try:
            outcome = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancel.set()
            self.metrics.record(LastRequest(cancelled=True, latency_ms=_ms_since(started)))
            raise
        self.metrics.record(LastRequest.of_generation(outcome.stats, _ms_since(started)))
        if outcome.stats.cancelled:
            return None
        if settings is self.settings:
            self.cache.store(uri, cursor, outcome.suggestion)
        return outcome.suggestion

    async def _model_ready(self) -> bool:
        if self.engine.status.state == "loading" and self.model_loaded is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.model_loaded), LOAD_WAIT_SECONDS)
            except TimeoutError:
                log.warning("model still loading after %.0f s; no suggestion", LOAD_WAIT_SECONDS)
        return self.engine.status.state == "ready"

    def _replaced_range(self, uri: str, offset: int, suggestion: Suggestion) -> types.Range:
        document = self.documents.get(uri)
        assert document is not None
        encoding = self.position_encoding
        start = document.position_at(offset, encoding)
        end = document.position_at(offset + suggestion.replaced_chars, encoding)
        return types.Range(types.Position(*start), types.Position(*end))


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


class _WorkDoneProgress:
    """`$/progress` begin/end around a block, when the client supports it."""

    def __init__(self, server: LanguageServer, title: str, enabled: bool) -> None:
        self._server, self._title, self._enabled = server, title, enabled
        self._token = str(uuid.uuid4())

    async def __aenter__(self) -> None:
        if not self._enabled:
            return
        progress = self._server.work_done_progress
        try:
            await asyncio.wait_for(progress.create_async(self._token), 10)
        except Exception as error:  # progress is cosmetic: never fail the load for it
            log.warning("progress not available: %r", error)
            self._enabled = False
            return
        progress.begin(self._token, types.WorkDoneProgressBegin(title=self._title))

    async def __aexit__(self, *exc_info: object) -> None:
        if self._enabled:
            self._server.work_done_progress.end(self._token, types.WorkDoneProgressEnd())


def create_server(engine: Engine | None = None) -> PolycoderLanguageServer:
    from .handlers import register_handlers

    server = PolycoderLanguageServer(engine or Engine())
    register_handlers(server)
    return server
