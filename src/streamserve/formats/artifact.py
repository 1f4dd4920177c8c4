"""Model content as factories see it: inline bytes or an allow-listed local path.

Location rules: a ``location`` is a local path or a ``file://`` URL that must resolve (symlinks
followed) inside one of the configured model roots; a declared sha256 is checked before loading.
A directory's digest is the SHA-256 over its files' relative paths and bytes, in path order.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from streamserve.errors import ModelLoadError
from streamserve.formats.archive import ArchiveLimits, unpack_archive
from streamserve.formats.cache import ArtifactCache, LeasedDirectory, unpack_to_scratch

__all__ = [
    "ArchiveLimits",
    "Artifact",
    "InlineArtifact",
    "PathArtifact",
    "materialize_directory",
    "pack_directory",
    "path_digest",
    "resolve_location",
    "unpack_archive",
]

ALLOWED_LOCATIONS = "local paths and file:// URLs inside serving.model_roots"


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
    """The local file or folder a ``location`` names, if it lies inside an allowed root.

    Allowed: local paths and ``file://`` URLs (no host, query or fragment); nothing remote is
    ever fetched. The path is resolved first, ``..`` and symbolic links followed, so neither
    leads out of a root. Special files (devices, fifos, sockets) are refused.
    """
    raw = _location_path(location)
    roots = [root.expanduser().resolve() for root in allowed_roots]
    try:
        path = Path(raw).expanduser().resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise ModelLoadError(f"location {location!r} cannot be resolved: {err}") from err
    if not any(path.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots) or "none configured"
        raise ModelLoadError(
            f"location {location!r} resolves to {path}, outside the allowed model roots "
            f"({allowed}; serving.model_roots)"
        )
    if not path.exists():
        raise ModelLoadError(f"location {location!r} does not exist")
    if not (path.is_file() or path.is_dir()):
        raise ModelLoadError(f"location {location!r} is neither a regular file nor a folder")
    return path


def _location_path(location: str) -> str:
    """The path part of ``location``, or a refusal naming what is allowed."""
    if "\0" in location:
        raise ModelLoadError(f"location {location!r} holds a NUL character")
    parsed = urlparse(location)
    if parsed.scheme == "":
        return location
    if parsed.scheme != "file":
        raise ModelLoadError(
            f"location {location!r}: scheme {parsed.scheme!r} is not supported; allowed are "
            f"{ALLOWED_LOCATIONS} (remote locations are never fetched)"
        )
    if parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
        raise ModelLoadError(
            f"location {location!r}: a file:// URL may name no host, query or fragment; allowed "
            f"are {ALLOWED_LOCATIONS}"
        )
    return unquote(parsed.path)


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


def materialize_directory(
    artifact: Artifact, cache: ArtifactCache | None = None, limits: ArchiveLimits | None = None
) -> LeasedDirectory:
    """A directory holding the artifact: the path itself, or an archive unpacked within
    ``limits`` (into the cache when there is one, else into a temporary directory; a refused
    archive leaves neither behind).

    The caller closes the result once it no longer reads the directory: that removes a temporary
    directory, and lets the cache prune its entry.
    """
    if isinstance(artifact, PathArtifact):
        if not artifact.path.is_dir():
            raise ModelLoadError(f"location {artifact.path} is not a directory")
        return LeasedDirectory(artifact.path)
    unpack = (limits or ArchiveLimits()).unpack
    if cache is not None:
        return cache.unpacked(artifact.data, unpack)
    return unpack_to_scratch(artifact.data, unpack)


def pack_directory(directory: Path) -> bytes:
    """A tar.gz archive of ``directory``'s contents (paths relative to it), for inline data."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.rglob("*")):
            archive.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
    return buffer.getvalue()
