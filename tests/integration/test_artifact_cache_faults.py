"""An artifact cache on a disk that cannot take it — full, out of inodes, read-only — never fails a
load: models load and serve without it, and the operator reads one warning naming the cache
directory and the OS error, however many loads meet the fault.

The faults are real: each case runs a server process (a ServingCore with ``artifact_cache_dir``,
as ``streamserve serve`` makes it) in a mount namespace of its own where the cache lies on a
tmpfs of 64 KiB (a full disk: the 105 KB SavedModel does not fit), on a tmpfs whose inodes are
used up, or on a read-only tmpfs, empty or holding the entries of an earlier run
(tests/mount_faults.py says why not chmod or RLIMIT_FSIZE). The models: a LightGBM model (its
passed parse check is recorded in the cache) and two SavedModel archives sent inline (unpacked
into the cache).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from format_models import TRAINERS
from mount_faults import Mount, in_mount_namespace, require_mount_namespaces

from builders import wine_json_lines
from streamserve.formats.artifact import pack_directory

pytestmark = pytest.mark.slow

RECORDS = 20

# A server process: loads the three models (or those named in argv[3]) with the cache at argv[1],
# serves RECORDS records of each key, prints what it served, the cache's warnings and what the
# cache holds afterwards.
_SERVER = """
import json, logging, sys
from pathlib import Path
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings
from streamserve.testing import records_from, serve_records

cache, inputs = Path(sys.argv[1]), Path(sys.argv[2])
warnings = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger("streamserve").addHandler(handler)
models = [
    ModelDescriptor("lgbm", "lgbm", ModelType.LIGHTGBM, data=(inputs / "lgbm.txt").read_bytes()),
    ModelDescriptor("a", "wine", ModelType.TENSORFLOWSAVED, data=(inputs / "a.tgz").read_bytes()),
    ModelDescriptor("b", "wine2", ModelType.TENSORFLOWSAVED, data=(inputs / "b.tgz").read_bytes()),
]
if len(sys.argv) > 3:
    models = [model for model in models if model.name in sys.argv[3].split(",")]
lines = (inputs / "records.jsonl").read_bytes().splitlines()
with ServingCore(ServingSettings(artifact_cache_dir=cache)) as core:
    served = serve_records(core, JsonCodec(), records_from(lines), models=models)
    failures = core.artifact_cache_failures
held = sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.is_dir() else None
print(json.dumps({
    "results": [r["key"] for r in served.results],
    "errors": [[e["kind"], e.get("reason", "")] for e in served.errors],
    "warnings": warnings,
    "held": held,
    "failures": failures,
}))
"""


@pytest.fixture(scope="module")
def inputs(
    tmp_path_factory: pytest.TempPathFactory, wine_dir: Path, wine_matrix: np.ndarray
) -> Path:
    """The models and records every case serves."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "lgbm.txt").write_bytes(TRAINERS["lightgbm-regressor"](wine_matrix).data)
    saved = folder / "saved"
    saved.mkdir()
    for path in (wine_dir / "saved" / "1").rglob("*"):
        target = saved / path.relative_to(wine_dir / "saved" / "1")
        if path.is_dir():
            target.mkdir()
        else:
            target.write_bytes(path.read_bytes())
    (folder / "a.tgz").write_bytes(pack_directory(saved))
    (saved / "assets").mkdir()
    (saved / "assets" / "notes.txt").write_text("another archive of the same model")
    (folder / "b.tgz").write_bytes(pack_directory(saved))
    rows = wine_matrix[:RECORDS]
    lines = [
        *wine_json_lines(rows),
        *wine_json_lines(rows, "wine2"),
        *wine_json_lines(rows, "lgbm"),
    ]
    (folder / "records.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return folder


def _serve(cache: Path, inputs: Path, mount: Mount, prepare: str = "") -> dict:
    command = [sys.executable, "-c", _SERVER, str(cache), str(inputs)]
    done = subprocess.run(
        in_mount_namespace(command, [mount], prepare),
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    served: dict = json.loads(done.stdout.decode().splitlines()[-1])
    return served


def _served_without_fault(served: dict) -> None:
    assert sorted(served["results"]) == sorted(["wine", "wine2", "lgbm"] * RECORDS)
    assert served["errors"] == []


# (mount options, shell lines run after the mount, the OS error the warning quotes)
FAULTS = {
    "full-disk": ("size=64k", "", "[Errno 28] No space left on device"),
    "no-inodes": (
        "size=1m,nr_inodes=16",
        'mkdir "$CACHE" && i=0 && while touch "$DISK/filler-$i" 2>/dev/null; do i=$((i+1)); done',
        "[Errno 28] No space left on device",
    ),
    "read-only": ("ro", "", "[Errno 30] Read-only file system"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_models_load_without_a_cache_that_cannot_be_written_with_one_warning(
    fault: str, tmp_path: Path, inputs: Path
) -> None:
    require_mount_namespaces(tmp_path)
    options, prepare, os_error = FAULTS[fault]
    disk, cache = tmp_path / "disk", tmp_path / "disk" / "cache"
    prepare = prepare.replace("$CACHE", str(cache)).replace("$DISK", str(disk))

    served = _serve(cache, inputs, Mount(disk, options), prepare)

    _served_without_fault(served)
    [warning] = served["warnings"]
    assert f"artifact cache at {cache} cannot be used" in warning
    assert os_error in warning
    assert "models load without it" in warning
    assert served["failures"] >= 1, "the fault is not counted (streamserve_artifact_cache_failures)"
    held = served["held"] or []
    assert not [name for name in held if name.startswith("unpacked/")], held  # nothing half-built


def test_a_read_only_cache_still_serves_the_entries_it_holds(tmp_path: Path, inputs: Path) -> None:
    """The cache of an earlier run that loaded one archive, its disk now read-only: that archive
    is read from it, the other one is unpacked elsewhere, with one warning."""
    require_mount_namespaces(tmp_path)
    disk, cache = tmp_path / "disk", tmp_path / "disk" / "cache"
    earlier_run = shlex.join([sys.executable, "-c", _SERVER, str(cache), str(inputs), "a"])
    prepare = f"{earlier_run} > /dev/null && mount -o remount,ro {disk}"

    served = _serve(cache, inputs, Mount(disk), prepare)

    _served_without_fault(served)
    [warning] = served["warnings"]
    assert f"artifact cache at {cache} cannot be used" in warning
    assert "[Errno 30] Read-only file system" in warning
    entries = {name.split("/")[1] for name in served["held"] if name.startswith("unpacked/")}
    assert len(entries) == 1, served["held"]  # the earlier run's archive, nothing more


def test_with_no_room_for_the_archive_anywhere_its_model_is_rejected_saying_where(
    tmp_path: Path, inputs: Path
) -> None:
    """The cache's disk and the temporary directory both full: the SavedModels are rejected
    with a reason naming the temporary directory and the OS error; the LightGBM model serves."""
    require_mount_namespaces(tmp_path)
    disk, scratch = tmp_path / "disk", tmp_path / "scratch"
    command = [sys.executable, "-c", _SERVER, str(disk / "cache"), str(inputs)]
    mounts = [Mount(disk, "size=64k"), Mount(scratch, "size=64k")]
    done = subprocess.run(
        in_mount_namespace(command, mounts),
        capture_output=True,
        timeout=300,
        check=False,
        env={**os.environ, "TMPDIR": str(scratch)},
    )

    assert done.returncode == 0, done.stderr.decode()[-3000:]
    served = json.loads(done.stdout.decode().splitlines()[-1])
    assert served["results"] == ["lgbm"] * RECORDS
    rejections = [reason for kind, reason in served["errors"] if kind == "model_rejected"]
    assert len(rejections) == 2
    for reason in rejections:
        assert f"cannot unpack the model into the temporary directory {scratch}" in reason
        assert "[Errno 28] No space left on device" in reason
    [warning] = served["warnings"]
    assert "[Errno 28] No space left on device" in warning
