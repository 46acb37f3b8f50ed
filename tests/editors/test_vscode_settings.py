"""The VS Code extension's settings mirror the server's configuration tree exactly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from polycoder_ls.config import DTYPES, MULTILINE_MODES, CacheSettings, Settings, camel_case

PACKAGE_JSON = Path(__file__).parents[2] / "editors" / "vscode" / "package.json"
ENUMS = {"dtype": list(DTYPES), "multiline": list(MULTILINE_MODES)}
NULLABLE_STRINGS = {"fallbackModel"}


def _schema(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str) and name in NULLABLE_STRINGS:
        return {"type": ["string", "null"]}
    if isinstance(value, str):
        return {"type": "string", **({"enum": ENUMS[name]} if name in ENUMS else {})}
    if isinstance(value, tuple):
        return {"type": "array", "items": {"type": "string"}}
    if value is None:
        return {"type": ["integer", "null"]}
    if isinstance(value, CacheSettings):
        return {
            "type": "object",
            "properties": {
                camel_case(f.name): {
                    **_schema(f.name, getattr(value, f.name)),
                    "description": f.metadata["doc"],
                }
                for f in dataclasses.fields(value)
            },
        }
    raise TypeError(name)


def expected_properties() -> dict[str, Any]:
    defaults = Settings()
    wire = defaults.to_wire()
    return {
        f"polycoder.{camel_case(f.name)}": {
            **_schema(camel_case(f.name), getattr(defaults, f.name)),
            "default": wire[camel_case(f.name)],
            "description": f.metadata["doc"],
        }
        for f in dataclasses.fields(Settings)
    }


def test_package_json_settings_are_the_server_settings():
    package = json.loads(PACKAGE_JSON.read_text())
    assert package["contributes"]["configuration"][0]["properties"] == expected_properties()


if __name__ == "__main__":  # regenerate: python tests/editors/test_vscode_settings.py
    package = json.loads(PACKAGE_JSON.read_text())
    package["contributes"]["configuration"][0]["properties"] = expected_properties()
    PACKAGE_JSON.write_text(json.dumps(package, indent=2, ensure_ascii=False) + "\n")


def test_what_the_extension_runs_is_never_a_workspace_setting():
    manifest = json.loads(PACKAGE_JSON.read_text())
    client = manifest["contributes"]["configuration"][1]["properties"]
    commands = ("polycoderLs.serverCommand", "polycoderLs.pythonPath")
    assert all(client[key]["scope"] in ("machine", "machine-overridable") for key in commands)
    untrusted = manifest["capabilities"]["untrustedWorkspaces"]
    assert untrusted["supported"] == "limited"
    assert set(untrusted["restrictedConfigurations"]) == set(commands)
