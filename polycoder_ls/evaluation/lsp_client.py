"""Asking a polycoder-ls process for suggestions over stdio, as an editor does."""

from __future__ import annotations

import os
import sys
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from .. import __version__
from ..documents import UTF16, index_to_column
from .holes import Hole

EVAL_ROOT = "file:///polycoder-eval"
"""The workspace folder of every document the evaluation opens."""


class CompletionClient:
    """One polycoder-ls server process, started with `options` as initializationOptions, with
    one workspace folder (EVAL_ROOT)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._client = LanguageClient("polycoder-ls-eval", __version__)
        self._versions: dict[str, int] = {}

    async def start(self) -> None:
        await self._client.start_io(sys.executable, "-m", "polycoder_ls", "--stdio")
        await self._client.initialize_async(
            types.InitializeParams(
                capabilities=types.ClientCapabilities(),
                process_id=os.getpid(),
                initialization_options=self._options,
                workspace_folders=[types.WorkspaceFolder(EVAL_ROOT, "polycoder-eval")],
            )
        )
        self._client.initialized(types.InitializedParams())

    def open(self, uri: str, language_id: str, text: str) -> None:
        """Open a document, as an editor does for a file the user has open."""
        version = self._versions[uri] = self._versions.get(uri, 0) + 1
        item = types.TextDocumentItem(uri, language_id, version, text)
        self._client.text_document_did_open(types.DidOpenTextDocumentParams(item))

    def close(self, uri: str) -> None:
        identifier = types.TextDocumentIdentifier(uri)
        self._client.text_document_did_close(types.DidCloseTextDocumentParams(identifier))

    async def suggestion(self, hole: Hole, uri: str, language_id: str) -> str | None:
        """The text of the server's first inline completion item at the hole (its document
        opened at `uri` for the request), or None."""
        self.open(uri, language_id, hole.document)
        line, _ = hole.position
        line_prefix = hole.document[: hole.offset].rsplit("\n", 1)[-1]
        try:
            result = await self._client.text_document_inline_completion_async(
                types.InlineCompletionParams(
                    context=types.InlineCompletionContext(
                        trigger_kind=types.InlineCompletionTriggerKind.Invoked
                    ),
                    text_document=types.TextDocumentIdentifier(uri),
                    position=types.Position(
                        line, index_to_column(line_prefix, len(line_prefix), UTF16)
                    ),
                )
            )
        finally:
            self.close(uri)
        items = result.items if isinstance(result, types.InlineCompletionList) else result
        if not items:
            return None
        text = items[0].insert_text
        return text if isinstance(text, str) else text.value

    async def stop(self) -> None:
        try:
            await self._client.shutdown_async(None)
            self._client.exit(None)
        finally:
            await self._client.stop()
