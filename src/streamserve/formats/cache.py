"""Model artifacts on local disk by the SHA-256 of their bytes, so a restart rebuilds nothing.

A restarted replica reads the same model bytes from the models topic again; what is costly to
derive from them is kept here under their digest:

* unpacked archives (a TensorFlow SavedModel sent inline as tar or zip), and
* safety checks they passed (XGBoost's and LightGBM's parse in a child process), under the
  check's fingerprint: its script and the library's version (:mod:`.isolation`).

Several processes and threads may share one cache. The rules that make this safe:

* An entry is built under a dot-name (``.building-*``) and renamed into place, so a lookup never
  sees half an entry.
* Whoever reads an entry holds a shared ``flock`` on the entry directory for as long as it reads
  (the builder takes it before the rename, so its new entry is never unguarded). After locking,
  a reader checks that the entry's name still points to the directory it locked.
* A pruner removes an entry only if it gets the exclusive lock without waiting: busy entries are
  skipped. It renames the entry to a dot-name (``.removing-*``) first, so lookups miss and
  rebuild rather than see a directory being deleted.
* Dot-names are never pruned by size; only abandoned ones (nobody holds their lock, untouched
  for ``stale_after_s``: left by a crashed process) are removed.

Directory entries beyond ``max_bytes`` are removed least recently used first; entries being read
stay, so the cache may exceed ``max_bytes`` while they are in use. The cache directory is trusted
like the model roots are: the operator gives it, and it is created readable by its owner only.

A cache that cannot be written (a read-only or full disk, a directory it may not create) never
fails a load: the archive is unpacked to a temporary directory instead, and a passed check is
not remembered across restarts. Entries already built are still read. Such a fault is logged as
one warning naming the directory and the OS error; for ``retry_after_s`` after it, loads do not
write to the cache (no archive is unpacked twice while the disk stays full); then the cache is
tried again, and a cache that works again says so. :attr:`ArtifactCache.failures` counts them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from streamserve.errors import ModelLoadError
from streamserve.formats.archive import FOLDER_BYTES

DEFAULT_MAX_BYTES = 10 * 1024**3
DEFAULT_STALE_AFTER_S = 3600.0
DEFAULT_RETRY_AFTER_S = 60.0
# OS errors that say the cache's disk cannot take a write, as opposed to a bad archive.
DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)
_LOOKUP_ATTEMPTS = 5  # each one loses only if other processes prune the entry in between

log = logging.getLogger(__name__)

Unpack = Callable[[bytes, Path], None]


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LeasedDirectory:
    """A directory its holder reads until :meth:`close`: a cache entry (its shared lock keeps
    pruners away), a temporary directory (removed on close), or a path owned elsewhere.

    Used as a context manager, it gives the path and closes on exit.
    """

    def __init__(
        self,
        path: Path,
        *,
        lock_fd: int | None = None,
        scratch: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        self.path = path
        self._scratch = scratch
        # A finalizer, not only close(): a holder that is garbage collected unclosed still
        # releases its lock instead of pinning the entry until the process exits.
        self._release = None if lock_fd is None else weakref.finalize(self, os.close, lock_fd)

    def close(self) -> None:
        if self._release is not None:
            self._release()  # runs at most once
        if self._scratch is not None:
            self._scratch.cleanup()

    def __enter__(self) -> Path:
        return self.path

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def unpack_to_scratch(data: bytes, unpack: Unpack) -> LeasedDirectory:
    """``unpack(data, directory)`` into a new temporary directory that closing removes."""
    try:
        scratch = tempfile.TemporaryDirectory(prefix="streamserve-model-")
    except OSError as err:
        raise ModelLoadError(f"cannot create a temporary directory to unpack into: {err}") from err
    try:
        unpack(data, Path(scratch.name))
    except BaseException as err:
        scratch.cleanup()
        disk_error = _disk_error(err)
        if disk_error is None:
            raise
        raise ModelLoadError(
            f"cannot unpack the model into the temporary directory {tempfile.gettempdir()} "
            f"(TMPDIR): {disk_error}"
        ) from err
    return LeasedDirectory(Path(scratch.name), scratch=scratch)


def _disk_error(error: BaseException) -> OSError | None:
    """The OS error of a disk that cannot take a write (full, read-only, refused) behind
    ``error``, following its causes; ``None`` if there is none."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS:
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


class _CacheUnusableError(Exception):
    """The cache's own disk operations failed (not the caller's unpack)."""


