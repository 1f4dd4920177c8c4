"""Contract 3: a bad model never replaces a good one. Each is rejected with its reason, counted,
published to the errors output, and the current model keeps serving."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from builders import onnx_always_raising, onnx_constant, onnx_descriptor, wine_json_lines
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.descriptor._generated import modeldescriptor_pb2
from streamserve.formats.base import FactoryContext, LoadRequest, Model
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings
from streamserve.testing import FunctionFactory, records_from, serve_records

BadModel = Callable[[Path, Path], "ModelDescriptor | bytes"]


def _raw(**fields: object) -> bytes:
    """A model message as any publisher could write it, bypassing our own checks."""
    return modeldescriptor_pb2.ModelDescriptor(**fields).SerializeToString()  # type: ignore[arg-type]


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


BAD_MODELS: dict[str, tuple[BadModel, str, str]] = {
    # name: (make the message from (tmp_path, wine_dir), expected error kind, text in the reason)
    "garbage bytes": (
        lambda t, w: b"\xff\xfe this is not a protobuf",
        "bad_descriptor",
        "not a ModelDescriptor",
    ),
    "empty message": (lambda t, w: b"", "bad_descriptor", "empty"),
    "no name": (
        lambda t, w: _raw(dataType="wine", modeltype=3, data=b"x"),
        "bad_descriptor",
        "name (field 1) is empty",
    ),
    "no content": (
        lambda t, w: _raw(name="m", dataType="wine", modeltype=3),
        "bad_descriptor",
        "neither data (field 5) nor location (field 6)",
    ),
    "empty data": (
        lambda t, w: _raw(name="m", dataType="wine", modeltype=3, data=b""),
        "bad_descriptor",
        "data (field 5) is empty",
    ),
    "bad digest": (
        lambda t, w: _raw(name="m", dataType="wine", modeltype=3, data=b"abc", sha256="0" * 64),
        "bad_descriptor",
        "does not match its sha256",
    ),
    "unknown type": (
        lambda t, w: onnx_descriptor("m", onnx_constant(11, 9.0)).__class__(
            name="m", data_type="wine", model_type=77, data=b"bytes"
        ),
        "model_load_failed",
        "unknown model type type 77",
    ),
    "corrupt onnx": (
        lambda t, w: onnx_descriptor("m", onnx_constant(11, 9.0)[:40]),
        "model_load_failed",
        "ONNX model 'm'",
    ),
    "garbage onnx": (
        lambda t, w: onnx_descriptor("m", b"\x00" * 64),
        "model_load_failed",
        "cannot be loaded",
    ),
    "corrupt pmml": (
        lambda t, w: ModelDescriptor(
            name="m",
            data_type="wine",
            model_type=ModelType.PMML,
            data=(w / "winequalityLinearRegression.pmml").read_bytes()[:300],
        ),
        "model_load_failed",
        "PMML model 'm'",
    ),
    "corrupt tensorflow graph": (
        lambda t, w: ModelDescriptor(
            name="m", data_type="wine", model_type=ModelType.TENSORFLOW, data=b"\x0a\xff\xff\xff"
        ),
        "model_load_failed",
        "is not a GraphDef",
    ),
    "corrupt savedmodel archive": (
        lambda t, w: ModelDescriptor(
            name="m", data_type="wine", model_type=ModelType.TENSORFLOWSAVED, data=b"not a tar"
        ),
        "model_load_failed",
        "not a readable tar or zip archive",
    ),
    "location outside the model roots": (
        lambda t, w: ModelDescriptor(
            name="m", data_type="wine", model_type=ModelType.ONNX, location="/etc/passwd"
        ),
        "model_load_failed",
        "outside the allowed model roots",
    ),
    "missing location": (
        lambda t, w: ModelDescriptor(
            name="m", data_type="wine", model_type=ModelType.ONNX, location=str(t / "absent.onnx")
        ),
        "model_load_failed",
        "does not exist",
    ),
    "location digest mismatch": (
        lambda t, w: ModelDescriptor(
            name="m",
            data_type="wine",
            model_type=ModelType.ONNX,
            sha256="1" * 64,
            location=str(_file(t, "m.onnx", onnx_constant(11, 9.0))),
        ),
        "model_load_failed",
        "does not match its sha256",
    ),
    "wrong input shape": (
        lambda t, w: onnx_descriptor("m", onnx_constant(5, 9.0)),
        "model_validation_failed",
        "takes 5 positional features",
    ),
    "raises while scoring": (
        lambda t, w: onnx_descriptor("m", onnx_always_raising(11)),
        "model_validation_failed",
        "raised scoring a probe batch",
    ),
    "tensorflow graph with a wrong input option": (
        lambda t, w: ModelDescriptor(
            name="m",
            data_type="wine",
            model_type=ModelType.TENSORFLOW,
            data=(w / "optimized_WineQuality.pb").read_bytes(),
            options={"input": "nope"},
        ),
        "model_load_failed",
        "cannot wire input 'nope'",
    ),
    "pmml with argmax output": (
        lambda t, w: ModelDescriptor(
            name="m",
            data_type="wine",
            model_type=ModelType.PMML,
            output=2,  # type: ignore[arg-type]
            data=(w / "winequalityLinearRegression.pmml").read_bytes(),
        ),
        "model_load_failed",
        "ARGMAX does not apply",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_a_bad_model_is_rejected_and_the_current_model_keeps_serving(
    case: str, core: ServingCore, tmp_path: Path, wine_dir: Path, wine_matrix
) -> None:
    make, kind, reason = BAD_MODELS[case]
    codec = JsonCodec()
    records = records_from(wine_json_lines(wine_matrix[:20]))
    before = serve_records(
        core, codec, records[:10], models=[onnx_descriptor("good", onnx_constant(11, 1.0))]
    )
    assert {r["model"] for r in before.results} == {"good"}

    after = serve_records(core, codec, records[10:], models=[make(tmp_path, wine_dir)])

    assert {r["model"] for r in after.results} == {"good"}, "the bad model replaced the good one"
    assert len(after.results) == 10
    assert all(r["value"] == 1.0 for r in after.results)
    rejections = [e for e in after.errors if e["kind"] == "model_rejected"]
    assert len(rejections) == 1, after.errors
    assert rejections[0]["error_kind"] == kind
    assert reason in rejections[0]["reason"]
    slot = core.find_slot("wine")
    assert slot is not None
    assert slot.current is not None
    assert slot.current.identity.name == "good"
    if kind != "bad_descriptor":  # an undecodable message has no key, so no slot to count in
        assert slot.rejected_total == 1
        assert reason in slot.rejections[0].reason
    else:
        assert core.counts["model_messages_rejected"] == 1


def test_digest_checked_location_loads_when_it_matches(
    core: ServingCore, tmp_path: Path, wine_matrix
) -> None:
    data = onnx_constant(11, 4.0)
    path = _file(tmp_path, "ok.onnx", data)
    descriptor = ModelDescriptor(
        name="ok",
        data_type="wine",
        model_type=ModelType.ONNX,
        location=path.as_uri(),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    run = serve_records(
        core, JsonCodec(), records_from(wine_json_lines(wine_matrix[:3])), models=[descriptor]
    )
    assert [r["value"] for r in run.results] == [4.0] * 3
    assert {r["version"] for r in run.results} == {
        f"sha256:{hashlib.sha256(data).hexdigest()[:12]}"
    }


class ExitingFactory(FunctionFactory):
    """Calls sys.exit() for one model, as a model library may on a file it dislikes."""

    def load(self, request: LoadRequest) -> Model:
        if request.name == "exits-on-load":
            raise SystemExit(3)
        return super().load(request)


def test_a_factory_calling_sys_exit_rejects_its_model_and_later_models_still_load() -> None:
    """SystemExit is no Exception, yet it must not end the loader thread: a poison pill on the
    models topic would stop every later load, at every restart."""
    registry = FactoryRegistry(FactoryContext())
    factory = ExitingFactory(lambda rows: rows[:, 0], width=2)
    registry.register(1415, lambda context: factory)
    with ServingCore(ServingSettings(), registry) as core:
        core.submit_model(
            ModelDescriptor(name="exits-on-load", data_type="k", model_type=1415, data=b"-")
        )
        core.wait_for_models(5)
        core.submit_model(
            ModelDescriptor(name="fine", data_type="other", model_type=1415, data=b"-")
        )
        loaded = core.wait_for_models(5)
        assert loaded, f"no later model loads ({core.loads_pending} pending): the loader died"
        rejected, rejection = core.rejections_of("k")
        slot = core.find_slot("other")
        held = [] if slot is None else [served.identity.name for _, served in slot.models()]
    assert rejected == 1
    assert rejection is not None
    assert "factory raised SystemExit(3)" in rejection.reason
    assert held == ["fine"]


def _exits(rows: np.ndarray) -> np.ndarray:
    raise SystemExit("the model library gave up")


def test_a_model_calling_sys_exit_on_its_probe_batch_is_rejected() -> None:
    registry = FactoryRegistry(FactoryContext())
    registry.register(1415, FunctionFactory(_exits, width=2))
    with ServingCore(ServingSettings(), registry) as core:
        core.submit_model(ModelDescriptor(name="m", data_type="k", model_type=1415, data=b"-"))
        assert core.wait_for_models(5)
        rejected, rejection = core.rejections_of("k")
    assert rejected == 1
    assert rejection is not None
    assert "raised scoring a probe batch of 2 rows: the model library gave up" in rejection.reason
