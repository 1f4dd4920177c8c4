"""Unpacking a model archive (tar of any compression, or zip) that a publisher sent, within limits.

The archive comes from a model message, so its publisher is not trusted with the disk:

* Only files and folders are unpacked. Symbolic links, hard links, devices and fifos are
  refused, and so is every member name that is absolute or holds ``..``.
* The bytes actually written count against ``max_unpacked_bytes``, not the sizes the archive
  declares: a zip can declare other sizes than it holds, a compressed stream can be a bomb, a
  sparse tar member expands. Unpacking stops at the first byte over the limit.
* At most ``max_members`` members.

A tar is read as a stream, member by member, so a bomb is refused as soon as it passes the limit
rather than after decompressing it whole to list its members. On any refusal the destination is
left half-written: its owner removes it (a scratch directory or a cache entry being built).
"""

from __future__ import annotations

import io
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from streamserve.errors import ModelLoadError, ModelTooLargeError

DEFAULT_MAX_UNPACKED_BYTES = 4 * 1024**3
DEFAULT_MAX_ARCHIVE_MEMBERS = 10_000
COPY_CHUNK_BYTES = 1 << 20
_UNREADABLE = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)


@dataclass(frozen=True)
class ArchiveLimits:
    """How far an archive of a model message may unpack (``serving.security``)."""

    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
    max_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS

    def unpack(self, data: bytes, destination: Path) -> None:
        """:func:`unpack_archive` within these limits (the artifact cache's unpack step)."""
        unpack_archive(data, destination, self)


class _Budget:
    """What is left of the limits while unpacking."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self._limits = limits
        self._bytes_left = limits.max_unpacked_bytes
        self._members_left = limits.max_members

    def take_member(self, name: str) -> None:
        self._members_left -= 1
        if self._members_left < 0:
            raise ModelTooLargeError(
                f"archive has more than {self._limits.max_members} members (at {name!r}; "
                "serving.security.max_archive_members)"
            )

    def check_declared(self, size: int, name: str) -> None:
        """Refuses a member that says it is larger than what is left, before reading it."""
        if size > self._bytes_left:
            self._over(name)

    def take_bytes(self, count: int, name: str) -> None:
        self._bytes_left -= count
        if self._bytes_left < 0:
            self._over(name)

    def _over(self, name: str) -> None:
        raise ModelTooLargeError(
            f"archive unpacks to more than {self._limits.max_unpacked_bytes} bytes (at member "
            f"{name!r}; serving.security.max_unpacked_bytes)"
        )


def unpack_archive(data: bytes, destination: Path, limits: ArchiveLimits | None = None) -> None:
    """Unpacks a tar (any compression) or zip archive into ``destination`` (an empty folder),
    refusing what :mod:`this module <streamserve.formats.archive>` refuses."""
    budget = _Budget(limits or ArchiveLimits())
    root = destination.resolve()
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            _unpack_zip(data, root, budget)
        else:
            _unpack_tar(data, root, budget)
    except (*_UNREADABLE, OSError) as err:
        raise ModelLoadError(f"model data is not a readable tar or zip archive: {err}") from err


def _unpack_tar(data: bytes, root: Path, budget: _Budget) -> None:
    # "r|*": a stream, decompressed once as it is read; members are never listed up front.
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as archive:
        for member in archive:
            budget.take_member(member.name)
            target = _member_path(root, member.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isreg():
                budget.check_declared(member.size, member.name)
                source = archive.extractfile(member)
                if source is None:  # isreg() members always have one; a defect otherwise
                    raise ModelLoadError(f"archive member {member.name!r} has no data")
                with source:
                    _write(source, target, budget, member.name)
            else:
                raise ModelLoadError(
                    f"archive member {member.name!r} is {_tar_kind(member)}; a model archive "
                    "holds only files and folders"
                )


def _unpack_zip(data: bytes, root: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        declared = 0
        for info in members:  # the central directory is known up front: refuse early
            budget.take_member(info.filename)
            _member_path(root, info.filename)
            _check_zip_kind(info)
            declared += info.file_size
            budget.check_declared(declared, info.filename)
        for info in members:
            target = _member_path(root, info.filename)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with archive.open(info) as source:
                _write(source, target, budget, info.filename)


def _check_zip_kind(info: zipfile.ZipInfo) -> None:
    file_type = stat.S_IFMT(info.external_attr >> 16)  # 0: the archiver stored no Unix type
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        kind = "a symbolic link" if file_type == stat.S_IFLNK else f"of file type {file_type:o}"
        raise ModelLoadError(
            f"archive member {info.filename!r} is {kind}; a model archive holds only files and "
            "folders"
        )


def _member_path(root: Path, name: str) -> Path:
    """Where member ``name`` goes: inside ``root``, or a refusal."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\0" in name:
        raise ModelLoadError(
            f"archive member {name!r} points outside the archive (an absolute path or '..')"
        )
    target = root.joinpath(*path.parts)
    # Nothing unpacked is a link, so only a link already in the destination could lead out.
    if not target.parent.resolve().is_relative_to(root):
        raise ModelLoadError(f"archive member {name!r} points outside the archive")
    return target


def _write(source: IO[bytes], target: Path, budget: _Budget, name: str) -> None:
    """Copies ``source`` into a new file ``target``, counting every byte against the budget."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _new_file(target) as out:
        while chunk := source.read(COPY_CHUNK_BYTES):
            budget.take_bytes(len(chunk), name)
            out.write(chunk)


@contextmanager
def _new_file(target: Path) -> Iterator[IO[bytes]]:
    # O_NOFOLLOW: never write through a link, whatever put one there.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with os.fdopen(os.open(target, flags, 0o644), "wb") as out:
        yield out


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a fifo"
    return f"of tar type {member.type!r}"
