"""textDocument/inlineCompletion (ghost text) and textDocument/completion (one item, for
clients without inline completion)."""

from __future__ import annotations

import logging
from typing import Any

from lsprotocol import types

from ..postprocess import Suggestion
from ..server import PolycoderLanguageServer  # a runtime name: pygls reads handler annotations

log = logging.getLogger(__name__)

LABEL_CHARS = 60
ACCEPT_COMMAND = "polycoder.accept"
DID_ACCEPT = "polycoder/didAccept"


def accept_command(length: int) -> types.Command:
    """Run by the editor when the whole suggestion is accepted (local telemetry only)."""
    arguments: list[Any] = [length]
    return types.Command(
        title="PolyCoder suggestion accepted", command=ACCEPT_COMMAND, arguments=arguments
    )


def _record_acceptance(ls: PolycoderLanguageServer, length: Any, accepted: Any) -> None:
    if isinstance(length, int) and isinstance(accepted, int):
        ls.pipeline.metrics.record_acceptance(accepted, length)
    else:
        log.warning("ignored acceptance report: length %r, acceptedLength %r", length, accepted)


async def _complete(
    ls: PolycoderLanguageServer, uri: str, position: types.Position
) -> tuple[Suggestion, types.Range] | None:
    where = (position.line, position.character)
    version = ls.completion_version()
    completion = await ls.pipeline.complete(
        uri, where, ls.position_encoding, ls.settings, version, ls.workspace_folders()
    )
    if completion is None:
        return None
    start, end = (types.Position(*point) for point in (completion.start, completion.end))
    return completion.suggestion, types.Range(start, end)


def register(server: PolycoderLanguageServer) -> None:
    @server.command(ACCEPT_COMMAND)
    def accepted(ls: PolycoderLanguageServer, length: Any = None) -> None:
        _record_acceptance(ls, length, length)

    @server.feature(DID_ACCEPT)
    def did_accept(ls: PolycoderLanguageServer, params: Any) -> None:
        """params: {"length": n, "acceptedLength": m}; m < n when partly accepted."""
        _record_acceptance(
            ls, getattr(params, "length", None), getattr(params, "acceptedLength", None)
        )

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(
        ls: PolycoderLanguageServer, params: types.InlineCompletionParams
    ) -> types.InlineCompletionList:
        result = await _complete(ls, params.text_document.uri, params.position)
        if result is None:
            return types.InlineCompletionList(items=[])
        suggestion, replaced = result
        ls.pipeline.metrics.totals.shown += 1
        item = types.InlineCompletionItem(
            insert_text=suggestion.text,
            range=replaced,
            command=accept_command(len(suggestion.text)),
        )
        return types.InlineCompletionList(items=[item])


def register_fallback(server: PolycoderLanguageServer) -> None:
    """textDocument/completion, for clients without inline completion only: a client with both
    would ask twice per keystroke and each request would cancel the other."""

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
    async def completion(
        ls: PolycoderLanguageServer, params: types.CompletionParams
    ) -> types.CompletionList:
        result = await _complete(ls, params.text_document.uri, params.position)
        if result is None:
            return types.CompletionList(is_incomplete=True, items=[])
        suggestion, replaced = result
        first_line = suggestion.text.strip().split("\n")[0]
        item = types.CompletionItem(
            label=first_line[:LABEL_CHARS] or suggestion.text[:LABEL_CHARS],
            kind=types.CompletionItemKind.Snippet,
            detail="PolyCoder",
            documentation=types.MarkupContent(
                kind=types.MarkupKind.Markdown, value=f"```\n{suggestion.text}\n```"
            ),
            sort_text="0",
            insert_text_format=types.InsertTextFormat.PlainText,
            text_edit=types.TextEdit(range=replaced, new_text=suggestion.text),
        )
        return types.CompletionList(is_incomplete=True, items=[item])
