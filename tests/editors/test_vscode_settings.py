"""The VS Code extension's settings mirror the server's configuration tree exactly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from polycoder_ls.config import DTYPES, MULTILINE_MODES, Settings, camel_case

PACKAGE_JSON = Path(__file__).parents[2] / "editors" / "vscode" / "package.json"
ENUMS = {"dtype": list(DTYPES), "multiline": list(MULTILINE_MODES)}
JSON_TYPES = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}


def _schema(spec: dataclasses.Field, value: Any) -> dict[str, Any]:
    """The JSON schema of one setting, from its annotation (`str | None`, `tuple[str, ...]`)."""
    if dataclasses.is_dataclass(value):
        return {
            "type": "object",
            "properties": {
                camel_case(f.name): {
                    **_schema(f, getattr(value, f.name)),
                    "description": f.metadata["doc"],
                }
                for f in dataclasses.fields(value)
            },
        }
    annotation = str(spec.type)
    if annotation == "str | FimFormat":  # "auto", "off" or a template object
        return {"type": ["string", "object"]}
    if annotation == "tuple[str, ...]":
        return {"type": "array", "items": {"type": "string"}}
    base, _, optional = annotation.partition(" | ")
    kind = JSON_TYPES[base]
    enum = {"enum": ENUMS[camel_case(spec.name)]} if camel_case(spec.name) in ENUMS else {}
    return {"type": [kind, "null"] if optional == "None" else kind, **enum}


def expected_properties() -> dict[str, Any]:
    defaults = Settings()
    wire = defaults.to_wire()
    return {
        f"polycoder.{camel_case(f.name)}": {
            **_schema(f, getattr(defaults, f.name)),
            "default": wire[camel_case(f.name)],
            "description": f.metadata["doc"],
            **({"scope": "machine"} if f.metadata["user_only"] else {}),
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


def test_what_the_extension_runs_and_where_code_goes_are_never_workspace_settings():
    manifest = json.loads(PACKAGE_JSON.read_text())
    client = manifest["contributes"]["configuration"][1]["properties"]
    commands = ("polycoderLs.serverCommand", "polycoderLs.pythonPath")
    assert all(client[key]["scope"] == "machine" for key in commands)
    server = manifest["contributes"]["configuration"][0]["properties"]
    user_only = [key for key, schema in server.items() if schema.get("scope") == "machine"]
    assert user_only == ["polycoder.remote"]  # where the code is sent
    untrusted = manifest["capabilities"]["untrustedWorkspaces"]
    assert untrusted["supported"] == "limited"
    assert set(untrusted["restrictedConfigurations"]) == {*commands, *user_only}
