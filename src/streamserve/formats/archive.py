"""Unpacking a model archive (tar of any compression, or zip) that a publisher sent, within limits.

The archive comes from a model message, so its publisher is not trusted with the disk:

* Only files and folders are unpacked. Symbolic links, hard links, devices and fifos are
  refused, and so is every member name that is absolute, holds ``..`` or nests deeper than
  :data:`MAX_PATH_DEPTH` folders. A name that is only ``.`` (``tar -C folder .``) is the top
  folder itself.
* The bytes actually written count against ``max_unpacked_bytes``, not the sizes the archive
  declares: a zip can declare other sizes than it holds, a compressed stream can be a bomb, a
  sparse tar member expands. Each folder made, named by a member or implied by a member's path,
  counts :data:`FOLDER_BYTES` (a block of disk). Unpacking stops at the first byte over the limit.
* At most ``max_members`` members, the folders their paths imply included.

A tar is read as a stream, member by member, so a bomb is refused as soon as it passes the limit
rather than after decompressing it whole to list its members. It is decompressed here, not by
:mod:`tarfile`, so that every decompressed byte is counted as it is read: beyond the bytes
written, only :data:`HEADER_ALLOWANCE_BYTES` and :data:`MEMBER_ALLOWANCE_BYTES` per member may go
to headers (tarfile holds a GNU long name or a PAX header whole in memory, whatever size it
declares). On any refusal the destination is left half-written: its owner removes it (a scratch
directory or a cache entry being built).
"""

from __future__ import annotations

import bz2
import gzip
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
# What a folder costs on disk (one block and an inode), charged against max_unpacked_bytes.
FOLDER_BYTES = 4096
# Deeper names are refused: no model needs them, and each level is a folder to make.
MAX_PATH_DEPTH = 64
# Decompressed tar bytes that may be read beyond those written: member headers, GNU long names,
# PAX records, padding. A fixed part, and a part per member (a header, a PAX header, padding).
HEADER_ALLOWANCE_BYTES = 1 << 20
MEMBER_ALLOWANCE_BYTES = 4096
# How much tarfile reads from the decompressed stream at once (its default, 10 KiB, costs a
# Python call per 10 KiB); a larger read is not tarfile's, and is refused.
_STREAM_READ_BYTES = 1 << 18
_GZIP_MAGIC = b"\x1f\x8b\x08"
_BZIP2_BLOCK_MAGICS = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")  # a block, the end
_LZMA_MAGICS = (b"\xfd7zXZ\x00", b"\x5d\x00\x00\x80")  # xz, and lzma-alone as tarfile knows it
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

    @property
    def members_taken(self) -> int:
        return self._limits.max_members - self._members_left

    @property
    def bytes_taken(self) -> int:
        return self._limits.max_unpacked_bytes - self._bytes_left

    def take_member(self, name: str) -> None:
        self._members_left -= 1
        if self._members_left < 0:
            raise ModelTooLargeError(
                f"archive has more than {self._limits.max_members} members, the folders their "
                f"paths imply included (at {name!r}; serving.security.max_archive_members)"
            )

    def check_declared(self, size: int, name: str) -> None:
        """Refuses a member that says it is larger than what is left, before reading it."""
        if size > self._bytes_left:
            self._over(name)

    def take_bytes(self, count: int, name: str) -> None:
        self._bytes_left -= count
        if self._bytes_left < 0:
            self._over(name)

    def take_stream_bytes(self, read: int) -> None:
        """Refuses a tar stream read past the bytes written and the headers' allowance: what
        tarfile reads and does not write is headers, which it holds in memory whole."""
        allowed = (
            self.bytes_taken
            + HEADER_ALLOWANCE_BYTES
            + MEMBER_ALLOWANCE_BYTES * self.members_taken
            + COPY_CHUNK_BYTES  # a chunk read, not yet counted as written...
            + _STREAM_READ_BYTES  # ...and what tarfile read past it
        )
        if read > allowed:
            raise ModelTooLargeError(
                f"archive's tar headers (long names, PAX records) take more than "
                f"{HEADER_ALLOWANCE_BYTES + MEMBER_ALLOWANCE_BYTES * self.members_taken} bytes "
                f"(after {self.members_taken} members; their allowance within "
                "serving.security.max_unpacked_bytes)"
            )

    def _over(self, name: str) -> None:
        raise ModelTooLargeError(
            f"archive unpacks to more than {self._limits.max_unpacked_bytes} bytes (at member "
            f"{name!r}; files count their bytes, folders {FOLDER_BYTES} each; "
            "serving.security.max_unpacked_bytes)"
        )


