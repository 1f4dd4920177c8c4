"""Contract 4 in process: every input record yields exactly one result or one error record,
whatever is wrong with it, and the error says what."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import orjson
import pytest

from builders import onnx_constant, onnx_descriptor
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, ServingSettings
from streamserve.testing import FunctionFactory, records_from, serve_records

FRAGILE_TYPE = 101  # a Python model that fails on records whose first feature is 666
POISON = 666.0


def _fragile(features: np.ndarray) -> np.ndarray:
    if (features[:, 0] == POISON).any():
        raise ValueError("poisoned record")
    return features.sum(axis=1)


def good(key: str = "wine", first: float = 1.0) -> bytes:
    return orjson.dumps({"dataType": key, "features": [first] + [0.5] * 10})


# (payload, expected output kind): "result" or the error kind, with a fragment of the reason
STREAM: list[tuple[bytes, str, str]] = [
    (good(), "result", ""),
    (b"{not json", "undecodable_record", "not valid JSON"),
    (b"[1, 2, 3]", "undecodable_record", r"JSON list, expected an object"),
    (b"\xff\xfe\x00", "undecodable_record", "not valid JSON"),
    (b"", "undecodable_record", "not valid JSON"),
    (orjson.dumps({"features": [1.0] * 11}), "undecodable_record", "record has no key"),
    (
        orjson.dumps({"dataType": "wine", "features": [1.0, "x"] + [0.0] * 9}),
        "undecodable_record",
        r"features\[1\] is 'x', not a number",
    ),
    (good("nobody-serves-this"), "no_model", "no model for key 'nobody-serves-this'"),
    (
        orjson.dumps({"dataType": "wine", "features": [1.0] * 5}),
        "missing_features",
        # alone in its batch it has too few columns; beside complete records it lacks some
        r"takes 11 positional features, records carry 5|lacks feature\(s\) the model needs: "
        r"features\[5\], features\[6\]",
    ),
    (
        orjson.dumps({"dataType": "named", "alpha": 1.0}),
        "missing_features",
        r"lacks feature\(s\) the model needs: beta$",
    ),
    (orjson.dumps({"dataType": "named", "alpha": 1.0, "beta": 2.0}), "result", ""),
    (good("fragile", POISON), "scoring_failed", "poisoned record"),
    (good("fragile"), "result", ""),
    (good(), "result", ""),
]


@pytest.fixture
def core_with_fragile_model() -> ServingCore:
    registry = FactoryRegistry(FactoryContext())
    registry.register(FRAGILE_TYPE, FunctionFactory(_fragile, width=11))
    return ServingCore(ServingSettings(), registry)


@pytest.mark.parametrize("batch_size", [1, 4, 1024])
def test_every_record_yields_exactly_one_output(
    batch_size: int, core_with_fragile_model: ServingCore
) -> None:
    core = core_with_fragile_model
    repeated = STREAM * 7
    records = records_from([payload for payload, _, _ in repeated])
    models = [
        onnx_descriptor("wine-model", onnx_constant(11, 1.0), key="wine"),
        ModelDescriptor(
            name="fragile-model", data_type="fragile", model_type=FRAGILE_TYPE, data=b"python"
        ),
        onnx_descriptor("named-model", named_onnx(), key="named"),
    ]
    try:
        run = serve_records(
            core,
            JsonCodec(),
            records,
            models=models,
            batch=BatchSettings(max_records=batch_size, max_delay_ms=0),
        )
    finally:
        core.close()

    outputs = {r["position"]: ("result", "") for r in run.results}
    errors = [e for e in run.errors if e["kind"] != "model_rejected"]
    assert not [e for e in run.errors if e["kind"] == "model_rejected"]
    for error in errors:
        assert error["position"] not in outputs, f"{error['position']} has two outputs"
        outputs[error["position"]] = (error["kind"], error["reason"])
    assert len(run.results) + len(errors) == len(records), "an output was lost or doubled"
    for record, (_, kind, reason) in zip(records, repeated, strict=True):
        got_kind, got_reason = outputs[record.position]
        assert got_kind == kind, record
        assert re.search(reason, got_reason), got_reason
    expected_kinds = Counter(kind for _, kind, _ in repeated)
    assert run.summary.results == expected_kinds["result"]
    assert run.summary.errors == len(records) - expected_kinds["result"]
    assert core.counts["records"] == len(records)


def test_error_records_carry_the_input(core: ServingCore) -> None:
    run = serve_records(core, JsonCodec(), records_from([b"{broken", b"\xff\x00binary"]))
    inputs = [(e.get("input"), e.get("input_base64")) for e in run.errors]
    assert inputs == [("{broken", None), (None, "/wBiaW5hcnk=")]


def named_onnx() -> bytes:
    from builders import onnx_named_linear

    return onnx_named_linear(["alpha", "beta"], np.array([1.0, 1.0]), 0.0)
