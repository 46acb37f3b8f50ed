"""What engines tell the server outside a request (called from engine threads)."""

from __future__ import annotations

from ..engine_state import EngineStatus


class LoadEvents:
    """What happens to a model that loads in the background (called from engine threads)."""

    def download_progress(self, done_bytes: int, total_bytes: int) -> None:
        pass

    def background_load_ended(self, status: EngineStatus) -> None:
        """The configured model replaced the fallback (or could not be fetched)."""

    def status_changed(self, status: EngineStatus) -> None:
        """A remote server was lost or answers again."""
