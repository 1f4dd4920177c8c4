"""Review of issue 18 (Open Inference Protocol): tensors at the datatypes' and shapes' limits.

Each test drives a real server on loopback (uvicorn for REST, grpc.aio for gRPC) over a real
core and a real ONNX model, and asserts what docs/inference-protocol.md promises: values within
their datatype's range are read, values outside it are refused as the request's fault (400,
``INVALID_ARGUMENT``), never a defect (500, ``INTERNAL``), and a request holds memory in
proportion to its body.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest

from builders import onnx_descriptor, onnx_linear
from streamserve.api.grpc import grpc_server
from streamserve.api.grpc._generated import grpc_predict_v2_pb2 as pb
from streamserve.api.grpc._generated.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from streamserve.api.server import ApiServer
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings

PAIR = "pair"  # y = a + 10 b, positional
TENSOR = pb.ModelInferRequest.InferInputTensor


@dataclass(frozen=True)
class Served:
    http: httpx.Client
    grpc: GRPCInferenceServiceStub


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with ServingCore(ServingSettings()) as core:
        core.submit_model(onnx_descriptor(PAIR, onnx_linear(np.array([1.0, 10.0]), 0.0), PAIR))
        assert core.wait_for_models(60)
        http_api = ApiServer(core, ApiSettings(port=0), lambda: True)
        grpc_api = grpc_server(core, ApiSettings(grpc_port=0), lambda: True)
        http_api.start()
        grpc_api.start()
        try:
            with (
                httpx.Client(base_url=f"http://127.0.0.1:{http_api.port}", timeout=60) as http,
                grpc.insecure_channel(grpc_api.address) as channel,
            ):
                yield Served(http, GRPCInferenceServiceStub(channel))
        finally:
            grpc_api.stop()
            http_api.stop()


def binary_post(
    http: httpx.Client, inputs: list[dict[str, object]], *data: bytes
) -> httpx.Response:
    header = orjson.dumps({"inputs": inputs})
    return http.post(
        f"/v2/models/{PAIR}/infer",
        content=header + b"".join(data),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def grpc_refusal(stub: GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, timeout=60)
    return refused.value


def test_uint64_values_beyond_int64_are_read_in_json_and_grpc_contents(served: Served) -> None:
    """Docs: UINT64 takes "integers within the type's range". [2**63, 1] is such a tensor, but
    numpy reads a list mixing it with smaller integers as float64, and it was refused as
    'UINT64 data must be integers'."""
    big = 2**63
    expected = [float(big) + 10.0]
    inputs = [{"name": "input", "shape": [1, 2], "datatype": "UINT64", "data": [big, 1]}]
    reply = served.http.post(f"/v2/models/{PAIR}/infer", json={"inputs": inputs})
    assert reply.status_code == 200, f"a valid UINT64 tensor refused over REST: {reply.text}"
    assert reply.json()["outputs"][0]["data"] == expected
    contents = pb.InferTensorContents(uint64_contents=[big, 1])
    tensor = TENSOR(name="input", datatype="UINT64", shape=[1, 2], contents=contents)
    answer = served.grpc.ModelInfer(pb.ModelInferRequest(model_name=PAIR, inputs=[tensor]))
    assert np.frombuffer(answer.raw_output_contents[0], "<f8").tolist() == expected


@pytest.mark.parametrize(
    ("datatype", "raw"),
    [
        ("FP32", np.array([[np.nan, 1.0]], "<f4").tobytes()),
        ("FP32", np.array([[np.inf, 1.0]], "<f4").tobytes()),
        ("FP16", np.array([[-np.inf, 1.0]], "<f2").tobytes()),
        ("FP64", np.array([[1.0, np.nan]], "<f8").tobytes()),
        ("BF16", np.array([[0x7F80, 0x3F80]], "<u2").tobytes()),  # +inf, 1.0
    ],
)
def test_non_finite_raw_floats_are_refused_as_json_and_typed_contents_are(
    served: Served, datatype: str, raw: bytes
) -> None:
    """Docs: FP16/FP32/FP64 inputs are "finite numbers within the type's range"; JSON data and
    gRPC's typed contents refuse NaN and infinity. Binary (raw) data let them through: NaN was
    taken for a missing feature ("the records carry 1"), infinity reached the model."""
    tensor = {"name": "input", "shape": [1, 2], "datatype": datatype}
    reply = binary_post(served.http, [tensor | {"parameters": {"binary_data_size": len(raw)}}], raw)
    assert reply.status_code == 400
    assert reply.json()["error"] == (
        f"inputs[0] ({tensor['name']}): {datatype} data must be finite numbers in range"
    ), "a non-finite raw float is not refused as what it is"
    request = pb.ModelInferRequest(
        model_name=PAIR,
        inputs=[TENSOR(name="input", datatype=datatype, shape=[1, 2])],
        raw_input_contents=[raw],
    )
    refused = grpc_refusal(served.grpc, request)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        refused.details() == f"inputs[0] (input): {datatype} data must be finite numbers in range"
    )


def test_a_raw_bool_byte_other_than_0_or_1_is_refused(served: Served) -> None:
    """Docs: a raw BOOL is "one byte, 0 or 1", and "a value not of its datatype is refused
    rather than coerced". A byte 2 was read as true."""
    tensor = {"name": "input", "shape": [1, 2], "datatype": "BOOL"}
    reply = binary_post(
        served.http, [tensor | {"parameters": {"binary_data_size": 2}}], b"\x02\x01"
    )
    assert reply.status_code == 400, f"a BOOL byte 2 was coerced: {reply.text}"
    assert reply.json()["error"] == "inputs[0] (input): BOOL data must be bytes 0 or 1"


