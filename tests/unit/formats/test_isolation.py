"""Checks in a child process are remembered in the artifact cache for the check and library
version that passed them: another version of the check (a new script, or another version of the
library it runs) checks the model again."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from streamserve.errors import ModelLoadError
from streamserve.formats.cache import ArtifactCache
from streamserve.formats.isolation import CheckedOnce, ChildCheck

TAKES_ALL = ChildCheck(
    name="toy-parse",
    script="import sys; sys.stdin.buffer.read()",
    library="Toy",
    verb="parse",
    marker="Error",
    module="json",  # a module with a __version__, standing for the checked library
)
REFUSES_ALL = dataclasses.replace(
    TAKES_ALL, script="import sys; sys.exit('Error: this version refuses every model')"
)


def test_a_pass_holds_only_for_the_check_and_library_version_that_gave_it(
    tmp_path: Path,
) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    CheckedOnce(TAKES_ALL, cache).ensure(b"model", "toy model 'm'")
    CheckedOnce(TAKES_ALL, ArtifactCache(tmp_path / "cache")).ensure(b"model", "toy model 'm'")

    with pytest.raises(ModelLoadError, match=r"Toy cannot parse it.*refuses every model"):
        CheckedOnce(REFUSES_ALL, ArtifactCache(tmp_path / "cache")).ensure(b"model", "toy 'm'")


def test_the_fingerprint_names_the_check_and_follows_the_library_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fingerprint = TAKES_ALL.fingerprint()
    assert fingerprint.startswith("toy-parse-")
    assert REFUSES_ALL.fingerprint() != fingerprint
    monkeypatch.setattr(json, "__version__", "99.0")  # the library upgraded in place
    assert TAKES_ALL.fingerprint() != fingerprint
