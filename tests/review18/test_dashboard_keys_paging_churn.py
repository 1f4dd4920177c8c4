"""``/keys`` paged with ``after`` while keys come and go between the pages (docs/operations.md:
"stable while keys come and go"): every key held from the first page to the last is read exactly
once, in key order, whatever sorts oddly (unicode, a slash, a space, an upper-case letter)."""

from __future__ import annotations

import httpx

from streamserve.api.server import ApiServer
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings
from streamserve.testing import FunctionFactory

FUNCTION_TYPE = 521
ODD = ["Zeta", "a b", "a/b", "a%2Fb", "é", "ß", "中文", "\U0001f377 wine", "~", "a\u0301"]


def _double(features: FloatMatrix) -> object:
    return features[:, 0] * 2


def _publish(core: ServingCore, keys: list[str]) -> None:
    for key in keys:
        core.submit_model(
            ModelDescriptor(name="m", data_type=key, model_type=FUNCTION_TYPE, data=b"x")
        )
    assert core.wait_for_models(120)


def test_paging_after_reads_every_steady_key_once_while_keys_come_and_go() -> None:
    registry = FactoryRegistry(FactoryContext())
    registry.register(FUNCTION_TYPE, FunctionFactory(_double, width=2))  # type: ignore[arg-type]
    with ServingCore(ServingSettings(), registry) as core:
        steady = [f"k{index:03d}" for index in range(0, 300, 2)] + ODD
        _publish(core, steady)
        server = ApiServer(core, ApiSettings(port=0), lambda: True)
        server.start()
        seen: list[str] = []
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                params: dict[str, str | int] = {"limit": 17}
                turn = 0
                while True:
                    page = http.get("/keys", params=params).json()
                    seen += [slot["key"] for slot in page["keys"]]
                    if page["next_after"] is None:
                        break
                    # between pages: a key before the cursor and one after it come, and one
                    # that came before goes
                    turn += 1
                    _publish(core, [f"k{2 * turn - 1:03d}", f"k{2 * turn + 151:03d}"])
                    if turn > 1:
                        core.unload(f"k{2 * turn - 3:03d}")
                    params = {"limit": 17, "after": page["next_after"]}
        finally:
            server.stop()
    assert seen == sorted(seen), "a page came out of key order"
    assert len(seen) == len(set(seen)), "a key was read twice"
    missing = set(steady) - set(seen)
    assert not missing, f"keys held throughout were skipped: {sorted(missing)}"
