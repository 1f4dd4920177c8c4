"""The Open Inference Protocol with the stock Triton clients, unchanged and with their defaults:
``tritonclient.http`` (binary tensor data, and JSON) and ``tritonclient.grpc``, against a real
server (uvicorn and grpc.aio on loopback ports) over a real core. A request is scored as the
stream scores the same records; a bad request gets the protocol's error and the server goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io
import stock_clients
from sklearn.tree import DecisionTreeClassifier
from tls_certificates import write_pki

from builders import onnx_descriptor, onnx_linear, wine_json_lines
from streamserve.api.grpc import grpc_server
from streamserve.api.inference import answering_model
from streamserve.api.server import ApiServer
from streamserve.codecs.json import JsonCodec
from streamserve.codecs.protobuf import WINE_FEATURES
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.runtime.batch import score_records
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings

GRADES, PAIR = "grades", "pair"  # a named classifier of text labels; y = a + 10 b, positional
NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
NUMERIC += ["FP16", "FP32", "FP64", "BF16"]


@dataclass(frozen=True)
class Served:
    core: ServingCore
    http: str  # host:port, as the clients take it
    grpc: str
    rows: np.ndarray  # the wine features


def grades_model(matrix: np.ndarray) -> bytes:
    """A decision tree over the wine features by name, answering text labels."""
    quality = matrix[:, 11]
    labels = np.where(quality >= 7, "good", np.where(quality >= 5, "fair", "poor"))
    frame = pd.DataFrame(matrix[:, :11], columns=list(WINE_FEATURES))
    return skops.io.dumps(DecisionTreeClassifier(max_depth=6, random_state=0).fit(frame, labels))


@pytest.fixture(scope="module")
def served(wine_matrix: np.ndarray) -> Iterator[Served]:
    with ServingCore(ServingSettings()) as core:
        core.submit_model(
            ModelDescriptor(
                name="grades-tree",
                data_type=GRADES,
                model_type=ModelType.SKLEARN,
                data=grades_model(wine_matrix),
            )
        )
        core.submit_model(onnx_descriptor("pair", onnx_linear(np.array([1.0, 10.0]), 0.0), PAIR))
        assert core.wait_for_models(120)
        http_api = ApiServer(core, ApiSettings(port=0), lambda: True)
        grpc_api = grpc_server(core, ApiSettings(grpc_port=0), lambda: True)
        http_api.start()
        grpc_api.start()
        try:
            yield Served(core, f"127.0.0.1:{http_api.port}", grpc_api.address, wine_matrix[:, :11])
        finally:
            grpc_api.stop()
            http_api.stop()


def by_name(rows: np.ndarray, datatype: str = "FP64") -> list[dict[str, Any]]:
    """One [rows] input per wine feature, named as the model names them."""
    return [
        {"name": name, "datatype": datatype, "data": rows[:, column].tolist()}
        for column, name in enumerate(WINE_FEATURES)
    ]


def test_a_named_model_answers_every_client_what_the_stream_publishes(served: Served) -> None:
    stream = score_records(
        served.core, JsonCodec(), wine_json_lines(served.rows[:, :11], key=GRADES)
    )
    published = [output.value for output in stream]
    assert {output.model for output in stream} == {"grades-tree"}
    assert set(published) == {"poor", "fair", "good"}
    call = {"call": "infer", "model": GRADES, "inputs": by_name(served.rows), "id": "all-rows"}
    binary, as_json = stock_clients.http(
        served.http,
        call,  # the client's defaults: binary tensor data both ways
        {**call, "binary": False, "outputs": [{"name": "value", "binary": False}]},
    )
    (over_grpc,) = stock_clients.grpc(served.grpc, call)
    for answer in (binary, as_json, over_grpc):
        assert "error" not in answer, answer
        assert answer["outputs"]["value"] == {
            "datatype": "BYTES",
            "shape": [len(published)],
            "data": published,
        }
        response = answer["response"]
        assert (response["model_name"], response["id"]) == (GRADES, "all-rows")
        assert response["model_version"].startswith("sha256:")
    assert binary["response"]["outputs"][0]["parameters"]["binary_data_size"] > 0
    assert "data" in as_json["response"]["outputs"][0]
    assert binary["response"]["parameters"] == {"model": "grades-tree"}
    assert over_grpc["response"]["parameters"] == {"model": "grades-tree"}


def _pair_call(datatype: str, **extra: Any) -> dict[str, Any]:
    data = [[True, False], [False, True]] if datatype == "BOOL" else [[1, 2], [0, 1]]
    inputs = [{"name": "input", "datatype": datatype, "data": data}]
    return {"call": "infer", "model": PAIR, "inputs": inputs, **extra}


def test_every_numeric_datatype_is_read_as_its_values(served: Served) -> None:
    expected = {datatype: [21.0, 10.0] for datatype in NUMERIC} | {"BOOL": [1.0, 10.0]}
    answers = {
        "http binary": stock_clients.http(served.http, *map(_pair_call, NUMERIC)),
        "http JSON": stock_clients.http(
            served.http,
            *(_pair_call(datatype, binary=False) for datatype in NUMERIC if datatype != "BF16"),
        ),
        "gRPC": stock_clients.grpc(served.grpc, *map(_pair_call, NUMERIC)),
    }
    for way, replies in answers.items():
        got = {
            datatype: reply.get("outputs", {}).get("value", reply)
            for datatype, reply in zip(NUMERIC, replies, strict=False)
        }
        want = {
            datatype: {"datatype": "FP64", "shape": [2], "data": values}
            for datatype, values in expected.items()
            if datatype in got
        }
        assert got == want, way


def test_health_and_metadata(served: Served) -> None:
    answering = answering_model(served.core, PAIR)
    assert answering is not None
    version = answering.identity.version
    calls = [
        {"call": "live"},
        {"call": "ready"},
        {"call": "model_ready", "model": PAIR},
        {"call": "model_ready", "model": PAIR, "version": version},
        {"call": "model_ready", "model": PAIR, "version": "sha256:000000000000"},
        {"call": "model_ready", "model": "nobody"},
        {"call": "server_metadata"},
        {"call": "model_metadata", "model": GRADES},
        {"call": "model_metadata", "model": PAIR, "version": version},
    ]
    for answers in (
        stock_clients.http(served.http, *calls),
        stock_clients.grpc(served.grpc, *calls),
    ):
        assert answers[:6] == [True, True, True, True, False, False]
        server, grades, pair = answers[6:]
        assert server["name"] == "streamserve"
        assert server["extensions"] == ["binary_tensor_data"]
        assert grades["name"] == GRADES
        assert [tensor["name"] for tensor in grades["inputs"]] == list(WINE_FEATURES)
        assert grades["outputs"] == [{"name": "value", "datatype": "BYTES", "shape": [-1]}]
        assert pair["versions"] == [version]
        assert pair["platform"] == "onnx"


def test_bad_requests_get_the_protocols_errors_and_the_server_goes_on(served: Served) -> None:
    good = _pair_call("FP64")
    bad = [
        {**good, "model": "nobody"},
        _pair_call("FP32") | {"inputs": [{"name": "input", "datatype": "FP32", "data": [[1] * 3]}]},
        good | {"inputs": [{"name": "input", "datatype": "BYTES", "data": [["1", "2"]]}]},
        {**good, "version": "sha256:000000000000"},
        {**good, "outputs": [{"name": "probabilities", "binary": True}]},
    ]
    messages = [
        "model 'nobody' not found: no model serves that key",
        "model 'pair' takes 2 positional features, input 'input' has shape [1, 3]",
        "inputs[0] (input): datatype 'BYTES' is not supported for inputs: a model's features "
        "are numbers",
        "model 'pair' has no version 'sha256:000000000000': it serves 'sha256:",
        "model 'pair' has no output 'probabilities'; its output is 'value'",
    ]
    statuses = {
        "http": ["404", "400", "400", "404", "400"],
        "grpc": [f"StatusCode.{code}" for code in ("NOT_FOUND", "INVALID_ARGUMENT")]
        + ["StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT"],
    }
    for protocol, client, address in (
        ("http", stock_clients.http, served.http),
        ("grpc", stock_clients.grpc, served.grpc),
    ):
        *refused, after = client(address, *bad, good)
        assert [answer.get("status") for answer in refused] == statuses[protocol]
        for answer, message in zip(refused, messages, strict=True):
            assert message in answer["error"], (protocol, answer)
        assert after["outputs"]["value"]["data"] == [21.0, 10.0], protocol


def _message(datatype: str = "FP32", shape: tuple[int, ...] = (1, 2), **fields: Any) -> dict:
    tensor = {"name": "input", "datatype": datatype, "shape": list(shape)}
    contents = fields.pop("contents", None)
    if contents is not None:
        tensor["contents"] = contents
    return {"call": "message", "request": {"model_name": PAIR, "inputs": [tensor], **fields}}


def _raw(values: np.ndarray) -> str:
    import base64

    return base64.b64encode(values.tobytes()).decode()


def test_grpc_requests_filled_by_hand_typed_contents_and_malformed_raw_data(
    served: Served,
) -> None:
    """tritonclient always sends raw_input_contents; a client filling the message itself may
    use the typed contents of the datatype (KServe's clients do), or get the raw data wrong."""
    one_row = np.array([[1.0, 2.0]], np.float32)
    answers = stock_clients.grpc(
        served.grpc,
        _message("FP64", contents={"fp64_contents": [1, 2]}),
        _message("INT8", contents={"int_contents": [1, 2]}),
        _message("BOOL", contents={"bool_contents": [True, True]}),
        _message(raw_input_contents=[_raw(one_row[:, :1])]),
        _message(raw_input_contents=[_raw(one_row), _raw(one_row)]),
        _message(contents={"fp32_contents": [1, 2]}, raw_input_contents=[_raw(one_row)]),
        _message("FP64", contents={"int64_contents": [1, 2]}),
        _message("FP16", contents={"fp32_contents": [1, 2]}),
        _message("INT8", contents={"int_contents": [300, 1]}),
        _message(shape=(1, -2), raw_input_contents=[_raw(one_row)]),
        _message(raw_input_contents=[_raw(one_row)]),
    )
    values = [
        np.frombuffer(bytes.fromhex(answer["outputs"][0]["raw_contents"]), "<f8").tolist()
        for answer in answers[:3] + answers[-1:]
    ]
    assert values == [[21.0], [21.0], [11.0], [21.0]]
    errors = [(answer["status"], answer["error"]) for answer in answers[3:-1]]
    assert errors == [
        (
            "StatusCode.INVALID_ARGUMENT",
            "inputs[0] (input): 4 bytes of FP32 data do not fill shape [1, 2] (8 bytes)",
        ),
        ("StatusCode.INVALID_ARGUMENT", "raw_input_contents holds 2 tensors for 1 inputs"),
        (
            "StatusCode.INVALID_ARGUMENT",
            "inputs[0] (input) has contents.fp32_contents, and the request raw_input_contents: "
            "an input's data is in one or the other",
        ),
        (
            "StatusCode.INVALID_ARGUMENT",
            "inputs[0] (input): FP64 data belongs in contents.fp64_contents, not int64_contents",
        ),
        (
            "StatusCode.INVALID_ARGUMENT",
            "inputs[0] (input): FP16 data must be in raw_input_contents",
        ),
        (
            "StatusCode.INVALID_ARGUMENT",
            "inputs[0] (input): INT8 data must lie within [-128, 127]",
        ),
        (
            "StatusCode.INVALID_ARGUMENT",
            "inputs[0] (input): shape must be [rows] or [rows, features]",
        ),
    ]


def test_over_mutual_tls_both_clients_are_answered(
    served: Served, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With the API's certificate files, both protocols speak TLS only; the clients verify the
    server with the CA, and show the certificate the server's CA signed (mutual TLS)."""
    folder = tmp_path_factory.mktemp("pki")
    pki = write_pki(folder)
    client_pem = pki.client.read_bytes()
    split = client_pem.index(b"-----BEGIN CERTIFICATE")
    (folder / "client-key.pem").write_bytes(client_pem[:split])
    (folder / "client-cert.pem").write_bytes(client_pem[split:])
    settings = ApiSettings(
        port=0,
        grpc_port=0,
        tls_certfile=pki.server_cert,
        tls_keyfile=pki.server_key,
        tls_ca_certs=pki.ca,
    )
    tls = ("--ca", str(pki.ca), "--cert", str(folder / "client-cert.pem"))
    tls += ("--key", str(folder / "client-key.pem"))
    http_api = ApiServer(served.core, settings, lambda: True)
    grpc_api = grpc_server(served.core, settings, lambda: True)
    http_api.start()
    grpc_api.start()
    try:
        calls = [{"call": "live"}, _pair_call("FP32")]
        over_http = stock_clients.http(f"127.0.0.1:{http_api.port}", *calls, tls=tls)
        over_grpc = stock_clients.grpc(grpc_api.address, *calls, tls=tls)
    finally:
        grpc_api.stop()
        http_api.stop()
    for live, answer in (over_http, over_grpc):
        assert live is True
        assert answer["outputs"]["value"]["data"] == [21.0, 10.0]
