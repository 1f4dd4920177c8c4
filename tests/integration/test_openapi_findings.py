"""What the schemathesis run (test_openapi_conformance.py) found, one reproduction each, on a
real server (uvicorn on a loopback port).

A defect of a module another change owns is marked ``xfail(strict=True)`` with the fix it
needs: once fixed, the test passes, pytest says so, and the mark goes.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from builders import onnx_descriptor, onnx_linear
from streamserve.api.server import ApiServer
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

ROW = [7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51, 0.56, 9.4]
TENSOR = {"name": "input", "shape": [1, 11], "datatype": "FP64", "data": ROW}
BEYOND_64_BITS = str(2**94)


@pytest.fixture
def client(core: ServingCore) -> Iterator[httpx.Client]:
    core.submit_model(onnx_descriptor("linear", onnx_linear(np.ones(11), 0.5), "wine"))
    assert core.wait_for_models(60)
    server = ApiServer(core, ApiSettings(port=0), lambda: True)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http
    finally:
        server.stop()


def test_a_keys_offset_beyond_64_bits_is_refused_not_a_server_error(
    client: httpx.Client,
) -> None:
    # Found as: GET /keys?offset=22837429016847294673241243648 answered 500 ("Integer exceeds
    # 64-bit range"): the page echoes its offset, and orjson serializes 64-bit integers only.
    reply = client.get("/keys", params={"offset": BEYOND_64_BITS})
    assert reply.status_code == 400
    assert reply.json() == {"error": f"offset must be at most {2**63 - 1}, not '{BEYOND_64_BITS}'"}
    assert client.get("/keys", params={"offset": str(2**63 - 1)}).json()["keys"] == []


def test_a_dashboard_cursor_beyond_64_bits_is_refused_as_documented(client: httpx.Client) -> None:
    reply = client.get("/dashboard/summary", params={"since": BEYOND_64_BITS})
    assert reply.status_code == 400
    assert reply.json() == {"error": f"since must be at most {2**63 - 1}, not '{BEYOND_64_BITS}'"}


def test_null_stands_for_an_absent_optional_member_of_an_inference_request(
    client: httpx.Client,
) -> None:
    # Found as: negative_data_rejection, '"outputs": null' accepted. The document now says so:
    # null is absent for id, parameters and outputs, and for an input's or output's parameters
    # (KServe's own request models take null for them too).
    request = {
        "id": None,
        "parameters": None,
        "inputs": [{**TENSOR, "parameters": None}],
        "outputs": None,
    }
    reply = client.post("/v2/models/wine/infer", json=request)
    assert reply.status_code == 200
    assert "id" not in reply.json()
    named = {**request, "outputs": [{"name": "value", "parameters": None}]}
    assert client.post("/v2/models/wine/infer", json=named).json() == reply.json()


def test_an_inference_request_whose_id_is_not_a_string_is_refused(client: httpx.Client) -> None:
    # Answered 200 without an id: a client matching answers to requests by id loses track.
    reply = client.post("/v2/models/wine/infer", json={"id": 5, "inputs": [TENSOR]})
    assert reply.status_code == 400
    assert "id" in reply.json()["error"]
