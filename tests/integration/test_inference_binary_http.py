"""REST's binary tensor data extension, byte by byte: what a client that writes its own bodies
sends and gets (the stock clients' own requests are in test_inference_clients.py).

A body is JSON followed by the inputs' binary data (``Inference-Header-Content-Length`` gives
the JSON part's length; each binary input its ``parameters.binary_data_size``); an answer asked
for as binary is ``application/octet-stream``: JSON, then each binary output's data.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from builders import onnx_descriptor, onnx_linear, onnx_named_linear
from streamserve.api.server import ApiServer
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings
from streamserve.testing import FunctionFactory

WORDS_TYPE = 301  # a model answering text: "yes" where the first feature is positive, else "no"


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    registry = FactoryRegistry(FactoryContext())
    words = FunctionFactory(lambda rows: np.where(rows[:, 0] > 0, "yes", "no"), width=2)
    registry.register(WORDS_TYPE, words)
    with ServingCore(ServingSettings(), registry) as core:
        core.submit_model(onnx_descriptor("pair", onnx_linear(np.array([1.0, 10.0]), 0.0), "pair"))
        named = onnx_named_linear(["alpha", "beta"], np.array([1.0, 10.0]), 0.0)
        core.submit_model(onnx_descriptor("named", named, "named"))
        core.submit_model(
            ModelDescriptor(name="words", data_type="words", model_type=WORDS_TYPE, data=b"-")
        )
        assert core.wait_for_models(60)
        server = ApiServer(core, ApiSettings(port=0), lambda: True)
        server.start()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as http:
                yield http
        finally:
            server.stop()


def binary_body(document: dict[str, Any], *tensors: bytes) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps(document)
    return header + b"".join(tensors), {"Inference-Header-Content-Length": str(len(header))}


def split_answer(reply: httpx.Response) -> tuple[dict[str, Any], bytes]:
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/octet-stream"
    length = int(reply.headers["inference-header-content-length"])
    return orjson.loads(reply.content[:length]), reply.content[length:]


ROWS = np.array([[1.0, 2.0], [0.0, 1.0]], np.float32)  # y = a + 10 b: 21, 10
BINARY_INPUT = {
    "name": "input",
    "shape": [2, 2],
    "datatype": "FP32",
    "parameters": {"binary_data_size": ROWS.nbytes},
}


def test_binary_inputs_and_outputs_as_the_extension_lays_them_out(client: httpx.Client) -> None:
    document = {"id": "7", "inputs": [BINARY_INPUT], "parameters": {"binary_data_output": True}}
    body, headers = binary_body(document, ROWS.tobytes())
    answer, data = split_answer(client.post("/v2/models/pair/infer", content=body, headers=headers))
    assert answer["id"] == "7"
    assert answer["outputs"] == [
        {"name": "value", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16}}
    ]
    assert np.frombuffer(data, "<f8").tolist() == [21.0, 10.0]


def test_an_output_asked_for_as_json_overrides_binary_data_output(client: httpx.Client) -> None:
    document = {
        "inputs": [BINARY_INPUT],
        "outputs": [{"name": "value", "parameters": {"binary_data": False}}],
        "parameters": {"binary_data_output": True},
    }
    body, headers = binary_body(document, ROWS.tobytes())
    reply = client.post("/v2/models/pair/infer", content=body, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in reply.headers
    assert reply.json()["outputs"][0]["data"] == [21.0, 10.0]


def test_json_and_binary_inputs_mix_in_one_request(client: httpx.Client) -> None:
    beta = np.array([2, 1], "<i2")
    document = {
        "inputs": [
            {"name": "alpha", "shape": [2], "datatype": "UINT8", "data": [1, 0]},
            {"name": "beta", "shape": [2, 1], "datatype": "INT16", "parameters": {}}
            | {"parameters": {"binary_data_size": beta.nbytes}},
        ],
        "outputs": [{"name": "value", "parameters": {"binary_data": True}}],
    }
    body, headers = binary_body(document, beta.tobytes())
    answer, data = split_answer(
        client.post("/v2/models/named/infer", content=body, headers=headers)
    )
    assert answer["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(data, "<f8").tolist() == [21.0, 10.0]


def test_text_outputs_are_bytes_elements_each_after_its_length(client: httpx.Client) -> None:
    document = {
        "inputs": [
            {"name": "input", "shape": [3, 2], "datatype": "INT64", "data": [1, 0, -1, 0, 2, 0]}
        ],
        "parameters": {"binary_data_output": True},
    }
    answer, data = split_answer(client.post("/v2/models/words/infer", json=document))
    assert answer["outputs"] == [
        {"name": "value", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": 20}}
    ]
    assert data == b"".join(struct.pack("<I", len(w)) + w for w in (b"yes", b"no", b"yes"))
    as_json = client.post("/v2/models/words/infer", json=document | {"parameters": {}})
    assert as_json.json()["outputs"][0]["data"] == ["yes", "no", "yes"]


GOOD_HEADER = orjson.dumps({"inputs": [BINARY_INPUT]})


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (
            GOOD_HEADER + ROWS.tobytes(),
            {"Inference-Header-Content-Length": "10000"},
            f"Inference-Header-Content-Length is 10000, beyond the request body's "
            f"{len(GOOD_HEADER) + 16} bytes",
        ),
        (
            GOOD_HEADER + ROWS.tobytes(),
            {"Inference-Header-Content-Length": "-5"},
            "Inference-Header-Content-Length must be a number of bytes, not '-5'",
        ),
        (
            GOOD_HEADER + ROWS.tobytes(),
            {"Inference-Header-Content-Length": str(len(GOOD_HEADER) - 1)},
            "the request body is not JSON",
        ),
        (
            GOOD_HEADER + ROWS.tobytes()[:12],
            {"Inference-Header-Content-Length": str(len(GOOD_HEADER))},
            "inputs[0] (input): binary_data_size 16 goes beyond the binary data (12 bytes left "
            "after the inputs before it)",
        ),
        (
            GOOD_HEADER + ROWS.tobytes() + b"tail",
            {"Inference-Header-Content-Length": str(len(GOOD_HEADER))},
            "4 bytes of binary data after the JSON part belong to no input",
        ),
        (
            GOOD_HEADER,
            {},
            "inputs[0] (input) has parameters.binary_data_size, but the request has no "
            "Inference-Header-Content-Length header",
        ),
        (
            *binary_body(
                {"inputs": [BINARY_INPUT | {"parameters": {"binary_data_size": 8}}]},
                ROWS.tobytes()[:8],
            ),
            "inputs[0] (input): 8 bytes of FP32 data do not fill shape [2, 2] (16 bytes)",
        ),
        (
            *binary_body({"inputs": [BINARY_INPUT | {"parameters": {"binary_data_size": -1}}]}),
            "inputs[0] (input): binary_data_size must be a number of bytes",
        ),
        (
            *binary_body({"inputs": [BINARY_INPUT | {"data": [1, 2, 3, 4]}]}, ROWS.tobytes()),
            "inputs[0] (input) has both data and parameters.binary_data_size",
        ),
        (
            *binary_body(
                {"inputs": [BINARY_INPUT], "parameters": {"binary_data_output": "yes"}},
                ROWS.tobytes(),
            ),
            "parameters.binary_data_output must be true or false",
        ),
        (
            GOOD_HEADER + ROWS.tobytes(),
            {"Inference-Header-Content-Length": str(len(GOOD_HEADER)), "Content-Encoding": "gzip"},
            "Content-Encoding 'gzip' is not supported: send the body uncompressed",
        ),
    ],
)
def test_malformed_binary_requests_get_400_and_the_server_goes_on(
    client: httpx.Client, body: bytes, headers: dict[str, str], message: str
) -> None:
    reply = client.post("/v2/models/pair/infer", content=body, headers=headers)
    assert reply.status_code == 400
    assert set(reply.json()) == {"error"}
    assert message in reply.json()["error"]
    good, good_headers = binary_body({"inputs": [BINARY_INPUT]}, ROWS.tobytes())
    after = client.post("/v2/models/pair/infer", content=good, headers=good_headers)
    assert after.json()["outputs"][0]["data"] == [21.0, 10.0]


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT8", [[1, 200]], "INT8 data must lie within [-128, 127]"),
        ("UINT16", [[1, -1]], "UINT16 data must lie within [0, 65535]"),
        ("INT32", [[1, 1.5]], "INT32 data must be integers"),
        ("FP32", [[1, 1e39]], "FP32 data must be finite numbers in range"),
        ("BOOL", [[1, 0]], "BOOL data must be true or false"),
        ("FP64", [["1", "2"]], "FP64 data must be numbers"),
        ("FP64", [[1, 2], [3]], "data is not a tensor"),
        ("BF16", [[1, 2]], "BF16 data must be binary (raw) data"),
        ("FLOAT32", [[1, 2]], "datatype 'FLOAT32' is not a V2 datatype"),
    ],
)
def test_json_data_must_be_of_its_datatype(
    client: httpx.Client, datatype: str, data: list[Any], message: str
) -> None:
    tensor = {"name": "input", "shape": [len(data), 2], "datatype": datatype, "data": data}
    reply = client.post("/v2/models/pair/infer", json={"inputs": [tensor]})
    assert reply.status_code == 400
    assert message in reply.json()["error"]


def test_nested_json_data_is_read_row_major(client: httpx.Client) -> None:
    tensor = {"name": "input", "shape": [2, 2], "datatype": "INT8", "data": [[1, 2], [0, 1]]}
    reply = client.post("/v2/models/pair/infer", json={"inputs": [tensor]})
    assert reply.json()["outputs"][0]["data"] == [21.0, 10.0]


def test_the_versioned_routes_answer_for_the_version_served(client: httpx.Client) -> None:
    version = client.get("/v2/models/pair").json()["versions"][0]
    request = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}
    base = f"/v2/models/pair/versions/{version}"
    assert client.get(base).json()["versions"] == [version]
    assert client.get(f"{base}/ready").json() == {"name": "pair", "ready": True}
    assert client.post(f"{base}/infer", json=request).json()["model_version"] == version
    stale = "/v2/models/pair/versions/sha256:000000000000"
    assert client.get(f"{stale}/ready").status_code == 400
    for reply in (client.get(stale), client.post(f"{stale}/infer", json=request)):
        assert reply.status_code == 404
        assert reply.json() == {
            "error": f"model 'pair' has no version 'sha256:000000000000': it serves {version!r}"
        }
