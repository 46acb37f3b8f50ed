"""Where the remote engine sends, with which headers, and how it words a failure."""

from __future__ import annotations

import socket

from polycoder_ls.config import Settings, apply_settings
from polycoder_ls.engine.remote_http import _transport_reason
from polycoder_ls.engine.remote_run import API_KEY_VARIABLE, endpoint


def remote(**wire) -> Settings:
    settings, errors = apply_settings(Settings(), {"remote": wire})
    assert errors == []
    return settings


def test_the_api_key_setting_comes_before_the_environment(monkeypatch):
    monkeypatch.setenv(API_KEY_VARIABLE, "from-env")
    chosen = endpoint(remote(url="http://gpu-box:8000/v1", apiKey="from-settings").remote)
    assert chosen.headers(body=True)["Authorization"] == "Bearer from-settings"
    chosen = endpoint(remote(url="http://gpu-box:8000/v1").remote)
    assert chosen.headers(body=False)["Authorization"] == "Bearer from-env"
    monkeypatch.delenv(API_KEY_VARIABLE)
    assert "Authorization" not in endpoint(remote(url="http://gpu-box:8000/v1").remote).headers(
        body=True
    )


def test_paths_are_under_the_urls_path():
    chosen = endpoint(remote(url="https://gpu-box.example.com/team/v1/").remote)
    assert chosen.path("completions") == "/team/v1/completions"
    connection = chosen.connection()
    assert (connection.host, connection.port) == ("gpu-box.example.com", 443)
    assert endpoint(remote(url="http://[::1]:8000/v1").remote).connection().host == "::1"


def test_transport_failures_read_as_one_line_with_the_setting_to_change():
    assert _transport_reason(TimeoutError(), 2.5) == (
        "no answer within 2.5 s (remote.timeoutSeconds)"
    )
    refused = ConnectionRefusedError(111, "Connection refused")
    assert _transport_reason(refused, 30) == "cannot connect (Connection refused)"
    unknown = socket.gaierror(-2, "Name or service not known")
    assert _transport_reason(unknown, 30) == "unknown host (Name or service not known)"
    assert _transport_reason(ConnectionResetError(), 30) == "the connection was reset"
