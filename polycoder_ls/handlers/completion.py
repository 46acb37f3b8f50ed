"""textDocument/inlineCompletion (ghost text) and textDocument/completion (one item, for
clients without inline completion)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lsprotocol import types

if TYPE_CHECKING:
    from ..server import PolycoderLanguageServer

LABEL_CHARS = 60


def register(server: PolycoderLanguageServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(
        ls: PolycoderLanguageServer, params: types.InlineCompletionParams
    ) -> types.InlineCompletionList:
        result = await ls.complete(params.text_document.uri, params.position)
        if result is None:
            return types.InlineCompletionList(items=[])
        suggestion, replaced = result
        item = types.InlineCompletionItem(insert_text=suggestion.text, range=replaced)
        return types.InlineCompletionList(items=[item])


def register_fallback(server: PolycoderLanguageServer) -> None:
    """textDocument/completion, for clients without inline completion only: a client with both
    would ask twice per keystroke and each request would cancel the other."""

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
    async def completion(
        ls: PolycoderLanguageServer, params: types.CompletionParams
    ) -> types.CompletionList:
        result = await ls.complete(params.text_document.uri, params.position)
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
