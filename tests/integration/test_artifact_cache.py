"""With an artifact cache, a restart rebuilds nothing it built before: an inline SavedModel
archive is unpacked once, and a LightGBM model that passed its parse check is not checked again;
a model that failed is never remembered as passed. Processes sharing one cache never see each
other's half-built or half-removed entries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from format_models import TRAINERS

from builders import wine_json_lines
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.formats.artifact import pack_directory, path_digest
from streamserve.formats.cache import ArtifactCache, bytes_digest
from streamserve.formats.lightgbm import PARSE_CHECK
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings
from streamserve.testing import records_from, serve_records


def _serve(cache_dir: Path, descriptor: ModelDescriptor, lines: list[bytes]) -> list[object]:
    core = ServingCore(ServingSettings(artifact_cache_dir=cache_dir))
    try:
        outcome = serve_records(core, JsonCodec(), records_from(lines), models=[descriptor])
    finally:
        core.close()
    assert outcome.errors == []
    return [result["value"] for result in outcome.results]


def test_a_restart_reuses_the_unpacked_savedmodel(
    tmp_path: Path, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    descriptor = ModelDescriptor(
        name="saved-archive",
        data_type="wine",
        model_type=ModelType.TENSORFLOWSAVED,
        data=pack_directory(wine_dir / "saved" / "1"),
    )
    lines = wine_json_lines(wine_matrix[:50])
    first = _serve(tmp_path / "cache", descriptor, lines)
    unpacked = list((tmp_path / "cache" / "unpacked").iterdir())
    marker = unpacked[0] / "built-by-the-first-process"
    marker.touch()
    second = _serve(tmp_path / "cache", descriptor, lines)  # a new core: a restarted process

    assert first == second
    assert len(first) == 50
    assert list((tmp_path / "cache" / "unpacked").iterdir()) == unpacked
    assert marker.exists(), "the archive was unpacked again"


def test_lightgbm_checks_are_remembered_only_for_models_that_passed(
    tmp_path: Path, wine_matrix: np.ndarray
) -> None:
    trained = TRAINERS["lightgbm-regressor"](wine_matrix)
    good = ModelDescriptor(
        name="lgbm", data_type="wine", model_type=ModelType.LIGHTGBM, data=trained.data
    )
    lines = wine_json_lines(wine_matrix[:20])
    values = _serve(tmp_path / "cache", good, lines)
    cache = ArtifactCache(tmp_path / "cache")
    assert cache.has_passed(PARSE_CHECK.fingerprint(), bytes_digest(trained.data))
    assert values == _serve(tmp_path / "cache", good, lines)
    np.testing.assert_allclose(values, trained.predict(wine_matrix[:20, :11]), rtol=1e-6)

    broken = trained.data[: len(trained.data) // 2]
    core = ServingCore(ServingSettings(artifact_cache_dir=tmp_path / "cache"))
    try:
        outcome = serve_records(
            core,
            JsonCodec(),
            records_from(lines),
            models=[
                ModelDescriptor(
                    name="broken", data_type="wine", model_type=ModelType.LIGHTGBM, data=broken
                )
            ],
        )
    finally:
        core.close()
    assert {error["kind"] for error in outcome.errors} == {"model_rejected", "no_model"}
    assert not cache.has_passed(PARSE_CHECK.fingerprint(), bytes_digest(broken))


# One replica process: a few loader threads each load every archive, round after round, and
# check inside the lease that the directory is complete; prints its count of loads.
_HAMMER = """
import json, sys, threading
from pathlib import Path
from streamserve.formats.artifact import path_digest, unpack_archive
from streamserve.formats.cache import ArtifactCache

root, manifest = Path(sys.argv[1]), Path(sys.argv[2])
rounds, max_bytes = int(sys.argv[3]), int(sys.argv[4])
expected = json.loads(manifest.read_text())
archives = [(Path(path).read_bytes(), digest) for path, digest in sorted(expected.items())]
cache = ArtifactCache(root, max_bytes=max_bytes)
failures, loads = [], []

def hammer(offset):
    for turn in range(rounds * len(archives)):
        data, digest = archives[(turn + offset) % len(archives)]
        try:
            with cache.unpacked(data, unpack_archive) as directory:
                if directory.parent != root / "unpacked":
                    failures.append(f"not served from the cache: {directory}")
                elif path_digest(directory) != digest:
                    failures.append(f"incomplete entry {directory.name}")
            loads.append(1)
        except Exception as err:
            failures.append(f"{type(err).__name__}: {err}")

threads = [threading.Thread(target=hammer, args=(offset,)) for offset in range(3)]
sys.stdin.read()  # every process starts at once
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(len(loads))
sys.exit("\\n".join(failures[:10]) if failures else 0)
"""


def test_processes_sharing_a_small_cache_always_read_complete_entries(tmp_path: Path) -> None:
    expected: dict[str, str] = {}
    for number in range(6):
        source = tmp_path / f"model-{number}"
        (source / "variables").mkdir(parents=True)
        for part in range(12):
            (source / "variables" / f"part-{part}").write_bytes(bytes([number, part]) * 1000)
        archive = tmp_path / f"model-{number}.tar.gz"
        archive.write_bytes(pack_directory(source))
        expected[str(archive)] = path_digest(source)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(expected))
    rounds, processes = 4, 4
    entry_bytes = 12 * 2000
    command = [sys.executable, "-c", _HAMMER, str(tmp_path / "cache"), str(manifest)]
    replicas = [
        subprocess.Popen(
            [*command, str(rounds), str(2 * entry_bytes)],  # room for two of six entries
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    outcomes = [replica.communicate(b"go", timeout=240) for replica in replicas]

    errors = [err.decode() for _, err in outcomes if err]
    assert [replica.returncode for replica in replicas] == [0] * processes, errors
    assert [int(out) for out, _ in outcomes] == [3 * rounds * 6] * processes
    leftovers = [p for p in (tmp_path / "cache" / "unpacked").iterdir() if p.name.startswith(".")]
    assert leftovers == []
