"""Model artifacts on local disk by the SHA-256 of their bytes, so a restart rebuilds nothing.

A restarted replica reads the same model bytes from the models topic again; what is costly to
derive from them is kept here under their digest:

* unpacked archives (a TensorFlow SavedModel sent inline as tar or zip), and
* safety checks they passed (LightGBM's parse in a child process).

Entries are built under a temporary name and renamed into place, so a crash never leaves half an
entry, and several processes may share one cache. Directory entries beyond ``max_bytes`` are
removed least recently used first. The cache directory is trusted like the model roots are: the
operator gives it, and it is created readable by its owner only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from streamserve.errors import ModelLoadError

DEFAULT_MAX_BYTES = 10 * 1024**3


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactCache:
    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._unpacked = root / "unpacked"
        self._checks = root / "checks"

    def unpacked(self, data: bytes, unpack: Callable[[bytes, Path], None]) -> Path:
        """The directory ``unpack(data, directory)`` fills, built once per distinct ``data``."""
        entry = self._unpacked / bytes_digest(data)
        if entry.is_dir():
            os.utime(entry)  # recently used: pruned last
            return entry
        try:
            self._unpacked.mkdir(mode=0o700, parents=True, exist_ok=True)
            building = Path(tempfile.mkdtemp(prefix=".building-", dir=self._unpacked))
        except OSError as err:
            raise ModelLoadError(f"cannot write the artifact cache at {self.root}: {err}") from err
        try:
            unpack(data, building)
            building.rename(entry)
        except OSError as err:
            shutil.rmtree(building, ignore_errors=True)
            if entry.is_dir():  # another process built it meanwhile
                return entry
            raise ModelLoadError(f"cannot write the artifact cache at {self.root}: {err}") from err
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        self._prune(keep=entry)
        return entry

    def has_passed(self, check: str, data: bytes) -> bool:
        """Whether ``data`` passed ``check`` before (in this process or an earlier one)."""
        return (self._checks / check / bytes_digest(data)).is_file()

    def record_pass(self, check: str, data: bytes) -> None:
        directory = self._checks / check
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            (directory / bytes_digest(data)).touch()
        except OSError as err:
            raise ModelLoadError(f"cannot write the artifact cache at {self.root}: {err}") from err

    def _prune(self, keep: Path) -> None:
        entries = [e for e in self._unpacked.iterdir() if e.is_dir() and e != keep]
        sizes = {entry: _tree_size(entry) for entry in entries}
        total = sum(sizes.values()) + _tree_size(keep)
        for entry in sorted(entries, key=lambda e: e.stat().st_mtime):
            if total <= self.max_bytes:
                return
            shutil.rmtree(entry, ignore_errors=True)
            total -= sizes[entry]


def _tree_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
