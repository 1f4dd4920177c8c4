"""A key pinned before its first batch (right after a start, its model loaded and staged)
still takes that model: a pin keeps the current model serving, it never leaves a key with
none.
"""

from __future__ import annotations

import httpx
import onnx
import orjson
from onnx import TensorProto, helper

from streamserve.api.server import ApiServer
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.runtime.batch import score_records
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings

TOKEN = "pinning-" + "0123456789abcdefghijklmnopqrstuv"


def _sum_model() -> bytes:
    """y = x0 + x1, one output per row."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
        ],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [None])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_pinning_a_key_before_its_first_batch_keeps_its_model_serving() -> None:
    core = ServingCore(ServingSettings())
    server = ApiServer(core, ApiSettings(port=0, admin_token=TOKEN), lambda: True)
    try:
        core.submit_model(
            ModelDescriptor(
                name="sum", data_type="wine", model_type=ModelType.ONNX, data=_sum_model()
            )
        )
        assert core.wait_for_models(60)
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            metadata = http.get("/v2/models/wine")
            pinned = http.post("/admin/keys/wine/pin", headers={"Authorization": f"Bearer {TOKEN}"})
            inference = http.post(
                "/v2/models/wine/infer",
                json={
                    "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]
                },
            )
        outputs = score_records(
            core, JsonCodec(), [orjson.dumps({"dataType": "wine", "features": [1.0, 2.0]})]
        )
    finally:
        server.stop()
        core.close()
    assert metadata.status_code == 200, "setup: the key's model is loaded and validated"
    assert pinned.status_code == 200, pinned.text
    (output,) = outputs
    assert output.ok, (
        "operations.md: 'pin keeps the current model serving'; the key's only model (loaded, "
        "validated, staged for the key's next batch) never serves once the key is pinned: the "
        f"record got {output.error_kind}: {output.reason!r}; V2 inference got "
        f"{inference.status_code} {inference.text} while /v2/models/wine answered 200"
    )
