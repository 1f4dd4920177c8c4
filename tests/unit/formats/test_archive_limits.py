"""A model archive comes from a publisher who is not trusted with the disk: bombs stop at the
unpacked-size limit (bytes written, not sizes declared), traversal and links are refused, and a
refused archive leaves nothing behind, in a scratch directory or in the artifact cache."""

from __future__ import annotations

import io
import os
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from builders import FOLDER_ARCHIVERS
from streamserve.errors import ModelLoadError, ModelTooLargeError
from streamserve.formats.archive import FOLDER_BYTES, MAX_PATH_DEPTH
from streamserve.formats.artifact import (
    ArchiveLimits,
    InlineArtifact,
    materialize_directory,
    pack_directory,
    unpack_archive,
)
from streamserve.formats.cache import ArtifactCache

MiB = 1024**2
BOMB_BYTES = 1024 * MiB
LIMIT = ArchiveLimits(max_unpacked_bytes=64 * MiB, max_members=100)


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, streamed: a bomb is built without holding what it unpacks to."""

    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._left)
        buffer[:count] = bytes(count)
        self._left -= count
        return count


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _tar_of(*infos: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info in infos:
            archive.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return buffer.getvalue()


def _tar_info(name: str, kind: bytes, link: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size
    return info


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tar_bomb() -> bytes:
    """1 GiB of zeros in a ~5 MB tar.gz: one member, its size honestly declared."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        info = tarfile.TarInfo("variables/variables.data-00000-of-00001")
        info.size = BOMB_BYTES
        archive.addfile(info, _Zeros(BOMB_BYTES))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def spread_bomb() -> bytes:
    """128 MiB of zeros in a tar.gz of 8 members of 16 MiB: each alone is within the limit."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for number in range(8):
            info = tarfile.TarInfo(f"shard-{number:02d}")
            info.size = 16 * MiB
            archive.addfile(info, _Zeros(info.size))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def lying_zip() -> bytes:
    """A zip whose one member declares 1,000 bytes but holds 50 MiB of deflated zeros."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("saved_model.pb", "w", force_zip64=False) as member,
    ):
        for _ in range(50):
            member.write(bytes(MiB))
    data = bytearray(buffer.getvalue())
    declared = struct.pack("<I", 1000)
    local = data.find(b"PK\x03\x04")
    data[local + 22 : local + 26] = declared  # local header: uncompressed size
    central = data.find(b"PK\x01\x02")
    data[central + 24 : central + 28] = declared  # central directory: uncompressed size
    return bytes(data)


def _tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@pytest.fixture
def scratch_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where temporary directories go during the test, to see that none is left."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def test_a_gzip_bomb_stops_at_the_limit_and_says_so(tar_bomb: bytes, tmp_path: Path) -> None:
    assert len(tar_bomb) < 8 * MiB
    destination = tmp_path / "out"
    destination.mkdir()
    with pytest.raises(ModelTooLargeError) as refused:
        unpack_archive(tar_bomb, destination, LIMIT)
    assert str(LIMIT.max_unpacked_bytes) in str(refused.value)
    assert "serving.security.max_unpacked_bytes" in str(refused.value)
    assert refused.value.kind == "model_too_large"
    # the member declared more than the limit: refused before a byte of it was written
    assert _tree_bytes(destination) == 0


def test_bytes_written_count_across_members_and_stop_at_the_limit(
    spread_bomb: bytes, tmp_path: Path
) -> None:
    destination = tmp_path / "out"
    destination.mkdir()
    with pytest.raises(ModelTooLargeError, match="more than 67108864 bytes"):
        unpack_archive(spread_bomb, destination, LIMIT)
    assert _tree_bytes(destination) <= LIMIT.max_unpacked_bytes


def test_a_zip_that_lies_about_its_sizes_is_refused(lying_zip: bytes, tmp_path: Path) -> None:
    destination = tmp_path / "out"
    destination.mkdir()
    with pytest.raises(ModelLoadError):
        unpack_archive(lying_zip, destination, LIMIT)
    assert _tree_bytes(destination) <= 1000 + 1024**2


@pytest.mark.parametrize("pack", [_tar, _zip])
def test_too_many_members_are_refused(
    pack: Callable[[dict[str, bytes]], bytes], tmp_path: Path
) -> None:
    archive = pack({f"f{number}": b"" for number in range(101)})
    with pytest.raises(ModelTooLargeError, match="more than 100 members"):
        unpack_archive(archive, tmp_path / "out", LIMIT)


def test_an_archive_within_the_limits_unpacks(tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "variables").mkdir(parents=True)
    (source / "saved_model.pb").write_bytes(b"graph")
    (source / "variables" / "variables.index").write_bytes(b"index")
    for pack in (pack_directory(source), _zip({"saved_model.pb": b"graph", "variables/": b""})):
        destination = tmp_path / f"out-{len(pack)}"
        destination.mkdir()
        # 10 bytes of files, and the one folder
        limits = ArchiveLimits(max_unpacked_bytes=10 + FOLDER_BYTES, max_members=3)
        unpack_archive(pack, destination, limits)
        assert (destination / "saved_model.pb").read_bytes() == b"graph"