def test_a_shape_too_large_for_memory_is_the_requests_fault(served: Served) -> None:
    """A zero-row shape whose width no array can have: 500 over REST and INTERNAL over gRPC
    (numpy's "array is too big" escaped as a defect), where the request is at fault."""
    inputs = [{"name": "input", "shape": [0, 2**70], "datatype": "FP32", "data": []}]
    reply = served.http.post(f"/v2/models/{PAIR}/infer", json={"inputs": inputs})
    assert reply.status_code == 400, f"a malformed shape answered as a defect: {reply.text}"
    request = pb.ModelInferRequest(
        model_name=PAIR,
        inputs=[TENSOR(name="input", datatype="FP32", shape=[0, 2**62])],
        raw_input_contents=[b""],
    )
    refused = grpc_refusal(served.grpc, request)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.details()


SERVER = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from builders import onnx_descriptor, onnx_linear
from streamserve.api.server import ApiServer
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings
with ServingCore(ServingSettings()) as core:
    core.submit_model(onnx_descriptor("pair", onnx_linear(np.array([1.0, 10.0]), 0.0), "pair"))
    assert core.wait_for_models(60)
    server = ApiServer(core, ApiSettings(port=0), lambda: True)
    server.start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()
"""


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_wide_tensor_holds_memory_in_proportion_to_its_body() -> None:
    """Endpoints: "a parsed request takes about ten times its body's size in memory", and
    api.inference_threads bounds how many are held. A tensor wider than the model was given a
    generated name per column before being refused: 8 MiB of raw BOOL data ([1, 8M]) took
    about a gigabyte, and a 90-byte JSON body of shape [0, 3000000] a few hundred megabytes
    (a width of 10**9 exhausts any machine)."""
    tests = Path(__file__).resolve().parents[1]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tests)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert server.stdout is not None
    assert server.stdin is not None
    try:
        port = int(server.stdout.readline())
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            http.get("/v2/health/live")
            before = _peak_rss_bytes(server.pid)
            width = 8 * 2**20
            tensor = {"name": "input", "shape": [1, width], "datatype": "BOOL"}
            wide = binary_post(
                http, [tensor | {"parameters": {"binary_data_size": width}}], bytes(width)
            )
            no_rows = [{"name": "input", "shape": [0, 3_000_000], "datatype": "FP32", "data": []}]
            empty = http.post(f"/v2/models/{PAIR}/infer", json={"inputs": no_rows})
            grown = _peak_rss_bytes(server.pid) - before
        assert wide.status_code == 400, wide.text
        assert empty.status_code in (200, 400), empty.text
        assert grown < 10 * width + 64 * 2**20, (
            f"a request of {width / 2**20:.0f} MiB grew the server's peak memory by "
            f"{grown / 2**20:.0f} MiB"
        )
    finally:
        server.stdin.close()
        server.wait(timeout=60)
        server.stdout.close()
