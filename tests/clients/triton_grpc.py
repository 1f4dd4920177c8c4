"""Calls streamserve's gRPC API with the stock ``tritonclient.grpc`` client, unchanged.

``python triton_grpc.py HOST:PORT [--ca FILE [--cert FILE --key FILE]] < calls.json`` (with
.venv-clients' interpreter) prints one JSON answer per call; with ``--ca`` it speaks TLS.
Inputs go as the client sends them, ``set_data_from_numpy(array)``: ``raw_input_contents``.
``"call": "message"`` sends a ``ModelInferRequest`` given in protobuf's JSON form (bytes in
base64) through the client's own generated stub, as a client that fills the message itself
would (typed ``contents``, or malformed raw data).
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
import tritonclient.grpc as grpcclient
from google.protobuf import json_format
from triton_calls import array, run, tensor, tls_files
from tritonclient.grpc import service_pb2, service_pb2_grpc


def main() -> None:
    tls = tls_files(sys.argv[2:])
    if tls:
        client = grpcclient.InferenceServerClient(
            url=sys.argv[1],
            ssl=True,
            root_certificates=tls["ca"],
            private_key=tls.get("key"),
            certificate_chain=tls.get("cert"),
        )
    else:
        client = grpcclient.InferenceServerClient(url=sys.argv[1])
    run(
        {
            "live": lambda call: client.is_server_live(),
            "ready": lambda call: client.is_server_ready(),
            "model_ready": lambda call: client.is_model_ready(
                call["model"], call.get("version", "")
            ),
            "server_metadata": lambda call: server_metadata(client.get_server_metadata()),
            "model_metadata": lambda call: model_metadata(
                client.get_model_metadata(call["model"], call.get("version", ""))
            ),
            "infer": lambda call: infer(client, call),
            "message": lambda call: message(sys.argv[1], call),
        }
    )


def infer(client: grpcclient.InferenceServerClient, call: dict[str, Any]) -> Any:
    inputs = []
    for spec in call["inputs"]:
        data = array(spec)
        item = grpcclient.InferInput(spec["name"], list(data.shape), spec["datatype"])
        item.set_data_from_numpy(data)
        inputs.append(item)
    outputs = None
    if "outputs" in call:
        outputs = [grpcclient.InferRequestedOutput(output["name"]) for output in call["outputs"]]
    result = client.infer(
        call["model"],
        inputs,
        model_version=call.get("version", ""),
        outputs=outputs,
        request_id=call.get("id", ""),
    )
    response = result.get_response()
    return {
        "response": infer_response(response),
        "outputs": {
            output.name: tensor(result.as_numpy(output.name), output.datatype)
            for output in response.outputs
        },
    }


def message(url: str, call: dict[str, Any]) -> Any:
    request = json_format.ParseDict(call["request"], service_pb2.ModelInferRequest())
    with grpc.insecure_channel(url) as channel:
        try:
            reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        except grpc.RpcError as err:
            return {"error": err.details(), "status": str(err.code())}
    answer = infer_response(reply)
    answer["outputs"] = [
        {**output, "raw_contents": raw.hex()}
        for output, raw in zip(answer["outputs"], reply.raw_output_contents, strict=True)
    ]
    return answer


# The answers in the REST API's JSON shapes (int64 as numbers, parameters as their values), so
# that a test compares them with the REST answers as they are.
def infer_response(response: Any) -> dict[str, Any]:
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "parameters": {
            key: getattr(value, value.WhichOneof("parameter_choice"))
            for key, value in response.parameters.items()
        },
        "outputs": [
            {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
            for output in response.outputs
        ],
    }


def server_metadata(metadata: Any) -> dict[str, Any]:
    extensions = list(metadata.extensions)
    return {"name": metadata.name, "version": metadata.version, "extensions": extensions}


def model_metadata(metadata: Any) -> dict[str, Any]:
    def tensors(described: Any) -> list[dict[str, Any]]:
        return [
            {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
            for tensor in described
        ]

    return {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": tensors(metadata.inputs),
        "outputs": tensors(metadata.outputs),
    }


if __name__ == "__main__":
    main()