@pytest.mark.parametrize(
    "name", ["../escaped", "/tmp/absolute", "variables/../../escaped", "./../escaped"]
)
@pytest.mark.parametrize("pack", [_tar, _zip])
def test_members_pointing_outside_are_refused(
    pack: Callable[[dict[str, bytes]], bytes], name: str, tmp_path: Path
) -> None:
    destination = tmp_path / "a" / "b"
    destination.mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="points outside the archive"):
        unpack_archive(pack({"saved_model.pb": b"x", name: b"evil"}), destination, LIMIT)
    assert not (tmp_path / "a" / "escaped").exists()
    assert not (tmp_path / "escaped").exists()


LINKS_AND_SPECIAL_FILES = {
    "symlink out": (_tar_info("variables", tarfile.SYMTYPE, "/etc"), "a symbolic link"),
    "symlink in": (_tar_info("alias.pb", tarfile.SYMTYPE, "saved_model.pb"), "a symbolic link"),
    "hard link out": (_tar_info("passwd", tarfile.LNKTYPE, "/etc/passwd"), "a hard link"),
    "hard link in": (_tar_info("copy.pb", tarfile.LNKTYPE, "saved_model.pb"), "a hard link"),
    "device": (_tar_info("null", tarfile.CHRTYPE), "a device file"),
    "fifo": (_tar_info("pipe", tarfile.FIFOTYPE), "a fifo"),
}


@pytest.mark.parametrize("case", list(LINKS_AND_SPECIAL_FILES))
def test_tar_links_and_special_files_are_refused(case: str, tmp_path: Path) -> None:
    member, kind = LINKS_AND_SPECIAL_FILES[case]
    archive = _tar_of(_tar_info("saved_model.pb", tarfile.REGTYPE, size=3), member)
    destination = tmp_path / "out"
    destination.mkdir()
    with pytest.raises(ModelLoadError, match=kind):
        unpack_archive(archive, destination, LIMIT)
    assert not any(p.is_symlink() for p in destination.rglob("*"))


def test_a_file_written_through_an_earlier_symlink_never_lands_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _tar_of(
        _tar_info("variables", tarfile.SYMTYPE, str(outside)),
        _tar_info("variables/evil", tarfile.REGTYPE, size=4),
    )
    with pytest.raises(ModelLoadError):
        unpack_archive(archive, tmp_path / "out", LIMIT)
    assert list(outside.iterdir()) == []


def test_zip_symlinks_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("saved_model.pb", b"x")
        link = zipfile.ZipInfo("variables")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc")
    with pytest.raises(ModelLoadError, match="is a symbolic link"):
        unpack_archive(buffer.getvalue(), tmp_path / "out", LIMIT)
    assert not (tmp_path / "out" / "variables").exists()


def test_a_refused_bomb_leaves_no_scratch_directory(spread_bomb: bytes, scratch_dir: Path) -> None:
    with pytest.raises(ModelTooLargeError):
        materialize_directory(InlineArtifact(spread_bomb), limits=LIMIT)
    assert list(scratch_dir.iterdir()) == []


def test_a_refused_bomb_leaves_no_cache_entry(
    spread_bomb: bytes, tmp_path: Path, scratch_dir: Path
) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(ModelTooLargeError):
        materialize_directory(InlineArtifact(spread_bomb), cache, LIMIT)
    assert list((tmp_path / "cache" / "unpacked").iterdir()) == []
    assert list(scratch_dir.iterdir()) == []
    # the same bytes are refused again, not served from a half-built entry
    with pytest.raises(ModelTooLargeError):
        materialize_directory(InlineArtifact(spread_bomb), cache, LIMIT)


def test_a_traversal_archive_leaves_no_cache_entry(tmp_path: Path, scratch_dir: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    archive = _tar({"saved_model.pb": b"x", "../../escaped": b"evil"})
    with pytest.raises(ModelLoadError, match="points outside the archive"):
        materialize_directory(InlineArtifact(archive), cache, LIMIT)
    assert list((tmp_path / "cache" / "unpacked").iterdir()) == []
    assert not (tmp_path / "escaped").exists()


def _model_folder(root: Path) -> Path:
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph")
    (root / "variables" / "variables.index").write_bytes(b"index")
    return root


@pytest.mark.parametrize("pack", FOLDER_ARCHIVERS.values(), ids=FOLDER_ARCHIVERS.keys())
def test_a_folder_archived_from_inside_unpacks(
    pack: Callable[[Path, Path], bytes], tmp_path: Path
) -> None:
    """`tar -czf m.tgz -C folder .` and shutil.make_archive(root_dir=folder) write a first member
    "." (the folder itself), then "./saved_model.pb": "." is the top folder, "./a" is "a"."""
    archive = pack(_model_folder(tmp_path / "model"), tmp_path)
    with tarfile.open(fileobj=io.BytesIO(archive)) as packed:
        names = packed.getnames()
    assert names[0] == "."
    assert "./saved_model.pb" in names
    destination = tmp_path / "out"
    destination.mkdir()
    unpack_archive(archive, destination, LIMIT)
    assert (destination / "saved_model.pb").read_bytes() == b"graph"
    assert (destination / "variables" / "variables.index").read_bytes() == b"index"


def test_a_file_member_named_dot_is_refused(tmp_path: Path) -> None:
    archive = _tar_of(_tar_info("./", tarfile.REGTYPE, size=3))
    with pytest.raises(ModelLoadError, match="a file in place of the top folder"):
        unpack_archive(archive, tmp_path / "out", LIMIT)


def _gzip_of(parts: list[tuple[bytes, int]]) -> bytes:
    """A gzip stream of ``parts``, each (bytes, how many times in a row), never held whole."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = io.BytesIO()
    for chunk, times in parts:
        for _ in range(times):
            out.write(compressor.compress(chunk))
    out.write(compressor.flush())
    return out.getvalue()


_MEASURE_UNPACK = """
import resource, sys
from pathlib import Path
from streamserve.formats.archive import ArchiveLimits
data = Path(sys.argv[1]).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    ArchiveLimits(max_unpacked_bytes=1 << 20).unpack(data, Path(sys.argv[2]))
    outcome = "unpacked"
except Exception as err:
    outcome = f"{type(err).__name__}: {err}"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024)
