"""A burst of typing over the real server: 1000 edits, each followed by a completion request
(every fourth cancelled by the client) and a status request, in 10 s. Every request gets an
answer, no suggestion arrives for text the user has since changed, memory stays bounded.
(The status latency during the burst is a figure: bench/reliability.py.)"""

from __future__ import annotations

import time

from burst import Peer, run_burst
from rpc import RawServer

RSS_GROWTH_LIMIT = 200 * 1024 * 1024


def ready_server(model) -> RawServer:
    server = RawServer()
    server.initialize({"model": str(model)})
    deadline = time.monotonic() + 120
    while server.request("polycoder/status", {})["state"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return server


def test_a_burst_of_typing_is_answered_in_full_never_stale(tiny_model):
    server = ready_server(tiny_model)
    try:
        result = run_burst(Peer(server).start(), steps=1000, seconds=10)
        assert result.requests == 2000
        assert result.unanswered == []
        assert result.stale == []
        assert result.rss_after - result.rss_before < RSS_GROWTH_LIMIT
        assert server.process.poll() is None
        assert result.final_status is not None
        assert result.final_status["state"] == "ready"
        # Those cancelled before they started never reached the pipeline.
        assert 750 <= result.final_status["totals"]["requests"] <= 1000
    finally:
        server.process.kill()
        server.process.wait()
