"""A real polycoder-ls over stdio, driven by pytest-lsp with real editors' capabilities."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
from fault_proxy import FaultProxy
from lsprotocol import types
from model_factory import build_model
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities
from reference import ReferenceModel
from vllm_server import API_KEY, VLLM_PYTHON, VllmServer

SERVER = [sys.executable, "-m", "polycoder_ls", "--stdio", "-v"]
EDITORS = {"vscode": "visual-studio-code", "neovim": "neovim@v0.11.0"}


class Editor:
    """What an editor does with the server, as short calls."""

    def __init__(self, client: LanguageClient, name: str) -> None:
        self.client = client
        self.name = name
        self.versions: dict[str, int] = {}

    async def start(
        self,
        settings: dict[str, Any],
        wait_ready: bool = True,
        encodings: list[str] | None = None,
        folders: list[str] | None = None,
    ) -> None:
        capabilities = client_capabilities(EDITORS[self.name])
        if encodings is not None:
            capabilities.general = types.GeneralClientCapabilities(position_encodings=encodings)
        workspace = [types.WorkspaceFolder(uri, uri.rsplit("/", 1)[-1]) for uri in folders or []]
        await self.client.initialize_session(
            types.InitializeParams(
                capabilities=capabilities,
                initialization_options=settings,
                workspace_folders=workspace or None,
            )
        )
        if wait_ready:
            await self.wait_for_state("ready")

    async def status(self) -> dict[str, Any]:
        return _plain(await self.client.protocol.send_request_async("polycoder/status", {}))

    async def wait_for_status(
        self, condition: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition(status := await self.status()):
            assert asyncio.get_running_loop().time() < deadline, f"still {status}"
            await asyncio.sleep(0.05)
        return status

    async def wait_for_state(self, *states: str, timeout: float = 60) -> dict[str, Any]:
        return await self.wait_for_status(lambda status: status["state"] in states, timeout)

    def open(self, uri: str, text: str, language: str = "python") -> None:
        self.versions[uri] = 1
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)
            )
        )

    def close(self, uri: str) -> None:
        self.client.text_document_did_close(
            types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri=uri))
        )

    def edit(self, uri: str, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        self.versions[uri] += 1
        change = types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(*start), types.Position(*end)), text=text
        )
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(
                    uri=uri, version=self.versions[uri]
                ),
                content_changes=[change],
            )
        )

    def inline_request(self, uri: str, line: int, character: int) -> asyncio.Future[Any]:
        """Send the request now; await the returned future for its result."""
        return asyncio.ensure_future(self._inline(uri, line, character))

    async def _inline(self, uri: str, line: int, character: int) -> Any:
        return await self.client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line, character),
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Automatic
                ),
            )
        )

    async def inline(self, uri: str, line: int, character: int) -> list[types.InlineCompletionItem]:
        result = await self.inline_request(uri, line, character)
        return list(result.items) if result is not None else []

    async def texts(self, uri: str, line: int, character: int) -> list[str]:
        return [item.insert_text for item in await self.inline(uri, line, character)]

    def configure(self, settings: dict[str, Any]) -> None:
        """Change settings the way VS Code does: pushed, and answered when pulled."""
        self.client.set_configuration(settings, section="polycoder")
        self.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"polycoder": settings})
        )


def _plain(value: Any) -> Any:
    """pygls gives custom results as namedtuple-like objects: make them dicts."""
    if hasattr(value, "_asdict"):
        return {key: _plain(item) for key, item in value._asdict().items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER), params=sorted(EDITORS))
async def lsp(lsp_client: LanguageClient, request: pytest.FixtureRequest):
    lsp_client.editor_name = request.param  # type: ignore[attr-defined]
    yield
    try:
        await asyncio.wait_for(lsp_client.shutdown_session(), 20)
    finally:
        server = lsp_client._server
        if server is not None and server.returncode is None:
            server.kill()


@pytest.fixture
def editor(lsp: LanguageClient) -> Editor:
    """A fresh server, spoken to with VS Code's or Neovim's capabilities."""
    return Editor(lsp, lsp.editor_name)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def reference(tiny_model: Path) -> ReferenceModel:
    return ReferenceModel(tiny_model)


@pytest.fixture(scope="session")
def remote_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vLLM's CPU attention needs a head size of 32 or more: hidden 256 over 8 heads."""
    return build_model(tmp_path_factory.mktemp("remote-model"), hidden=256, heads=8, layers=4)


@pytest.fixture(scope="session")
def remote_reference(remote_model: Path) -> ReferenceModel:
    return ReferenceModel(remote_model, bits=None)  # vLLM serves it in float32


@pytest.fixture(scope="session")
def vllm(remote_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real vLLM server (CPU), shared by the remote tests; it asks for an API key."""
    assert VLLM_PYTHON.exists(), f"no vLLM at {VLLM_PYTHON}: `make vllm-venv` installs it"
    server = VllmServer(remote_model, tmp_path_factory.mktemp("vllm") / "vllm.log", API_KEY)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(vllm: VllmServer):
    """The vLLM server behind a proxy that can fail on demand."""
    faults = FaultProxy(vllm.port)
    yield faults
    faults.close()
