"""Document synchronisation (incremental)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lsprotocol import types

from ..pipeline import Change

if TYPE_CHECKING:
    from ..server import PolycoderLanguageServer

log = logging.getLogger(__name__)


def _change(change: types.TextDocumentContentChangeEvent) -> Change:
    if isinstance(change, types.TextDocumentContentChangePartial):
        start, end = change.range.start, change.range.end
        return Change(change.text, ((start.line, start.character), (end.line, end.character)))
    return Change(change.text)


def register(server: PolycoderLanguageServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: PolycoderLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
        document = params.text_document
        ls.pipeline.open(
            document.uri,
            document.language_id,
            document.version,
            document.text,
            ls.settings,
            ls.workspace_folders(),
        )

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: PolycoderLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
        document = params.text_document
        changes = [_change(change) for change in params.content_changes]
        known = ls.pipeline.change(
            document.uri,
            document.version,
            changes,
            ls.position_encoding,
            ls.settings,
            ls.workspace_folders(),
        )
        if not known:
            log.warning("didChange for a document that is not open: %s", document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: PolycoderLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.pipeline.close(params.text_document.uri)
