"""Document synchronisation (incremental)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lsprotocol import types

if TYPE_CHECKING:
    from ..server import PolycoderLanguageServer

log = logging.getLogger(__name__)


def register(server: PolycoderLanguageServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: PolycoderLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
        document = params.text_document
        ls.documents.open(document.uri, document.language_id, document.version, document.text)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: PolycoderLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        document = ls.documents.get(uri)
        if document is None:
            log.warning("didChange for a document that is not open: %s", uri)
            return
        ls.engine.cancel(uri)
        encoding = ls.position_encoding
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                start = document.offset_at(
                    change.range.start.line, change.range.start.character, encoding
                )
                end = document.offset_at(
                    change.range.end.line, change.range.end.character, encoding
                )
                document.replace(start, end, change.text)
            else:
                document.replace(0, len(document.text), change.text)
        document.version = params.text_document.version

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: PolycoderLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.documents.close(uri)
        ls.cache.forget_document(uri)
        ls.engine.forget(uri)
