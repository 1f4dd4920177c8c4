"""The artifact cache: built once per distinct bytes, atomic, pruned least recently used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamserve.errors import ModelLoadError
from streamserve.formats.artifact import pack_directory, unpack_archive
from streamserve.formats.cache import ArtifactCache


def _archive(tmp_path: Path, name: str, size: int) -> bytes:
    source = tmp_path / f"source-{name}"
    source.mkdir()
    (source / "model.bin").write_bytes(name.encode() * (size // len(name)))
    return pack_directory(source)


def test_an_archive_is_unpacked_once_per_distinct_bytes(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    data = _archive(tmp_path, "a", 100)
    unpacks: list[Path] = []

    def counting_unpack(payload: bytes, destination: Path) -> None:
        unpacks.append(destination)
        unpack_archive(payload, destination)

    first = cache.unpacked(data, counting_unpack)
    again = ArtifactCache(tmp_path / "cache").unpacked(data, counting_unpack)  # a restart
    other = cache.unpacked(_archive(tmp_path, "b", 100), counting_unpack)

    assert first == again != other
    assert len(unpacks) == 2
    assert (first / "model.bin").read_bytes() == b"a" * 100
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".building-")]
    assert (tmp_path / "cache" / "unpacked").stat().st_mode & 0o077 == 0


def test_a_failed_unpack_leaves_no_entry(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="not a readable tar or zip"):
        cache.unpacked(b"not an archive", unpack_archive)
    assert list((tmp_path / "cache" / "unpacked").iterdir()) == []


def test_entries_beyond_the_budget_are_pruned_least_recently_used_first(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=2500)
    old = cache.unpacked(_archive(tmp_path, "old", 1000), unpack_archive)
    used_data = _archive(tmp_path, "used", 1000)
    used = cache.unpacked(used_data, unpack_archive)
    os.utime(old, (1, 1))
    os.utime(used, (2, 2))
    assert cache.unpacked(used_data, unpack_archive) == used  # a hit: used recently
    newest = cache.unpacked(_archive(tmp_path, "new", 1000), unpack_archive)

    assert not old.exists()
    assert used.is_dir()
    assert newest.is_dir()


def test_passed_checks_are_remembered_by_digest(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    assert not cache.has_passed("parse", b"model")
    cache.record_pass("parse", b"model")
    assert ArtifactCache(tmp_path / "cache").has_passed("parse", b"model")
    assert not cache.has_passed("parse", b"other model")
    assert not cache.has_passed("another-check", b"model")


def test_an_unwritable_cache_is_a_clear_load_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    cache = ArtifactCache(blocked)
    with pytest.raises(ModelLoadError, match="cannot write the artifact cache"):
        cache.record_pass("parse", b"model")
    with pytest.raises(ModelLoadError, match="cannot write the artifact cache"):
        cache.unpacked(_archive(tmp_path, "a", 10), unpack_archive)
