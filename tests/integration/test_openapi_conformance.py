"""schemathesis against a live server: no 5xx for any generated request, every answer as the
document says (status, content type, body, headers), admin actions with the admin token.

The server is real uvicorn (:class:`ApiServer`) over a core holding real models: the FLIP-23 wine
decision tree (PMML) and ONNX models, a key with a previous model (rollback answers 200), one
without (409), a pinned key with a staged model, a rejected model and streamed statistics. A
successful unload is undone after its request, so that later requests still find the key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events

from builders import onnx_constant, onnx_descriptor, onnx_linear, onnx_named_linear
from streamserve.api.openapi import openapi_document
from streamserve.api.server import ApiServer
from streamserve.codecs.base import InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings

TOKEN = "s3cret-token-of-the-schemathesis-run-0123"
WINE_FEATURES = [
    "fixed acidity", "volatile acidity", "citric acid", "residual sugar", "chlorides",
    "free sulfur dioxide", "total sulfur dioxide", "density", "pH", "sulphates", "alcohol",
]  # fmt: skip
KEYS = ("wine", "positional", "pinned")
SEED = 18
MAX_EXAMPLES = 40  # per operation and phase: about 1,700 requests in all

pytestmark = pytest.mark.slow


class LiveApi:
    """A running API over a core whose keys are set up as the module docstring says."""

    def __init__(self, wine_dir: Path) -> None:
        self.core = ServingCore(ServingSettings(model_roots=[wine_dir]))
        self._wine_dir = wine_dir
        for key in KEYS:
            self.restore(key)
        self.server = ApiServer(self.core, ApiSettings(port=0, admin_token=TOKEN), lambda: True)
        self.server.start()

    def versions(self) -> list[str]:
        """The versions of every model the server holds."""
        held = {
            served.identity.version for slot in self.core.slots() for _, served in slot.models()
        }
        return sorted(held)

    def close(self) -> None:
        self.server.stop()
        self.core.close()

    def restore(self, key: str) -> None:
        """(Re)makes ``key``'s models, statistics and rejections."""
        builders = {"wine": self._wine, "positional": self._positional, "pinned": self._pinned}
        builders[key]()

    def _wine(self) -> None:
        tree = (self._wine_dir / "winequalityDecisionTreeClassification.pmml").read_bytes()
        self._publish(ModelDescriptor("tree", "wine", model_type=ModelType.PMML, data=tree))
        self._stream("wine", 20)
        named = onnx_named_linear(WINE_FEATURES, np.linspace(0.1, 1.1, 11), 0.5)
        self._publish(onnx_descriptor("linear", named, "wine", version="v2"))
        self._stream("wine", 10)
        self._publish(onnx_descriptor("broken", b"not onnx", "wine", version="v3"))

    def _positional(self) -> None:
        self._publish(onnx_descriptor("only", onnx_linear(np.ones(11), 1.0), "positional"))
        self._stream("positional", 5)

    def _pinned(self) -> None:
        self._publish(onnx_descriptor("first", onnx_constant(11, 1.0), "pinned", version="v1"))
        self._stream("pinned", 3)
        slot = self.core.find_slot("pinned")
        assert slot is not None
        slot.pin(True)
        self._publish(onnx_descriptor("second", onnx_constant(11, 2.0), "pinned", version="v2"))

    def _publish(self, descriptor: ModelDescriptor) -> None:
        self.core.submit_model(descriptor)
        assert self.core.wait_for_models(120)

    def _stream(self, key: str, count: int) -> None:
        record = {"dataType": key, **dict.fromkeys(WINE_FEATURES, 1.0)}
        self.core.score(JsonCodec().decode([InputRecord(orjson.dumps(record))] * count))


@pytest.fixture(scope="module")
def live_api(wine_dir: Path) -> Iterator[LiveApi]:
    api = LiveApi(wine_dir)
    try:
        yield api
    finally:
        api.close()


# Operations whose schema-valid requests may be refused with 400 for reasons a schema cannot
# say: rows that do not fit the model answering at the time (its inputs' names and width);
# "not ready", the protocol's 400; query parameters that exclude each other (after, offset).
REFUSED_WHEN_VALID = {
    "model_infer": "400",
    "model_infer_version": "400",
    "model_ready": "400",
    "model_ready_version": "400",
    "list_keys": "400",
}
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


def asset_paths() -> list[str]:
    static = resources.files("streamserve.api") / "static"
    return sorted(
        f"{folder.name}/{item.name}" if folder != static else item.name
        for folder in (static, *(f for f in static.iterdir() if f.is_dir()))
        for item in folder.iterdir()
        if item.is_file()
    )


def api_schema(live_api: LiveApi) -> Any:
    """The document as the server serves it, set up to exercise the live server."""
    operations = [
        {
            "include-operation-id": operation_id,
            "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, status]}},
        }
        for operation_id, status in REFUSED_WHEN_VALID.items()
    ]
    # The example request names the features of the wine key's model: a version it has.
    operations.append(
        {
            "include-operation-id": "model_infer_version",
            "parameters": {"path.name": "wine", "path.version": "v2"},
        }
    )
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "base-url": live_api.server.url,
            "workers": 1,
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "checks": {"enabled": True},
            "auth": {"openapi": {"adminToken": {"bearer": TOKEN}}},
            "operations": operations,
        }
    )
    schema = schemathesis.openapi.from_url(f"{live_api.server.url}/openapi.json", config=config)
    known = {
        "name": KEYS,
        "key": KEYS,
        "version": live_api.versions(),
        "path": asset_paths(),
    }

    @schema.hook
    def before_generate_path_parameters(context: Any, strategy: Any) -> Any:
        # Random names only ever meet 404: half of the requests name what the server holds.
        names = [p.name for p in context.operation.path_parameters]
        if not names:
            return strategy
        held = st.fixed_dictionaries({name: st.sampled_from(known[name]) for name in names})
        return st.one_of(strategy, held)

    @schema.hook
    def after_call(context: Any, case: Any, response: Any) -> None:
        if case.method == "DELETE" and response.status_code == 200:
            live_api.restore(case.path_parameters["key"])

    return schema


def run(schema: Any) -> tuple[list[str], Counter[tuple[str, int]]]:
    """Runs every phase; the failures found, and how often each operation answered each status."""
    failures: list[str] = []
    statuses: Counter[tuple[str, int]] = Counter()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, (events.ScenarioFinished, events.FuzzScenarioFinished)):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    statuses[(recorder.label, interaction.response.status_code)] += 1
            for checks in recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        failures.append(
                            f"{recorder.label}: {check.name}: {failure.title}\n{failure.message}\n"
                            f"{check.failure_info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            failures += [f"{failure.title}: {failure.message}" for failure in event.failures]
    return failures, statuses


def test_the_api_answers_as_its_document_says(live_api: LiveApi) -> None:
    failures, statuses = run(api_schema(live_api))
    assert not failures, "\n\n".join(dict.fromkeys(failures))
    documented = {
        f"{method.upper()} {path}"
        for path, item in openapi_document()["paths"].items()
        for method in item
    }
    succeeded = {label for label, status in statuses if 200 <= status < 300}
    # Every operation was exercised to a success, admin actions with the token included; the
    # route serving the document schemathesis leaves out (test_openapi_document.py reads it).
    assert documented - succeeded == {"GET /openapi.json"}
