"""The dashboard's summary stays small whatever the model messages name: docs/operations.md says
the largest first load (long names and reasons, a selected key with rejections) stays under
200 KB, and the page polls it every 2 s. Names, versions, descriptions and reasons come from
model messages, whose size only the model message limit bounds (megabytes)."""

from __future__ import annotations

import httpx
import orjson

from builders import onnx_constant, onnx_descriptor
from streamserve.api.server import ApiServer
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor.model_descriptor import MAX_NAME_CHARS as MAX_DESCRIPTOR_NAME
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings
from streamserve.testing import records_from

MAX_SUMMARY_BYTES = 200_000  # docs/operations.md, "With many keys"
KEY = "wine-" + "k" * 400
NAME = "model-" + "n" * (MAX_DESCRIPTOR_NAME - 16)  # near the longest a model may name
DESCRIPTION = "a model card pasted in whole. " * 30_000  # 900 KB
VERSION = "v" * (MAX_DESCRIPTOR_NAME - 16)
MODELS = 4


def _stream(core: ServingCore, count: int) -> None:
    record = orjson.dumps({"dataType": KEY, "features": [1.0] * 11})
    core.score(JsonCodec().decode(records_from([record] * count)))


def test_a_summary_with_long_names_stays_small(core: ServingCore) -> None:
    for index in range(MODELS):  # each swaps in: a current, a previous, models served before
        core.submit_model(
            onnx_descriptor(
                f"{NAME}{index}",
                onnx_constant(11, float(index)),
                KEY,
                version=f"{VERSION}{index}",
                description=DESCRIPTION,
            )
        )
        assert core.wait_for_models(60)
        _stream(core, 3)
    for index in range(3):  # rejections, each naming its model
        broken = onnx_descriptor(f"{NAME}-broken{index}", b"not onnx", KEY, version=VERSION)
        core.submit_model(broken)
    assert core.wait_for_models(60)
    server = ApiServer(core, ApiSettings(port=0), lambda: True)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            summary = http.get("/dashboard/summary", params={"key": KEY})
            whole = http.get(f"/keys/{KEY}")
    finally:
        server.stop()
    assert summary.status_code == 200
    assert len(summary.content) < MAX_SUMMARY_BYTES, (
        f"a dashboard poll is {len(summary.content):,} bytes: names and descriptions from model "
        "messages are sent whole, every 2 s"
    )
    document = summary.json()
    assert document["keys"]["rows"][0]["key"] == KEY  # whole: the page selects a key by it
    assert document["keys"]["rows"][0]["model"].startswith("model-nnn")
    assert document["key"]["key"] == KEY
    assert document["key"]["current"]["name"].startswith("model-nnn")
    assert document["key"]["current"]["invocations"] == 3
    assert len(document["key"]["recent_rejections"]) == 3
    # the API itself still has every name whole
    assert whole.json()["current"]["description"] == DESCRIPTION
    assert whole.json()["current"]["name"] == f"{NAME}{MODELS - 1}"
