"""Reproductions of defects found and not fixed yet, each file's docstring saying what breaks.

They are collected but not run (``xfail(run=False)``): run them with ``pytest --runxfail
tests/known_defects``. A fix moves its reproduction into the suite proper.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "known_defects" in item.nodeid:
            item.add_marker(pytest.mark.xfail(run=False, reason="a known defect, not fixed yet"))