class _Faults:
    """A cache's write faults: one warning when they start, one line when they end, a count,
    and a pause of ``retry_after_s`` after each during which the cache is not written."""

    def __init__(self, root: Path, retry_after_s: float) -> None:
        self._root = root
        self._retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self.count = 0
        self.problem: str | None = None  # the fault now, until a write succeeds again
        self._paused_until = 0.0

    def writable(self) -> bool:
        """Whether to try writing now (no fault, or its pause is over)."""
        return time.monotonic() >= self._paused_until

    def failed(self, reason: str) -> None:
        with self._lock:
            self.count += 1
            self._paused_until = time.monotonic() + self._retry_after_s
            first = self.problem is None
            self.problem = reason
        if first:
            log.warning(
                "artifact cache at %s cannot be used (%s): models load without it (archives "
                "unpacked to temporary directories, passed checks not kept across restarts); "
                "retried every %.0f s, warned once",
                self._root,
                reason,
                self._retry_after_s,
            )
        else:
            log.debug("artifact cache at %s still cannot be used: %s", self._root, reason)

    def succeeded(self) -> None:
        if self.problem is None:
            return
        with self._lock:
            problem, self.problem = self.problem, None
        if problem is not None:
            log.warning("artifact cache at %s works again (it failed: %s)", self._root, problem)


