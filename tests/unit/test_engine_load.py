"""Model loads in the engine: any failure ends in a reported state with something serving, and
a load that a newer one overtook never writes its status."""

from __future__ import annotations

import dataclasses
import gc
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

from polycoder_ls.config import Settings
from polycoder_ls.engine import Engine
from polycoder_ls.engine.loading import LoadedModel, load_model


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> LoadedModel:
    return load_model(Settings(model=str(tiny_model), threads=1))


def loader_from(models: dict[str, Callable[[], LoadedModel]]) -> Callable[[Settings], LoadedModel]:
    return lambda settings: models[settings.model]()


def out_of_memory() -> LoadedModel:
    raise RuntimeError("CUDA out of memory. Tried to allocate 5.50 GiB")


def test_a_load_that_raises_anything_falls_back_and_says_why(tiny):
    engine = Engine(loader=loader_from({"big": out_of_memory, "small": lambda: tiny}))
    try:
        status = engine.load(Settings(model="big", fallback_model="small")).result(timeout=60)
        assert status.state == "ready" and status.model == tiny.source
        assert status.fallback_from == "big"
        assert status.error is not None and "out of memory" in status.error
        assert engine.status == status
    finally:
        engine.stop(wait=True)


def test_a_load_that_raises_without_a_fallback_is_an_error_not_loading_forever(tiny):
    engine = Engine(loader=loader_from({"big": out_of_memory}))
    try:
        status = engine.load(Settings(model="big", fallback_model=None)).result(timeout=60)
        assert status.state == "error" and "out of memory" in str(status.error)
    finally:
        engine.stop(wait=True)


def test_a_stale_load_never_overwrites_the_status_of_a_newer_one(tiny):
    release_first, release_second = threading.Event(), threading.Event()

    def held(event: threading.Event, name: str) -> Callable[[], LoadedModel]:
        def load() -> LoadedModel:
            event.wait(60)
            return dataclasses.replace(tiny, source=name)

        return load

    engine = Engine(
        loader=loader_from(
            {"first": held(release_first, "first"), "second": held(release_second, "second")}
        )
    )
    try:
        first = engine.load(Settings(model="first", fallback_model=None))
        second = engine.load(Settings(model="second", fallback_model=None))
        release_first.set()
        first.result(timeout=60)
        assert (engine.status.state, engine.status.model) == ("loading", "second")
        release_second.set()
        assert second.result(timeout=60).model == "second"
        assert (engine.status.state, engine.status.model) == ("ready", "second")
    finally:
        release_first.set()
        release_second.set()
        engine.stop(wait=True)


def test_a_served_model_is_left_out_of_full_collections_and_freed_when_replaced(tiny_model):
    """Python's full collections walk every tracked object: a 160M model's hundreds of
    thousands took ~180 ms, a stall in the middle of some suggestion. A model being served is
    set aside; the one it replaces is freed (its hooks and modules hold cycles)."""
    engine = Engine(loader=lambda settings: load_model(settings))
    try:
        engine.load(Settings(model=str(tiny_model), threads=1)).result(timeout=60)
        first = engine._generator.loaded.model
        assert not any(tracked is first for tracked in gc.get_objects())
        replaced = weakref.ref(first)
        del first
        engine.load(Settings(model=str(tiny_model), threads=1)).result(timeout=60)
        assert replaced() is None
    finally:
        engine.stop(wait=True)
