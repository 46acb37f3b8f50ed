import json
from pathlib import Path


def load_settings(path: Path) -> dict:
    """Read a JSON settings file; a missing file means no settings."""
    if not path.exists():
        return {}
    with path.open(encoding="utf-8") as handle:
        return json.
