"""The artifact cache: built once per distinct bytes, atomic, pruned least recently used, and
safe to share between threads and processes (a prune never removes what another one builds or
reads)."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from streamserve.errors import ModelLoadError
from streamserve.formats.archive import FOLDER_BYTES
from streamserve.formats.artifact import pack_directory, unpack_archive
from streamserve.formats.cache import ArtifactCache, bytes_digest

WAIT_S = 30.0  # a bound on waiting for the other thread, never a pacing sleep

MODEL = bytes_digest(b"model")  # the digest of a model's bytes, as checks remember them


def _archive(tmp_path: Path, name: str, size: int) -> bytes:
    source = tmp_path / f"source-{name}"
    source.mkdir()
    (source / "model.bin").write_bytes(name.encode() * (size // len(name)))
    return pack_directory(source)


def _dot_names(cache_root: Path) -> list[str]:
    return sorted(p.name for p in (cache_root / "unpacked").iterdir() if p.name.startswith("."))


def _load(cache: ArtifactCache, data: bytes) -> None:
    """One complete load: look up (or build) the entry, then let it go."""
    with cache.unpacked(data, unpack_archive):
        pass


def test_an_archive_is_unpacked_once_per_distinct_bytes(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    data = _archive(tmp_path, "a", 100)
    unpacks: list[Path] = []

    def counting_unpack(payload: bytes, destination: Path) -> None:
        unpacks.append(destination)
        unpack_archive(payload, destination)

    with cache.unpacked(data, counting_unpack) as first:
        assert (first / "model.bin").read_bytes() == b"a" * 100
    with ArtifactCache(tmp_path / "cache").unpacked(data, counting_unpack) as again:  # a restart
        pass
    with cache.unpacked(_archive(tmp_path, "b", 100), counting_unpack) as other:
        pass

    assert first == again != other
    assert len(unpacks) == 2
    assert _dot_names(tmp_path / "cache") == []
    assert (tmp_path / "cache" / "unpacked").stat().st_mode & 0o077 == 0


def test_a_failed_unpack_leaves_no_entry(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="not a readable tar or zip"):
        cache.unpacked(b"not an archive", unpack_archive)
    assert list((tmp_path / "cache" / "unpacked").iterdir()) == []


def test_entries_beyond_the_budget_are_pruned_least_recently_used_first(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=2500)
    with cache.unpacked(_archive(tmp_path, "old", 1000), unpack_archive) as old:
        pass
    used_data = _archive(tmp_path, "used", 1000)
    with cache.unpacked(used_data, unpack_archive) as used:
        pass
    os.utime(old, (1, 1))
    os.utime(used, (2, 2))
    with cache.unpacked(used_data, unpack_archive) as hit:  # a hit: used recently
        assert hit == used
    with cache.unpacked(_archive(tmp_path, "new", 1000), unpack_archive) as newest:
        pass

    assert not old.exists()
    assert used.is_dir()
    assert newest.is_dir()
    assert _dot_names(tmp_path / "cache") == []


def test_entries_of_empty_folders_count_their_folders_and_are_pruned(tmp_path: Path) -> None:
    """An entry's size counts each folder as the archive limits do (FOLDER_BYTES), so entries
    that are mostly folders do not escape artifact_cache_max_bytes."""
    cache = ArtifactCache(tmp_path / "cache", max_bytes=50 * FOLDER_BYTES)
    entries = []
    for name in ("old", "new"):
        source = tmp_path / f"source-{name}"
        for number in range(30):
            (source / name / str(number)).mkdir(parents=True)
        with cache.unpacked(pack_directory(source), unpack_archive) as entry:
            entries.append(entry)
        os.utime(entry, (len(entries), len(entries)))
    old, new = entries
    assert not old.exists()  # 2 x 31 folders are over the 50 the budget holds
    assert new.is_dir()


def test_passed_checks_are_remembered_by_digest(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    assert not cache.has_passed("parse", MODEL)
    cache.record_pass("parse", MODEL)
    assert ArtifactCache(tmp_path / "cache").has_passed("parse", MODEL)
    assert not cache.has_passed("parse", bytes_digest(b"other model"))
    assert not cache.has_passed("another-check", MODEL)


def test_an_unwritable_cache_does_not_fail_loads_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    cache = ArtifactCache(blocked, retry_after_s=0.0)  # every load tries the cache again
    with caplog.at_level(logging.DEBUG, logger="streamserve.formats.cache"):
        cache.record_pass("parse", MODEL)  # forgotten, not fatal: the check did pass
        for name in ("a", "b"):
            with cache.unpacked(_archive(tmp_path, name, 10), unpack_archive) as directory:
                assert (directory / "model.bin").read_bytes() == name.encode() * 10
    assert not directory.exists(), "the temporary directory outlived its use"
    assert not cache.has_passed("parse", MODEL)
    assert cache.failures == 3
    assert "Not a directory" in (cache.problem or "")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"artifact cache at {blocked} cannot be used" in warning
    assert "[Errno 20] Not a directory" in warning
    assert "models load without it" in warning


def test_after_a_fault_the_cache_is_not_written_until_its_retry(tmp_path: Path) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("")
    cache = ArtifactCache(blocked)  # the default pause: a minute
    cache.record_pass("parse", MODEL)
    blocked.unlink()  # mended, but the pause holds

    with cache.unpacked(_archive(tmp_path, "a", 10), unpack_archive) as directory:
        assert directory.parent != blocked / "unpacked"
    cache.record_pass("parse", MODEL)

    assert cache.failures == 1
    assert not blocked.exists()


def test_a_cache_that_works_again_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("")
    cache = ArtifactCache(blocked, retry_after_s=0.0)
    with caplog.at_level(logging.WARNING, logger="streamserve.formats.cache"):
        cache.record_pass("parse", MODEL)
        blocked.unlink()
        cache.record_pass("parse", MODEL)
        with cache.unpacked(_archive(tmp_path, "a", 10), unpack_archive) as directory:
            assert directory.parent == blocked / "unpacked"

    assert cache.has_passed("parse", MODEL)
    assert cache.problem is None
    assert cache.failures == 1
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"artifact cache at {blocked} cannot be used",
        f"artifact cache at {blocked} works again",
    ]


@pytest.mark.parametrize("stale_after_s", [3600.0, 0.0], ids=["fresh", "old-but-locked"])
def test_a_prune_never_removes_a_directory_being_built(
    tmp_path: Path, stale_after_s: float
) -> None:
    root = tmp_path / "cache"
    slow_data = _archive(tmp_path, "slow", 1000)
    half_built = threading.Event()
    may_finish = threading.Event()

    def slow_unpack(payload: bytes, destination: Path) -> None:
        (destination / "first-half").write_bytes(b"written before the prune")
        half_built.set()
        assert may_finish.wait(WAIT_S)
        unpack_archive(payload, destination)

    with ThreadPoolExecutor(max_workers=1) as builder:
        building = builder.submit(ArtifactCache(root).unpacked, slow_data, slow_unpack)
        assert half_built.wait(WAIT_S)
        # Another replica, with a tiny budget, builds another entry and prunes meanwhile.
        pruner = ArtifactCache(root, max_bytes=1, stale_after_s=stale_after_s)
        _load(pruner, _archive(tmp_path, "other", 1000))
        may_finish.set()
        with building.result(timeout=WAIT_S) as directory:
            assert sorted(p.name for p in directory.iterdir()) == ["first-half", "model.bin"]
            assert directory.parent == root / "unpacked"
    assert _dot_names(root) == []


def test_a_prune_never_removes_a_directory_being_read(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    read_data = _archive(tmp_path, "read", 1000)
    pruner = ArtifactCache(root, max_bytes=1)  # another replica process or loader thread

    with ArtifactCache(root).unpacked(read_data, unpack_archive) as directory:
        with ThreadPoolExecutor(max_workers=1) as other_loader:
            other_loader.submit(_load, pruner, _archive(tmp_path, "other", 1000)).result()
        assert (directory / "model.bin").read_bytes() == b"read" * 250  # still all there
        with ArtifactCache(root).unpacked(read_data, unpack_archive) as again:  # a second reader
            assert again == directory
    # Read by nobody now: pruned like any other entry beyond the budget.
    _load(pruner, _archive(tmp_path, "third", 1000))
    assert not directory.exists()
    assert _dot_names(root) == []


def test_concurrent_builders_of_the_same_bytes_share_one_entry(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    data = _archive(tmp_path, "same", 1000)
    unpacking = threading.Event()
    may_finish = threading.Event()

    def slow_unpack(payload: bytes, destination: Path) -> None:
        unpacking.set()
        assert may_finish.wait(WAIT_S)
        unpack_archive(payload, destination)

    with ThreadPoolExecutor(max_workers=1) as builder:
        slow = builder.submit(ArtifactCache(root).unpacked, data, slow_unpack)
        assert unpacking.wait(WAIT_S)
        with ArtifactCache(root).unpacked(data, unpack_archive) as first:
            may_finish.set()  # the slow builder's rename now finds the entry in place
            with slow.result(timeout=WAIT_S) as second:
                assert second == first
                assert (second / "model.bin").read_bytes() == b"same" * 250
    assert _dot_names(root) == []


@pytest.fixture
def held_lock() -> Iterator[list[int]]:
    """Directory fds locked the way a live builder or reader in another process holds them."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def test_only_abandoned_dot_directories_are_removed_and_never_by_size(
    tmp_path: Path, held_lock: list[int]
) -> None:
    root = tmp_path / "cache"
    unpacked = root / "unpacked"
    unpacked.mkdir(parents=True)
    for name in (".building-crashed", ".removing-crashed", ".building-slow", ".building-fresh"):
        (unpacked / name).mkdir()
        (unpacked / name / "part").write_bytes(b"x" * 10_000)  # far over the budget
    for name in (".building-crashed", ".removing-crashed", ".building-slow"):
        os.utime(unpacked / name, (1, 1))  # untouched for decades
    slow = os.open(unpacked / ".building-slow", os.O_RDONLY | os.O_DIRECTORY)
    held_lock.append(slow)
    fcntl.flock(slow, fcntl.LOCK_SH)  # a builder still at work, however long it takes

    cache = ArtifactCache(root, max_bytes=2500)
    _load(cache, _archive(tmp_path, "a", 1000))
    _load(cache, _archive(tmp_path, "b", 1000))

    assert _dot_names(root) == [".building-fresh", ".building-slow"]
    assert len([p for p in unpacked.iterdir() if not p.name.startswith(".")]) == 2
