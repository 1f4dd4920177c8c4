"""Review of issue 18 (Open Inference Protocol): the classification extension over gRPC.

docs/inference-protocol.md: "Triton's classification extension
(`outputs[].parameters.classification`) is refused: the model's output rule decides what a model
answers", and over gRPC "the messages are those of the REST API". REST refused it; gRPC ignored
the parameter and answered the raw values, so ``tritonclient.grpc``'s
``InferRequestedOutput("value", class_count=2)`` got numbers where it asked for the top classes.
Real servers on loopback over a real core and an ONNX model.
"""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest

from builders import onnx_descriptor, onnx_linear
from streamserve.api.grpc import grpc_server
from streamserve.api.grpc._generated import grpc_predict_v2_pb2 as pb
from streamserve.api.grpc._generated.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from streamserve.api.server import ApiServer
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings

MESSAGE = "outputs[0] (value): the classification extension is not supported"


def test_a_classification_request_is_refused_over_grpc_as_over_rest() -> None:
    with ServingCore(ServingSettings()) as core:
        core.submit_model(onnx_descriptor("pair", onnx_linear(np.array([1.0, 10.0]), 0.0), "pair"))
        assert core.wait_for_models(60)
        http_api = ApiServer(core, ApiSettings(port=0), lambda: True)
        grpc_api = grpc_server(core, ApiSettings(grpc_port=0), lambda: True)
        http_api.start()
        grpc_api.start()
        try:
            over_rest = httpx.post(
                f"http://127.0.0.1:{http_api.port}/v2/models/pair/infer",
                json={
                    "inputs": [
                        {"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}
                    ],
                    "outputs": [{"name": "value", "parameters": {"classification": 2}}],
                },
                timeout=60,
            )
            tensor = pb.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP64", shape=[1, 2]
            )
            # what tritonclient.grpc.InferRequestedOutput("value", class_count=2) sends
            output = pb.ModelInferRequest.InferRequestedOutputTensor(
                name="value", parameters={"classification": pb.InferParameter(int64_param=2)}
            )
            request = pb.ModelInferRequest(
                model_name="pair",
                inputs=[tensor],
                outputs=[output],
                raw_input_contents=[np.array([1.0, 2.0], "<f8").tobytes()],
            )
            with grpc.insecure_channel(grpc_api.address) as channel:
                stub = GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ModelInfer(request, timeout=60)  # answered the values: no error
        finally:
            grpc_api.stop()
            http_api.stop()
    assert (over_rest.status_code, over_rest.json()["error"]) == (400, MESSAGE)
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        MESSAGE,
    )
