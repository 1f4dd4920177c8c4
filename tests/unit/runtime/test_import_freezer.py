"""A server's catch-up freezes the objects of the libraries its loads import, so that the full
collections during the rest of it (and after) skip them; an application embedding a runtime
keeps its collector as it is."""

from __future__ import annotations

import gc
import sys
import types
from collections.abc import Iterator

import pytest

from streamserve.runtime.kafka.models_topic import FREEZE_AFTER_MODULES, ImportFreezer


@pytest.fixture
def imported() -> Iterator[list[str]]:
    """Names of stand-in modules the test imports (by placing them in ``sys.modules``); removed,
    and the collector unfrozen, afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)
    gc.unfreeze()


def _import(names: list[str], count: int) -> None:
    for _ in range(count):
        name = f"_streamserve_test_library_{len(names)}"
        sys.modules[name] = types.ModuleType(name)
        names.append(name)


def test_a_large_import_is_frozen_once(imported: list[str]) -> None:
    gc.unfreeze()
    freezer = ImportFreezer(enabled=True)
    _import(imported, FREEZE_AFTER_MODULES - 1)
    freezer.check()
    assert gc.get_freeze_count() == 0, "frozen before a library's worth of modules came"
    _import(imported, 1)
    freezer.check()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    freezer.check()  # nothing imported since
    assert gc.get_freeze_count() == frozen


def test_a_freezer_of_an_embedding_application_never_freezes(imported: list[str]) -> None:
    gc.unfreeze()
    freezer = ImportFreezer(enabled=False)
    _import(imported, 2 * FREEZE_AFTER_MODULES)
    freezer.check()
    assert gc.get_freeze_count() == 0