print(outcome)
"""


@pytest.mark.parametrize(
    "header", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE], ids=["gnu-long-name", "pax"]
)
def test_a_tar_header_declaring_hundreds_of_mib_is_refused_without_being_held(
    header: bytes, tmp_path: Path
) -> None:
    """A sub-MiB gzip'd tar whose first header (a GNU long name, a PAX header) holds 768 MiB of
    zeros: tarfile reads such a header whole into memory before it yields a member, so the
    decompressed stream is counted as it is read (max_unpacked_bytes, 1 MiB here, plus a
    header allowance). Measured in a process of its own."""
    declared = 768 * MiB
    archive = _gzip_of(
        [
            (_tar_info("././@LongLink", header, size=declared).tobuf(tarfile.USTAR_FORMAT), 1),
            (bytes(MiB), declared // MiB),
            (_tar_info("saved_model.pb", tarfile.REGTYPE).tobuf(tarfile.USTAR_FORMAT), 1),
            (bytes(1024), 1),
        ]
    )
    assert len(archive) < 2 * MiB
    (tmp_path / "bomb.tar.gz").write_bytes(archive)
    (tmp_path / "out").mkdir()
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE_UNPACK, str(tmp_path / "bomb.tar.gz"), tmp_path / "out"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    grew_mib, outcome = run.stdout.strip().split("\n", 1)
    assert outcome.startswith("ModelTooLargeError: archive's tar headers (long names, PAX")
    assert "serving.security.max_unpacked_bytes" in outcome
    assert int(grew_mib) < 64, f"the process grew by {grew_mib} MiB ({outcome})"


def _disk_used(folder: Path) -> int:
    """Disk space taken by everything under ``folder``, folders included."""
    return sum(os.lstat(path).st_blocks * 512 for path in folder.rglob("*"))


def test_nested_folders_count_against_the_unpacked_bytes_limit(tmp_path: Path) -> None:
    """Empty files, each under 60 folders of its own: the folders their paths imply count
    FOLDER_BYTES each, so a small archive cannot fill the disk with folders (or inodes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for number in range(200):
            archive.addfile(tarfile.TarInfo(f"m{number}/" + "d/" * 60 + "f"))
    limit = ArchiveLimits(max_unpacked_bytes=MiB, max_members=100_000)
    destination = tmp_path / "out"
    destination.mkdir()
    with pytest.raises(ModelTooLargeError, match="folders 4096 each") as refused:
        unpack_archive(buffer.getvalue(), destination, limit)
    assert "serving.security.max_unpacked_bytes" in str(refused.value)
    assert sum(1 for path in destination.rglob("*") if path.is_dir()) <= MiB // FOLDER_BYTES
    assert _disk_used(destination) <= 2 * MiB


@pytest.mark.parametrize("pack", [_tar, _zip])
def test_implied_folders_count_as_members(
    pack: Callable[[dict[str, bytes]], bytes], tmp_path: Path
) -> None:
    limit = ArchiveLimits(max_unpacked_bytes=MiB, max_members=50)
    archive = pack({f"{number}/{number}/f": b"" for number in range(20)})  # 20 files, 40 folders
    with pytest.raises(ModelTooLargeError, match="more than 50 members, the folders"):
        unpack_archive(archive, tmp_path / "out", limit)
    assert sum(1 for path in (tmp_path / "out").rglob("*")) <= 50


@pytest.mark.parametrize("pack", [_tar, _zip])
def test_a_name_deeper_than_the_depth_cap_is_refused_before_anything_is_made(
    pack: Callable[[dict[str, bytes]], bytes], tmp_path: Path
) -> None:
    archive = pack({"/".join(["d"] * MAX_PATH_DEPTH) + "/f": b""})
    with pytest.raises(ModelLoadError, match=f"is {MAX_PATH_DEPTH + 1} levels deep"):
        unpack_archive(archive, tmp_path / "out", LIMIT)
    assert list((tmp_path / "out").iterdir()) == []
