"""The thin LSP layer: each handler turns params into a core call and the result into
lsprotocol types."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import completion, configuration, lifecycle, status, sync

if TYPE_CHECKING:
    from ..server import PolycoderLanguageServer


def register_handlers(server: PolycoderLanguageServer) -> None:
    for module in (lifecycle, sync, completion, configuration, status):
        module.register(server)
