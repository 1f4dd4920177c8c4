"""Fuzz target: the embedded runtime on mutated record streams beside a good ONNX model.

A real ONNX model (inputs named by the wine features) serves key ``wine``; fuzzed JSON or CSV
records stream through ``serve_records``, in micro-batches of a drawn size, and a known good
record closes every stream. Invariants: nothing raises; every input gives exactly one result or
error (counted by ``position``); the good model keeps serving: the good record at the end is
scored by it, with the right value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mutations import WINE_ROW, fuzz_settings, json_records, mutated

from builders import onnx_descriptor, onnx_named_linear
from streamserve.codecs.protobuf import WINE_FEATURES
from streamserve.codecs.registry import build_codec
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, CodecSettings, ServingSettings
from streamserve.testing import records_from, serve_records

CASES = 2_500
WEIGHTS = np.linspace(0.1, 1.1, 11)
BIAS = 0.5
EXPECTED = float(np.dot(np.asarray(WINE_ROW, np.float32), WEIGHTS.astype(np.float32)) + BIAS)
GOOD = {
    "json": orjson.dumps({"dataType": "wine", **dict(zip(WINE_FEATURES, WINE_ROW, strict=True))}),
    "wine-csv": ";".join(map(repr, WINE_ROW)).encode() + b";5",
}
CODECS = {
    "json": build_codec(CodecSettings(format="json")),
    "wine-csv": build_codec(CodecSettings(format="wine-csv")),
}


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingCore]:
    root: Path = tmp_path_factory.mktemp("models")
    serving = ServingCore(ServingSettings(model_roots=[root]))
    model = onnx_descriptor("good", onnx_named_linear(list(WINE_FEATURES), WEIGHTS, BIAS))
    run = serve_records(serving, CODECS["json"], records_from([GOOD["json"]]), models=[model])
    assert [r["value"] for r in run.results] == pytest.approx([EXPECTED], rel=1e-5)
    yield serving
    serving.close()


csv_payloads = st.one_of(st.just(GOOD["wine-csv"]).flatmap(mutated), st.binary(max_size=64))
streams = st.one_of(
    st.tuples(st.just("json"), st.lists(json_records(), max_size=12)),
    st.tuples(st.just("wine-csv"), st.lists(csv_payloads, max_size=12)),
)


@pytest.mark.timeout(280)
@fuzz_settings(CASES)
@given(streams, st.integers(1, 16))
def test_every_record_gives_one_output_and_the_good_model_keeps_serving(
    core: ServingCore, stream: tuple[str, list[bytes]], batch_records: int
) -> None:
    codec_name, payloads = stream
    records = records_from([*payloads, GOOD[codec_name]], prefix="fuzz")
    run = serve_records(
        core,
        CODECS[codec_name],
        records,
        batch=BatchSettings(max_records=batch_records, max_delay_ms=0),
    )
    outputs = Counter(output["position"] for output in [*run.results, *run.errors])
    assert outputs == Counter(record.position for record in records)
    last = [result for result in run.results if result["position"] == records[-1].position]
    assert len(last) == 1, f"the good record was not scored: {run.errors[-3:]}"
    assert last[0]["model"] == "good"
    assert last[0]["value"] == pytest.approx(EXPECTED, rel=1e-5)
