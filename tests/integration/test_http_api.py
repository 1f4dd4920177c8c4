"""The HTTP API on a real server (uvicorn on a loopback port) over the live core."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from builders import onnx_constant, onnx_descriptor, onnx_linear, onnx_named_linear
from streamserve.api.server import ApiServer
from streamserve.codecs.base import InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

TOKEN = "s3cret-token-of-the-tests"


@pytest.fixture
def client(core: ServingCore) -> Iterator[httpx.Client]:
    server = ApiServer(core, ApiSettings(port=0, admin_token=TOKEN), lambda: True)
    server.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as http:
        yield http
    server.stop()


def publish(core: ServingCore, *descriptors) -> None:
    for descriptor in descriptors:
        core.submit_model(descriptor)
    assert core.wait_for_models(60)


def stream(core: ServingCore, count: int, key: str = "wine") -> None:
    records = [InputRecord(orjson.dumps({"dataType": key, "features": [1.0] * 11}))] * count
    core.score(JsonCodec().decode(records))


def test_a_swap_is_visible_through_the_api(core: ServingCore, client: httpx.Client) -> None:
    publish(core, onnx_descriptor("first", onnx_constant(11, 1.0), version="v1"))
    stream(core, 5)
    assert client.get("/keys/wine").json()["current"]["name"] == "first"
    publish(core, onnx_descriptor("second", onnx_constant(11, 2.0), version="v2"))
    assert client.get("/keys/wine").json()["staged"]["name"] == "second"
    stream(core, 3)
    state = client.get("/keys/wine").json()
    assert (state["current"]["name"], state["current"]["version"]) == ("second", "v2")
    assert state["current"]["invocations"] == 3
    assert state["previous"]["name"] == "first"
    assert state["previous"]["invocations"] == 5
    assert [k["key"] for k in client.get("/keys").json()["keys"]] == ["wine"]


def _samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = client.get("/metrics")
    assert reply.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def test_metrics_parse_and_move_as_records_flow(core: ServingCore, client: httpx.Client) -> None:
    publish(core, onnx_descriptor("m", onnx_constant(11, 1.0), version="v7"))
    stream(core, 10)
    before = _samples(client)
    stream(core, 32)
    core.score(JsonCodec().decode([InputRecord(b"{broken")]))
    after = _samples(client)
    labels = (("key", "wine"), ("model", "m"), ("version", "v7"))
    assert (
        after[("streamserve_records_total", ())] == before[("streamserve_records_total", ())] + 33
    )
    assert after[("streamserve_model_results_total", labels)] == 42
    assert after[("streamserve_record_errors_total", (("kind", "undecodable_record"),))] == 1
    batches = ("streamserve_scoring_batch_seconds_count", labels)
    assert (before[batches], after[batches]) == (1, 2)
    assert ("streamserve_model_load_seconds", labels) in after
    assert after[("streamserve_model_swap_seconds", labels)] > 0
    assert after[("streamserve_batch_size_count", ())] == 3  # batches of 10, 32 and 1
    assert after[("streamserve_batch_size_bucket", (("le", "16"),))] == 2
    assert after[("streamserve_batch_size_sum", ())] == 43
    assert client.get("/models").json() == {
        "models": [
            {
                "key": "wine",
                "role": "current",
                "name": "m",
                "version": "v7",
                "model_type": "ONNX",
                "description": "",
            }
        ]
    }


def test_a_republished_model_is_one_metrics_series(core: ServingCore, client: httpx.Client) -> None:
    for _ in range(2):  # the same model twice: current and previous carry the same labels
        publish(core, onnx_descriptor("m", onnx_constant(11, 1.0), version="v7"))
        stream(core, 3)
    reply = client.get("/metrics")
    labels = [
        tuple(sorted(sample.labels.items()))
        for family in text_string_to_metric_families(reply.text)
        if family.name == "streamserve_model_results"
        for sample in family.samples
        if sample.name == "streamserve_model_results_total"
    ]
    assert labels == [(("key", "wine"), ("model", "m"), ("version", "v7"))]


def test_v2_metadata_and_inference_use_the_live_model(
    core: ServingCore, client: httpx.Client
) -> None:
    weights = np.arange(11, dtype=float)
    publish(core, onnx_descriptor("linear", onnx_linear(weights, 0.5), version="v1"))
    metadata = client.get("/v2/models/wine").json()
    assert metadata["name"] == "wine"
    assert metadata["versions"] == ["v1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 11]}]
    assert metadata["outputs"] == [{"name": "value", "datatype": "FP64", "shape": [-1]}]
    rows = np.random.default_rng(0).random((3, 11))
    reply = client.post(
        "/v2/models/wine/infer",
        json={
            "id": "req-1",
            "inputs": [
                {
                    "name": "input",
                    "shape": [3, 11],
                    "datatype": "FP32",
                    "data": rows.ravel().tolist(),
                }
            ],
        },
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("wine", "v1", "req-1")
    (output,) = body["outputs"]
    assert output["shape"] == [3]
    assert output["datatype"] == "FP64"
    np.testing.assert_allclose(output["data"], rows @ weights + 0.5, rtol=1e-5)


def test_v2_inference_by_named_inputs(core: ServingCore, client: httpx.Client) -> None:
    publish(
        core,
        onnx_descriptor("named", onnx_named_linear(["alpha", "beta"], np.array([1.0, 10.0]), 0.0)),
    )
    reply = client.post(
        "/v2/models/wine/infer",
        json={
            "inputs": [
                {"name": "beta", "shape": [2], "datatype": "FP64", "data": [1, 2]},
                {"name": "alpha", "shape": [2, 1], "datatype": "FP64", "data": [3, 4]},
            ]
        },
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [13.0, 24.0]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nobody/infer", {"inputs": []}, 404, "model 'nobody' not found"),
        ("/v2/models/wine/infer", b"{not json", 400, "not JSON"),
        ("/v2/models/wine/infer", {"no": "inputs"}, 400, "'inputs' list"),
        ("/v2/models/wine/infer", {"inputs": [{"name": "x"}]}, 400, "lacks shape, datatype, data"),
        (
            "/v2/models/wine/infer",
            {"inputs": [{"name": "x", "shape": [1, 11], "datatype": "BYTES", "data": ["a"] * 11}]},
            400,
            "datatype 'BYTES' is not supported",
        ),
        (
            "/v2/models/wine/infer",
            {"inputs": [{"name": "x", "shape": [2, 11], "datatype": "FP32", "data": [1.0] * 11}]},
            400,
            "11 values do not fill shape [2, 11]",
        ),
        (
            "/v2/models/wine/infer",
            {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1.0] * 5}]},
            400,
            "takes 11 positional features",
        ),
    ],
)
def test_malformed_v2_requests_get_4xx_with_a_clear_error(
    core: ServingCore, client: httpx.Client, path: str, body, status: int, message: str
) -> None:
    publish(core, onnx_descriptor("m", onnx_constant(11, 1.0)))
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    reply = client.post(path, content=content, headers={"content-type": "application/json"})
    assert reply.status_code == status
    assert set(reply.json()) == {"error"}
    assert message in reply.json()["error"]


def test_health_and_model_readiness(core: ServingCore, client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/wine/ready").status_code == 400
    publish(core, onnx_descriptor("m", onnx_constant(11, 1.0)))
    assert client.get("/v2/models/wine/ready").json() == {"name": "wine", "ready": True}
    assert client.get("/v2").json()["name"] == "streamserve"


def test_admin_actions_need_the_token(core: ServingCore, client: httpx.Client) -> None:
    publish(core, onnx_descriptor("first", onnx_constant(11, 1.0)))
    stream(core, 1)
    publish(core, onnx_descriptor("second", onnx_constant(11, 2.0)))
    stream(core, 1)
    assert client.post("/admin/keys/wine/rollback").status_code == 401
    wrong = {"authorization": "Bearer nope"}
    assert client.post("/admin/keys/wine/rollback", headers=wrong).status_code == 401
    bare = {"authorization": TOKEN}  # the right token, without the Bearer scheme
    assert client.post("/admin/keys/wine/rollback", headers=bare).status_code == 401
    auth = {"authorization": f"Bearer {TOKEN}"}

    reply = client.post("/admin/keys/wine/rollback", headers=auth)
    assert reply.json() == {"key": "wine", "current": "first", "version": reply.json()["version"]}
    stream(core, 1)
    assert client.get("/keys/wine").json()["current"]["name"] == "first"

    assert client.post("/admin/keys/wine/pin", headers=auth).json()["pinned"] is True
    publish(core, onnx_descriptor("third", onnx_constant(11, 3.0)))
    stream(core, 1)
    state = client.get("/keys/wine").json()
    assert (state["current"]["name"], state["staged"]["name"]) == ("first", "third")
    client.post("/admin/keys/wine/unpin", headers=auth)
    stream(core, 1)
    assert client.get("/keys/wine").json()["current"]["name"] == "third"

    assert client.delete("/admin/keys/wine", headers=auth).json()["unloaded"] is True
    assert client.get("/keys/wine").status_code == 404
    assert client.post("/admin/keys/wine/pin", headers=auth).status_code == 404


def test_admin_actions_are_off_without_a_configured_token(core: ServingCore) -> None:
    server = ApiServer(core, ApiSettings(port=0), lambda: True)
    server.start()
    try:
        reply = httpx.post(
            f"http://127.0.0.1:{server.port}/admin/keys/wine/rollback",
            headers={"authorization": "Bearer anything"},
        )
    finally:
        server.stop()
    assert reply.status_code == 403
    assert "disabled" in reply.json()["error"]
