"""With an artifact cache, a restart rebuilds nothing it built before: an inline SavedModel
archive is unpacked once, and a LightGBM model that passed its parse check is not checked again;
a model that failed is never remembered as passed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from format_models import TRAINERS

from builders import wine_json_lines
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.formats.artifact import pack_directory
from streamserve.formats.cache import ArtifactCache
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
    assert cache.has_passed(PARSE_CHECK, trained.data)
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
    assert not cache.has_passed(PARSE_CHECK, broken)
