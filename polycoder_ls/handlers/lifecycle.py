"""initialize / initialized / shutdown / exit, and exiting when the editor process dies."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from lsprotocol import types

from ..processes import process_alive
from . import completion

if TYPE_CHECKING:
    from ..server import PolycoderLanguageServer

log = logging.getLogger(__name__)

EDITOR_CHECK_SECONDS = 2.0


async def _exit_when_editor_dies(server: PolycoderLanguageServer, pid: int) -> None:
    while process_alive(pid):
        await asyncio.sleep(EDITOR_CHECK_SECONDS)
    log.info("editor process %d is gone; exiting", pid)
    server.exit_now(0)


def register(server: PolycoderLanguageServer) -> None:
    @server.feature(types.INITIALIZE)
    def initialize(ls: PolycoderLanguageServer, params: types.InitializeParams) -> None:
        ls.update_settings(params.initialization_options)
        text_document = params.capabilities.text_document
        if text_document is None or text_document.inline_completion is None:
            completion.register_fallback(ls)
        if params.process_id is not None and os.name == "posix":
            ls.editor_watch = asyncio.ensure_future(_exit_when_editor_dies(ls, params.process_id))

    @server.feature(types.INITIALIZED)
    async def initialized(ls: PolycoderLanguageServer, params: types.InitializedParams) -> None:
        ls.update_settings(await ls.fetch_client_settings())
        await ls.load_model()

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: PolycoderLanguageServer, params: None) -> None:
        ls.shutdown_requested = True
        ls.pipeline.jobs.cancel_all()
        ls.engine.stop()

    @server.feature(types.EXIT)
    def exit_(ls: PolycoderLanguageServer, params: None) -> None:
        ls.exit_now(0 if ls.shutdown_requested else 1)
