"""The engine the settings choose: the in-process model, or a remote server when
`remote.url` is set. The pipeline and the server talk to this one object."""

from __future__ import annotations

from concurrent.futures import Future

from ..config import Settings
from ..documents import Cursor
from ..engine_state import CancelSignal, CompletionOutcome, EngineStatus
from . import Engine
from .events import LoadEvents
from .remote import RemoteEngine


class Backend:
    def __init__(self, local: Engine | None = None, remote: RemoteEngine | None = None) -> None:
        self.local = local or Engine()
        self.remote = remote or RemoteEngine()
        self._active: Engine | RemoteEngine = self.local

    @property
    def status(self) -> EngineStatus:
        return self._active.status

    def load(self, settings: Settings, events: LoadEvents | None = None) -> Future[EngineStatus]:
        """Load what `settings` ask for; switching backends frees the other one's model."""
        chosen: Engine | RemoteEngine = self.remote if settings.remote.url else self.local
        if chosen is not self._active:
            self._active.release()
            self._active = chosen
        return chosen.load(settings, events)

    def complete(
        self, key: str, cursor: Cursor, settings: Settings, cancel: CancelSignal
    ) -> Future[CompletionOutcome]:
        return self._active.complete(key, cursor, settings, cancel)

    def forget(self, key: str) -> None:
        self.local.forget(key)

    def warm(
        self, key: str, cursor: Cursor, settings: Settings, cancel: CancelSignal
    ) -> Future[bool]:
        return self._active.warm(key, cursor, settings, cancel)

    def stop(self, wait: bool = False) -> None:
        self.remote.stop(wait)
        self.local.stop(wait)