class _Tree:
    """The destination being filled: where each member goes, and the folders made for them,
    each charged to the budget once."""

    def __init__(self, root: Path, budget: _Budget) -> None:
        self._root = root
        self._budget = budget
        self._folders: set[tuple[str, ...]] = {()}  # the root is there already

    def check(self, name: str) -> None:
        """Refuses a name no member may have, before anything is unpacked."""
        _member_parts(name)

    def folder(self, name: str) -> None:
        """Makes the folder member ``name`` (and the folders above it)."""
        self._make_folders(_member_parts(name), name, named=True)

    def file(self, name: str) -> Path:
        """Where the file member ``name`` goes, its folders made."""
        parts = _member_parts(name)
        if not parts:
            raise ModelLoadError(f"archive member {name!r} is a file in place of the top folder")
        self._make_folders(parts[:-1], name, named=False)
        target = self._root.joinpath(*parts)
        # Nothing unpacked is a link, so only a link already in the destination could lead out.
        if not target.parent.resolve().is_relative_to(self._root):
            raise ModelLoadError(f"archive member {name!r} points outside the archive")
        return target

    def _make_folders(self, parts: tuple[str, ...], name: str, *, named: bool) -> None:
        for depth in range(1, len(parts) + 1):
            folder = parts[:depth]
            if folder in self._folders:
                continue
            if not (named and depth == len(parts)):  # implied: no member of its own counted it
                self._budget.take_member(name)
            self._budget.take_bytes(FOLDER_BYTES, name)
            self._root.joinpath(*folder).mkdir(exist_ok=True)
            self._folders.add(folder)


class _CountedStream(io.RawIOBase):
    """The decompressed tar stream given to tarfile, each byte counted as it is read
    (:meth:`_Budget.take_stream_bytes`)."""

    def __init__(self, source: io.BufferedIOBase, budget: _Budget) -> None:
        super().__init__()
        self._source = source
        self._budget = budget
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if len(buffer) > _STREAM_READ_BYTES:
            raise ModelLoadError(f"archive read of {len(buffer)} bytes at once refused")
        count = self._source.readinto(buffer)
        self._read += count
        self._budget.take_stream_bytes(self._read)
        return count


def unpack_archive(data: bytes, destination: Path, limits: ArchiveLimits | None = None) -> None:
    """Unpacks a tar (any compression) or zip archive into ``destination`` (an empty folder),
    refusing what :mod:`this module <streamserve.formats.archive>` refuses."""
    budget = _Budget(limits or ArchiveLimits())
    try:
        destination.mkdir(parents=True, exist_ok=True)
        tree = _Tree(destination.resolve(), budget)
        if zipfile.is_zipfile(io.BytesIO(data)):
            _unpack_zip(data, tree, budget)
        else:
            _unpack_tar(data, tree, budget)
    except (*_UNREADABLE, OSError) as err:
        raise ModelLoadError(f"model data is not a readable tar or zip archive: {err}") from err


def _decompressed(data: bytes) -> io.BufferedIOBase:
    """``data`` decompressed as it is read, by its magic bytes: gzip, bzip2, xz or lzma, or none
    (the compressions tarfile's ``r|*`` takes)."""
    raw = io.BytesIO(data)
    if data.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if data.startswith(b"BZh") and data[4:10] in _BZIP2_BLOCK_MAGICS:
        return bz2.BZ2File(raw)
    if data.startswith(_LZMA_MAGICS):
        return lzma.LZMAFile(raw)
    return raw


def _unpack_tar(data: bytes, tree: _Tree, budget: _Budget) -> None:
    # "r|": a stream, read once; members are never listed up front. Decompressed here, through
    # a counting reader, so that no header tarfile reads escapes the limits.
    with (
        _decompressed(data) as plain,
        tarfile.open(
            fileobj=_CountedStream(plain, budget), mode="r|", bufsize=_STREAM_READ_BYTES
        ) as archive,
    ):
        for member in archive:
            budget.take_member(member.name)
            if member.isdir():
                tree.folder(member.name)
            elif member.isreg():
                target = tree.file(member.name)
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


def _unpack_zip(data: bytes, tree: _Tree, budget: _Budget) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        declared = 0
        for info in members:  # the central directory is known up front: refuse early
            budget.take_member(info.filename)
            tree.check(info.filename)
            _check_zip_kind(info)
            declared += info.file_size
            budget.check_declared(declared, info.filename)
        for info in members:
            if info.is_dir():
                tree.folder(info.filename)
                continue
            target = tree.file(info.filename)
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


def _member_parts(name: str) -> tuple[str, ...]:
    """The folders and file of member ``name`` below the top folder (none for ``.``), or a
    refusal."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\0" in name:
        raise ModelLoadError(
            f"archive member {name!r} points outside the archive (an absolute path or '..')"
        )
    if len(path.parts) > MAX_PATH_DEPTH:
        raise ModelLoadError(
            f"archive member {name!r} is {len(path.parts)} levels deep; a model archive nests "
            f"at most {MAX_PATH_DEPTH}"
        )
    return path.parts  # "./a" and "a/./b" hold no ".": PurePosixPath leaves them out


def _write(source: IO[bytes], target: Path, budget: _Budget, name: str) -> None:
    """Copies ``source`` into a new file ``target``, counting every byte against the budget."""
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
