"""``/keys`` and ``/keys/{key}`` with keys and parameters that are valid but odd: a key holding a
slash (a data type is any string: "fraud/eu"), and whole-number parameters the document types as
integers but Python's ``int()`` reads more liberally."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from builders import onnx_constant, onnx_descriptor
from streamserve.api.server import ApiServer
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

SLASHED = ("fraud/eu", "a//b", "/leading", "trailing/")


@pytest.fixture
def http(core: ServingCore) -> Iterator[httpx.Client]:
    for key in ("wine", *SLASHED):
        core.submit_model(onnx_descriptor("m", onnx_constant(11, 1.0), key))
    assert core.wait_for_models(60)
    server = ApiServer(core, ApiSettings(port=0), lambda: True)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client
    finally:
        server.stop()


@pytest.mark.parametrize("key", SLASHED)
def test_a_key_with_a_slash_is_found_by_its_route(http: httpx.Client, key: str) -> None:
    listed = [slot["key"] for slot in http.get("/keys").json()["keys"]]
    assert key in listed
    reply = http.get(f"/keys/{quote(key, safe='')}")
    assert reply.status_code == 200, (
        f"/keys lists {key!r} but /keys/{{key}} answers {reply.status_code}: a key holding '/' "
        "(sent as %2F) cannot be read"
    )
    assert reply.json()["key"] == key


ARABIC_INDIC_TEN = "\u0661\u0660"


@pytest.mark.parametrize("text", [ARABIC_INDIC_TEN, "1_0", " 10", "+10", "10\n"])
def test_a_whole_number_parameter_is_digits_only(http: httpx.Client, text: str) -> None:
    # The document types limit as an integer; Python's int() also reads Arabic-Indic digits,
    # underscores, a sign and spaces, which no other server reading the same URL would.
    reply = http.get("/keys", params={"limit": text})
    assert reply.status_code == 400, f"limit={text!r} was taken as {reply.json().get('limit')}"
    assert reply.json() == {"error": f"limit must be a whole number from 1 to 1000, not {text!r}"}
