"""Model content as factories see it: inline bytes or an allow-listed local path.

Location rules: a ``location`` is a local path or a ``file://`` URL that must resolve (symlinks
followed) inside one of the configured model roots; a declared sha256 is checked before loading.
A directory's digest is the SHA-256 over its files' relative paths and bytes, in path order.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from streamserve.errors import ModelLoadError
from streamserve.formats.cache import ArtifactCache, LeasedDirectory, unpack_to_scratch

MAX_UNPACKED_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class InlineArtifact:
    data: bytes

    def read_bytes(self) -> bytes:
        return self.data

    def describe(self) -> str:
        return f"inline data ({len(self.data)} bytes)"


@dataclass(frozen=True)
class PathArtifact:
    path: Path

    def read_bytes(self) -> bytes:
        if self.path.is_dir():
            raise ModelLoadError(f"{self.path} is a directory; this format needs a single file")
        try:
            return self.path.read_bytes()
        except OSError as err:
            raise ModelLoadError(f"cannot read model file {self.path}: {err}") from err

    def describe(self) -> str:
        return str(self.path)


Artifact = InlineArtifact | PathArtifact


def resolve_location(location: str, allowed_roots: Sequence[Path]) -> Path:
    """The local path a ``location`` names, if it lies inside an allowed root and exists."""
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        raise ModelLoadError(
            f"location {location!r}: scheme {parsed.scheme!r} is not supported (local paths and "
            "file:// URLs only)"
        )
    raw = unquote(parsed.path) if parsed.scheme == "file" else location
    path = Path(raw).expanduser().resolve()
    roots = [root.expanduser().resolve() for root in allowed_roots]
    if not any(path.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots) or "none configured"
        raise ModelLoadError(
            f"location {location!r} is outside the allowed model roots ({allowed})"
        )
    if not path.exists():
        raise ModelLoadError(f"location {location!r} does not exist")
    return path


def path_digest(path: Path) -> str:
    """SHA-256 of a file, or of a directory's (relative path, bytes) pairs in path order."""
    digest = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def unpack_archive(data: bytes, destination: Path) -> None:
    """Unpacks a tar (any compression) or zip archive safely: no paths out of ``destination``."""
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            _unpack_zip(data, destination)
        else:
            with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                _check_size(sum(member.size for member in archive.getmembers()))
                archive.extractall(destination, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise ModelLoadError(f"model data is not a readable tar or zip archive: {err}") from err


def _unpack_zip(data: bytes, destination: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        _check_size(sum(info.file_size for info in archive.infolist()))
        root = destination.resolve()
        for info in archive.infolist():
            target = (root / info.filename).resolve()
            if not target.is_relative_to(root):
                raise ModelLoadError(f"archive member {info.filename!r} points outside the archive")
        archive.extractall(root)  # noqa: S202 - every member was checked above


def _check_size(total: int) -> None:
    if total > MAX_UNPACKED_BYTES:
        raise ModelLoadError(f"archive unpacks to {total} bytes, over {MAX_UNPACKED_BYTES}")


def materialize_directory(
    artifact: Artifact, cache: ArtifactCache | None = None
) -> LeasedDirectory:
    """A directory holding the artifact: the path itself, or an archive unpacked (into the cache
    when there is one, else into a temporary directory).

    The caller closes the result once it no longer reads the directory: that removes a temporary
    directory, and lets the cache prune its entry.
    """
    if isinstance(artifact, PathArtifact):
        if not artifact.path.is_dir():
            raise ModelLoadError(f"location {artifact.path} is not a directory")
        return LeasedDirectory(artifact.path)
    if cache is not None:
        return cache.unpacked(artifact.data, unpack_archive)
    return unpack_to_scratch(artifact.data, unpack_archive)


def pack_directory(directory: Path) -> bytes:
    """A tar.gz archive of ``directory``'s contents (paths relative to it), for inline data."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.rglob("*")):
            archive.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
    return buffer.getvalue()
