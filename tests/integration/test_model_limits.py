"""Contract 3 against hostile publishers: a model message over the size limit, and a SavedModel
archive that unpacks past its limit or out of its folder, are rejected with the reason (the
limit named), counted, published to the errors output, and leave nothing on disk; the current
model keeps serving."""

from __future__ import annotations

import io
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from builders import FOLDER_ARCHIVERS, onnx_constant, onnx_descriptor, wine_json_lines
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.serving.core import ServingCore
from streamserve.settings import ModelSecuritySettings, ServingSettings
from streamserve.testing import records_from, serve_records

MiB = 1024**2
LIMITS = ModelSecuritySettings(
    max_model_message_bytes=MiB, max_unpacked_bytes=16 * MiB, max_archive_members=50
)


def _zeros_tar_gz(members: int, member_bytes: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        info = tarfile.TarInfo("saved_model.pb")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"graph"))
        for number in range(members):
            info = tarfile.TarInfo(f"variables/shard-{number}")
            info.size = member_bytes
            archive.addfile(info, io.BytesIO(bytes(member_bytes)))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """64 MiB of zeros in 8 members, ~300 KB compressed, each member within the limit."""
    data = _zeros_tar_gz(8, 8 * MiB)
    assert len(data) < MiB
    return data


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _serve(core: ServingCore, wine_matrix: np.ndarray, *models: ModelDescriptor | bytes):
    good = onnx_descriptor("good", onnx_constant(11, 1.0))
    records = records_from(wine_json_lines(wine_matrix[:10]))
    return serve_records(core, JsonCodec(), records, models=[good, *models])


def _saved(name: str, data: bytes) -> ModelDescriptor:
    return ModelDescriptor(
        name=name, data_type="wine", model_type=ModelType.TENSORFLOWSAVED, data=data
    )


@pytest.mark.parametrize("cached", [False, True], ids=["scratch", "artifact-cache"])
def test_a_savedmodel_bomb_is_rejected_naming_the_limit_and_leaves_nothing(
    cached: bool, bomb: bytes, tmp_path: Path, scratch: Path, wine_matrix: np.ndarray
) -> None:
    cache = tmp_path / "cache"
    settings = ServingSettings(security=LIMITS, artifact_cache_dir=cache if cached else None)
    with ServingCore(settings) as core:
        run = _serve(core, wine_matrix, _saved("bomb", bomb))
        slot = core.find_slot("wine")
        assert slot is not None
        assert slot.current is not None
        assert slot.current.identity.name == "good"
        assert slot.rejected_total == 1
    assert {r["model"] for r in run.results} == {"good"}
    (rejection,) = [e for e in run.errors if e["kind"] == "model_rejected"]
    assert rejection["error_kind"] == "model_too_large"
    assert f"more than {16 * MiB} bytes" in rejection["reason"]
    assert "serving.security.max_unpacked_bytes" in rejection["reason"]
    assert list(scratch.iterdir()) == []
    if cached:
        assert list((cache / "unpacked").iterdir()) == []


def test_a_savedmodel_archive_with_too_many_members_is_rejected(
    tmp_path: Path, scratch: Path, wine_matrix: np.ndarray
) -> None:
    with ServingCore(ServingSettings(security=LIMITS)) as core:
        run = _serve(core, wine_matrix, _saved("many", _zeros_tar_gz(60, 0)))
    (rejection,) = [e for e in run.errors if e["kind"] == "model_rejected"]
    assert rejection["error_kind"] == "model_too_large"
    assert "more than 50 members" in rejection["reason"]
    assert list(scratch.iterdir()) == []


def test_a_savedmodel_archive_escaping_its_folder_is_rejected(
    tmp_path: Path, scratch: Path, wine_matrix: np.ndarray
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in ("saved_model.pb", "../../../escaped"):
            info = tarfile.TarInfo(name)
            info.size = 4
            archive.addfile(info, io.BytesIO(b"evil"))
    settings = ServingSettings(security=LIMITS, artifact_cache_dir=tmp_path / "cache")
    with ServingCore(settings) as core:
        run = _serve(core, wine_matrix, _saved("escape", buffer.getvalue()))
    (rejection,) = [e for e in run.errors if e["kind"] == "model_rejected"]
    assert rejection["error_kind"] == "model_load_failed"
    assert "'../../../escaped' points outside the archive" in rejection["reason"]
    assert not (tmp_path / "escaped").exists()
    assert list((tmp_path / "cache" / "unpacked").iterdir()) == []


def test_a_model_message_over_the_limit_is_rejected_before_it_is_decoded(
    wine_matrix: np.ndarray,
) -> None:
    oversize_garbage = b"\xff" * (MiB + 1)  # decoded, it would be a bad_descriptor
    oversize_model = onnx_descriptor(
        "padded", onnx_constant(11, 2.0), options={"padding": "x" * MiB}
    )
    with ServingCore(ServingSettings(security=LIMITS)) as core:
        run = _serve(core, wine_matrix, oversize_garbage, oversize_model)
        assert core.counts["model_messages_rejected"] == 2
    assert {r["model"] for r in run.results} == {"good"}
    rejections = [e for e in run.errors if e["kind"] == "model_rejected"]
    assert [e["error_kind"] for e in rejections] == ["model_too_large", "model_too_large"]
    assert all(f"over the limit of {MiB} bytes" in e["reason"] for e in rejections)
    assert all("not decoded" in e["reason"] for e in rejections)


@pytest.mark.parametrize("pack", FOLDER_ARCHIVERS.values(), ids=FOLDER_ARCHIVERS.keys())
def test_a_savedmodel_archived_from_inside_its_folder_loads(
    pack: Callable[[Path, Path], bytes], wine_dir: Path, tmp_path: Path
) -> None:
    """README: TENSORFLOWSAVED takes "a tar/zip archive of it as data". The usual ways to
    archive a folder's contents (`tar -czf m.tgz -C folder .`, shutil.make_archive with
    root_dir) write a first member "." and then "./saved_model.pb"; the real SavedModel packed
    so loads (contract 3: a good model is not rejected)."""
    data = pack(wine_dir / "saved" / "1", tmp_path)
    with ServingCore(ServingSettings(security=LIMITS)) as core:
        core.submit_model(_saved("packed", data))
        assert core.wait_for_models(300)
        _count, rejection = core.rejections_of("wine")
        slot = core.find_slot("wine")
        staged = None if slot is None or slot.staged is None else slot.staged.identity.name
    assert rejection is None, rejection.reason
    assert staged == "packed"
