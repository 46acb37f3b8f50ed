"""The custom request polycoder/status."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..status import status_payload

if TYPE_CHECKING:
    from ..server import PolycoderLanguageServer

STATUS_METHOD = "polycoder/status"


def register(server: PolycoderLanguageServer) -> None:
    @server.feature(STATUS_METHOD)
    def status(ls: PolycoderLanguageServer, params: Any) -> dict[str, Any]:
        return status_payload(ls.engine.status, ls.settings, ls.pipeline.metrics)