class ArtifactCache:
    """Derivations of model bytes on local disk, keyed by digest, shared by processes."""

    def __init__(
        self,
        root: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.stale_after_s = stale_after_s
        self._unpacked = root / "unpacked"
        self._checks = root / "checks"
        self._faults = _Faults(root, retry_after_s)

    @property
    def failures(self) -> int:
        """Writes to the cache that failed (a full or read-only disk, ...) since it was made."""
        return self._faults.count

    @property
    def problem(self) -> str | None:
        """Why the cache cannot be written now; ``None`` once a write succeeded again."""
        return self._faults.problem

    def unpacked(self, data: bytes, unpack: Unpack) -> LeasedDirectory:
        """The directory ``unpack(data, directory)`` fills, built once per distinct ``data``.

        The caller closes the result when done reading (``with cache.unpacked(...) as path``);
        until then no prune removes it.
        """
        entry = self._unpacked / bytes_digest(data)
        try:
            for _ in range(_LOOKUP_ATTEMPTS):
                leased = _lease(entry)
                if leased is None and self._faults.writable():
                    leased = self._build(entry, data, unpack)
                elif leased is None:
                    break  # not written to while a fault pauses it
                if leased is not None:
                    return leased
            else:
                log.warning(
                    "artifact cache at %s not used for a model: its entry was removed by other "
                    "processes on every attempt; unpacking to a temporary directory",
                    self.root,
                )
        except _CacheUnusableError as err:
            self._faults.failed(str(err))
        return unpack_to_scratch(data, unpack)

    def has_passed(self, check: str, digest: str) -> bool:
        """Whether the bytes of ``digest`` (:func:`bytes_digest`, which the caller computes once
        for all its uses) passed ``check`` before, in this process or an earlier one."""
        return (self._checks / check / _hex_name(digest)).is_file()

    def record_pass(self, check: str, digest: str) -> None:
        """Remembers that the bytes of ``digest`` passed ``check``; a cache that cannot be
        written forgets."""
        if not self._faults.writable():
            return
        directory = self._checks / check
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            (directory / _hex_name(digest)).touch()
        except OSError as err:
            # The check passed: the load goes on, only the next process checks again.
            self._faults.failed(f"cannot record a passed check in {directory}: {err}")
            return
        self._faults.succeeded()

    def _build(self, entry: Path, data: bytes, unpack: Unpack) -> LeasedDirectory | None:
        """Builds ``entry``, leased; ``None`` if another builder put it in place first."""
        try:
            self._unpacked.mkdir(mode=0o700, parents=True, exist_ok=True)
            building = Path(tempfile.mkdtemp(prefix=".building-", dir=self._unpacked))
        except OSError as err:
            raise _CacheUnusableError(
                f"cannot create a directory in {self._unpacked}: {err}"
            ) from err
        try:
            lock_fd = _open_locked(building, fcntl.LOCK_SH)
        except OSError as err:  # e.g. a file system without flock
            shutil.rmtree(building, ignore_errors=True)
            raise _CacheUnusableError(f"cannot lock {building}: {err}") from err
        if lock_fd is None:  # removed between mkdtemp and the lock: only stale ones are
            raise _CacheUnusableError(f"{building} vanished while being built")
        try:
            unpack(data, building)
        except BaseException as err:
            _discard(building, lock_fd)
            disk_error = _disk_error(err)
            if disk_error is None:
                raise  # the archive's fault: no other directory would take it either
            raise _CacheUnusableError(f"cannot unpack into {self._unpacked}: {disk_error}") from err
        try:
            building.rename(entry)
        except OSError as err:
            _discard(building, lock_fd)
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return None  # another builder won: lease its entry
            raise _CacheUnusableError(f"cannot rename into {self._unpacked}: {err}") from err
        self._faults.succeeded()
        leased = LeasedDirectory(entry, lock_fd=lock_fd)
        _touch(entry)
        try:
            self._prune()
        except OSError as err:  # the entry is built: a failed prune only leaves the cache larger
            log.warning("cannot prune the artifact cache at %s: %s", self.root, err)
        return leased

    def _prune(self) -> None:
        """Removes free entries, least recently used first, until the rest fit ``max_bytes``."""
        stale_before = time.time() - self.stale_after_s
        entries: list[tuple[float, int, Path]] = []
        for path in list(self._unpacked.iterdir()):
            status = _lstat(path)
            if status is None or not stat.S_ISDIR(status.st_mode):
                continue
            if path.name.startswith("."):  # being built or removed: only if abandoned
                if status.st_mtime < stale_before:
                    _remove_if_free(path)
                continue
            entries.append((status.st_mtime, _tree_size(path), path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                return
            if _remove_if_free(path):
                total -= size


def _hex_name(digest: str) -> str:
    """``digest`` as a file name: a SHA-256 in hex, nothing that could name another path."""
    if len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise ValueError(f"not a SHA-256 hex digest: {digest[:80]!r}")
    return digest


def _lease(entry: Path) -> LeasedDirectory | None:
    """``entry`` under a shared lock, or ``None`` if there is no such entry (any more)."""
    try:
        lock_fd = _open_locked(entry, fcntl.LOCK_SH)
    except OSError as err:
        raise _CacheUnusableError(f"cannot read {entry}: {err}") from err
    if lock_fd is None:
        return None
    _touch(entry)
    return LeasedDirectory(entry, lock_fd=lock_fd)


def _open_locked(directory: Path, operation: int) -> int | None:
    """An fd of ``directory`` holding ``flock(operation)``, or ``None`` if the name is gone, or
    (after waiting for the lock) names another directory, or the lock is busy (``LOCK_NB``)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, operation)
        if _names(directory, fd):
            return fd
    except BlockingIOError:
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the directory open as ``fd`` (a pruner may have renamed it
    away while we waited for the lock; the fd keeps its inode from being reused meanwhile)."""
    current = _lstat(path)
    held = os.fstat(fd)
    return current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino)


def _remove_if_free(path: Path) -> bool:
    """Removes ``path`` unless someone holds its lock; whether it did."""
    try:
        fd = _open_locked(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    if fd is None:
        return False
    try:
        # Renamed first: a lookup misses and rebuilds instead of finding a half-deleted entry.
        doomed = path.with_name(f".removing-{uuid.uuid4().hex}")
        path.rename(doomed)
    except OSError:
        os.close(fd)
        return False
    # The lock is held until the tree is gone, so no other pruner takes it for abandoned.
    shutil.rmtree(doomed, ignore_errors=True)
    os.close(fd)
    return True


def _discard(building: Path, lock_fd: int) -> None:
    os.close(lock_fd)
    shutil.rmtree(building, ignore_errors=True)


def _touch(entry: Path) -> None:
    # A read-only cache still serves its entries; it only forgets their order of use.
    with contextlib.suppress(OSError):
        os.utime(entry)  # recently used: pruned last


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except OSError:  # removed meanwhile, or unreadable: not ours to judge
        return None


def _tree_size(directory: Path) -> int:
    """The files' bytes and :data:`FOLDER_BYTES` a folder, as the archive limits count them: an
    entry of many empty folders is as large as the disk it takes, and pruned for it."""
    total = 0
    for parent, folders, files in os.walk(directory):  # errors (a tree removed meanwhile) skipped
        total += FOLDER_BYTES * len(folders)
        for name in files:
            status = _lstat(Path(parent, name))
            total += status.st_size if status is not None else 0
    return total
