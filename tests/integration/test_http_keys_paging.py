"""``/keys`` a page at a time on a real server: a default page size, paging by key or offset,
filters by prefix and substring, orders by records or errors, and 400 for a bad parameter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import orjson
import pytest
from rich.console import Console

from streamserve.api.server import ApiServer
from streamserve.api.status import print_status
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings
from streamserve.testing import FunctionFactory, records_from

KEYS = 250
FUNCTION_TYPE = 517


def _key(index: int) -> str:
    return f"k{index:03d}"


def _double(features: FloatMatrix) -> np.ndarray:
    return features[:, 0] * 2


@pytest.fixture(scope="module")
def many_keys() -> Iterator[ServingCore]:
    """A core with 250 keys, each with its own model: k007 has 6 records, k010 5 (4 of them
    errors), k003 4, every other key 1."""
    registry = FactoryRegistry(FactoryContext())
    registry.register(FUNCTION_TYPE, FunctionFactory(_double, width=2))
    with ServingCore(ServingSettings(), registry) as core:
        for index in range(KEYS):
            core.submit_model(
                ModelDescriptor(
                    name=f"m{index}", data_type=_key(index), model_type=FUNCTION_TYPE, data=b"x"
                )
            )
        assert core.wait_for_models(120)
        good = [_record(_key(index), 2) for index in range(KEYS)]
        extra = [_record("k007", 2)] * 5 + [_record("k003", 2)] * 3 + [_record("k010", 1)] * 4
        core.score(JsonCodec().decode(records_from(good + extra)))
        yield core


def _record(key: str, width: int) -> bytes:
    return orjson.dumps({"dataType": key, "features": [1.0] * width})


@contextmanager
def _serving(core: ServingCore, **settings: object) -> Iterator[httpx.Client]:
    server = ApiServer(core, ApiSettings(port=0, **settings), lambda: True)  # type: ignore[arg-type]
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            yield http
    finally:
        server.stop()


def _keys(reply: httpx.Response) -> list[str]:
    assert reply.status_code == 200, reply.text
    return [slot["key"] for slot in reply.json()["keys"]]


def test_keys_without_parameters_answer_the_first_page_in_the_old_shape(
    many_keys: ServingCore,
) -> None:
    with _serving(many_keys) as http:
        document = http.get("/keys").json()
    assert [slot["key"] for slot in document["keys"]] == [_key(n) for n in range(100)]
    assert document["keys"][0]["current"]["name"] == "m0"
    assert document["counts"]["records"] == KEYS + 12
    assert document["loads_pending"] == 0
    assert document["footprint"]["slots"] == KEYS
    assert (document["total"], document["offset"], document["limit"]) == (KEYS, 0, 100)
    assert (document["next_after"], document["next_offset"]) == (_key(99), 100)


def test_following_next_after_reads_every_key_once_in_order(many_keys: ServingCore) -> None:
    seen: list[str] = []
    with _serving(many_keys) as http:
        params: dict[str, str | int] = {"limit": 64}
        while True:
            document = http.get("/keys", params=params).json()
            seen += [slot["key"] for slot in document["keys"]]
            if document["next_after"] is None:
                break
            params = {"limit": 64, "after": document["next_after"]}
        assert document["next_offset"] is None  # the last page
    assert seen == [_key(n) for n in range(KEYS)]


def test_offset_filters_and_orders(many_keys: ServingCore) -> None:
    with _serving(many_keys, dashboard=False) as http:
        tail = http.get("/keys", params={"offset": 240, "limit": 20}).json()
        assert [slot["key"] for slot in tail["keys"]] == [_key(n) for n in range(240, 250)]
        assert (tail["next_offset"], tail["next_after"]) == (None, None)

        hundreds = http.get("/keys", params={"prefix": "k1", "limit": 1000}).json()
        assert hundreds["total"] == 100
        assert _keys(http.get("/keys", params={"q": "K24"})) == [_key(n) for n in range(240, 250)]
        assert _keys(http.get("/keys", params={"q": "24"})) == [
            "k024",
            "k124",
            "k224",
            *(_key(n) for n in range(240, 250)),
        ]

        by_records = http.get("/keys", params={"sort": "records", "limit": 3}).json()
        assert [slot["key"] for slot in by_records["keys"]] == ["k007", "k010", "k003"]
        assert (by_records["next_offset"], by_records["next_after"]) == (3, None)
        assert _keys(http.get("/keys", params={"sort": "errors", "limit": 1})) == ["k010"]
        following = http.get("/keys", params={"sort": "records", "offset": 3, "limit": 2})
        assert _keys(following) == ["k000", "k001"]  # equal records: in key order


def test_the_default_and_largest_page_are_settings(many_keys: ServingCore) -> None:
    with _serving(many_keys, keys_page_size=10, keys_page_max=20) as http:
        assert len(_keys(http.get("/keys"))) == 10
        assert len(_keys(http.get("/keys", params={"limit": 20}))) == 20
        refused = http.get("/keys", params={"limit": 21})
    assert refused.status_code == 400
    assert refused.json() == {"error": "limit must be a whole number from 1 to 20, not '21'"}


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"limit": "0"}, "limit must be a whole number from 1 to 1000, not '0'"),
        ({"limit": "ten"}, "limit must be a whole number from 1 to 1000, not 'ten'"),
        ({"offset": "-1"}, "offset must be a whole number 0 or more, not '-1'"),
        ({"sort": "name"}, "sort must be one of key, records, errors, not 'name'"),
        (
            {"after": "k001", "sort": "errors"},
            "after pages in key order: give it without sort and offset",
        ),
        (
            {"after": "k001", "offset": "3"},
            "after pages in key order: give it without sort and offset",
        ),
        ({"q": "x" * 257}, "q may hold 256 characters at most"),
    ],
)
def test_a_bad_parameter_is_refused_with_its_reason(
    many_keys: ServingCore, params: dict[str, str], error: str
) -> None:
    with _serving(many_keys) as http:
        reply = http.get("/keys", params=params)
    assert reply.status_code == 400
    assert reply.json() == {"error": error}


def test_status_prints_every_key_a_page_at_a_time(many_keys: ServingCore) -> None:
    # Pages of 40: `streamserve status` must follow next_after to the last key.
    settings = ApiSettings(port=0, keys_page_size=40)
    server = ApiServer(many_keys, settings, is_ready=lambda: True)
    server.start()
    try:
        console = Console(record=True, width=300)
        assert print_status(console, server.url) == 0
    finally:
        server.stop()
    printed = console.export_text()
    assert all(f" {_key(index)} " in printed for index in range(KEYS)), printed[-2000:]
