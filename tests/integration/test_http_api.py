"""The HTTP API on a real server (uvicorn on a loopback port) over the live core."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from builders import onnx_constant, onnx_descriptor, onnx_linear, onnx_named_linear
from streamserve.api.server import ApiServer
from streamserve.codecs.base import InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings
from streamserve.testing import FunctionFactory, GatedFactory

TOKEN = "s3cret-token-of-the-tests-0123456789"  # 32+ characters, as api.admin_token needs


@contextmanager
def running(
    core: ServingCore, is_ready: Callable[[], bool] = lambda: True
) -> Iterator[httpx.Client]:
    server = ApiServer(core, ApiSettings(port=0, admin_token=TOKEN), is_ready)
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as http:
            yield http
    finally:
        server.stop()


@pytest.fixture
def client(core: ServingCore) -> Iterator[httpx.Client]:
    with running(core) as http:
        yield http


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


def test_a_rollback_without_a_previous_model_is_a_conflict(
    core: ServingCore, client: httpx.Client
) -> None:
    publish(core, onnx_descriptor("only", onnx_constant(11, 1.0)))
    stream(core, 1)
    reply = client.post("/admin/keys/wine/rollback", headers={"authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 409
    assert reply.json() == {"error": "key 'wine' has no previous model to roll back to"}
    assert client.get("/keys/wine").json()["current"]["name"] == "only"


def test_every_refusal_answers_its_status_and_a_json_error(
    core: ServingCore, client: httpx.Client
) -> None:
    """One request per family of refused requests, and Starlette's own refusals alike."""
    auth = {"authorization": f"Bearer {TOKEN}"}
    replies = {
        "invalid request": client.post("/v2/models/wine/infer", content=b"[").status_code,
        "not authenticated": client.post("/admin/keys/wine/pin").status_code,
        "key not found": client.post("/admin/keys/nobody/pin", headers=auth).status_code,
        "model not found": client.get("/v2/models/nobody").status_code,
        "no such route": client.get("/nowhere").status_code,
        "method not allowed": client.delete("/keys").status_code,
    }
    assert replies == {
        "invalid request": 400,
        "not authenticated": 401,
        "key not found": 404,
        "model not found": 404,
        "no such route": 404,
        "method not allowed": 405,
    }
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    not_allowed = client.delete("/keys")
    assert not_allowed.json() == {"error": "Method Not Allowed"}
    assert set(not_allowed.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_an_unexpected_exception_answers_json_500_and_the_server_keeps_serving(
    core: ServingCore,
) -> None:
    def broken_readiness() -> bool:
        raise RuntimeError("the readiness probe broke")

    with running(core, broken_readiness) as http:
        failures = [http.get("/v2/health/ready") for _ in range(3)]
        live = http.get("/v2/health/live")
        keys = http.get("/keys")
    for reply in failures:
        assert reply.status_code == 500
        assert reply.headers["content-type"] == "application/json"
        assert reply.headers["connection"] == "close"
        assert reply.json() == {
            "error": "internal error in GET /v2/health/ready: "
            "RuntimeError: the readiness probe broke"
        }
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert keys.status_code == 200


def test_a_model_loading_beside_serving_leaves_the_replica_ready() -> None:
    """Readiness is the runtime's: a model published while serving loads beside it (contract
    2), so a replica behind a readiness probe never drops out on a publication."""
    gate = threading.Event()
    registry = FactoryRegistry(FactoryContext())
    gated = GatedFactory(FunctionFactory(lambda rows: rows.sum(axis=1), width=11), gate)
    registry.register(301, lambda context: gated)
    with ServingCore(ServingSettings(), registry) as core, running(core) as http:
        core.submit_model(ModelDescriptor(name="slow", data_type="wine", model_type=301, data=b"x"))
        assert gated.loading.wait(60)
        assert core.loads_pending == 1
        assert http.get("/v2/health/ready").json() == {"ready": True}
        gate.set()
        assert core.wait_for_models(60)


@pytest.mark.parametrize("rows", [1_000_000, 4_611_686_018_427_387_904, 0])
def test_a_v2_tensor_without_features_is_refused_before_any_row_is_built(
    core: ServingCore, client: httpx.Client, rows: int
) -> None:
    """A tensor [N, 0] is filled by no values at all: a ~100-byte body would otherwise make the
    server build and score N empty records (2**62: never answers)."""
    publish(core, onnx_descriptor("m", onnx_constant(11, 1.0)))
    before = core.counts.get("records", 0)
    body = {"inputs": [{"name": "input", "shape": [rows, 0], "datatype": "FP64", "data": []}]}

    reply = client.post("/v2/models/wine/infer", json=body)

    assert reply.status_code == 400
    assert f"shape [{rows}, 0] has no features" in reply.json()["error"]
    assert core.counts.get("records", 0) - before == 0, "no record was built, scored or counted"
