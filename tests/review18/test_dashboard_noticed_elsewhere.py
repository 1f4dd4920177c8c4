"""Defects noticed while attacking the dashboard's area, in other modules: a model folder whose
name is not UTF-8, and keys holding "/" on the V2 and admin routes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from builders import onnx_constant, onnx_descriptor
from streamserve.api.server import ApiServer
from streamserve.runtime.model_directory import ModelDirectory
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

TOKEN = "s3cret-token-of-the-review-0123456789"
SLASHED = "fraud/eu"


def test_a_model_file_whose_name_is_not_utf8_is_rejected_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "models"
    folder = os.fsencode(root) + b"/wine\xff"
    os.makedirs(folder)
    with open(folder + b"/m.onnx", "wb") as model:
        model.write(onnx_constant(11, 1.0))
    (root / "wine").mkdir()
    (root / "wine" / "good.onnx").write_bytes(onnx_constant(11, 1.0))
    messages = ModelDirectory(root).poll()  # raises today
    assert sorted(bool(message.problem) for message in messages) == [False, True]


@pytest.fixture
def http(core: ServingCore) -> Iterator[httpx.Client]:
    core.submit_model(onnx_descriptor("m", onnx_constant(11, 1.0), SLASHED))
    assert core.wait_for_models(60)
    server = ApiServer(core, ApiSettings(port=0, admin_token=TOKEN), lambda: True)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client
    finally:
        server.stop()


def test_a_key_with_a_slash_has_its_v2_routes(http: httpx.Client) -> None:
    reply = http.get(f"/v2/models/{quote(SLASHED, safe='')}")
    assert reply.status_code == 200, reply.text


def test_a_key_with_a_slash_can_be_unloaded(http: httpx.Client) -> None:
    reply = http.delete(
        f"/admin/keys/{quote(SLASHED, safe='')}", headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert reply.status_code == 200, reply.text


def test_a_key_with_a_slash_has_its_readiness_and_inference(http: httpx.Client) -> None:
    key = quote(SLASHED, safe="")
    assert http.get(f"/v2/models/{key}/ready").status_code == 200
    tensor = {"name": "input", "shape": [1, 11], "datatype": "FP64", "data": [0.5] * 11}
    reply = http.post(f"/v2/models/{key}/infer", json={"inputs": [tensor]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model_name"] == SLASHED


def test_route_words_after_a_key_still_name_routes(http: httpx.Client) -> None:
    # GET of an inference route is a wrong method, not the metadata of a key "wine/infer".
    assert http.get("/v2/models/wine/infer").status_code == 405
    admin = {"authorization": f"Bearer {TOKEN}"}
    assert (
        http.delete(f"/admin/keys/{quote(SLASHED, safe='')}/pin", headers=admin).status_code == 405
    )
