"""workspace/didChangeConfiguration: apply live; model/device/dtype/threads changes reload."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lsprotocol import types

from ..server import CONFIGURATION_SECTION

if TYPE_CHECKING:
    from ..server import PolycoderLanguageServer


async def _new_settings(ls: PolycoderLanguageServer, pushed: Any) -> Any:
    if isinstance(pushed, dict) and CONFIGURATION_SECTION in pushed:
        return pushed[CONFIGURATION_SECTION]
    pulled = await ls.fetch_client_settings()
    if pulled is None and isinstance(pushed, dict) and pushed:
        return pushed
    return pulled


def register(server: PolycoderLanguageServer) -> None:
    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(
        ls: PolycoderLanguageServer, params: types.DidChangeConfigurationParams
    ) -> None:
        if ls.update_settings(await _new_settings(ls, params.settings)):
            await ls.load_model()
        else:
            ls.report_window()
