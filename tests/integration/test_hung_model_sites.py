"""Models that hang where a scoring deadline must still find them: in a reload after an
eviction, in a router, several in one batch, under inference requests.

Each model hangs on a gate the test opens at its end (a call stuck in native code, without
burning a core), the way tests/integration/test_hung_models.py builds them; the contracts
asserted are what the rest of the process does meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence

import httpx
import numpy as np
import orjson
import pytest

from streamserve.api.server import ApiServer
from streamserve.codecs.base import InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext, FloatMatrix, LoadRequest, Model
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.serving.outcome import BatchOutcome
from streamserve.settings import ApiSettings, ServingSettings
from streamserve.testing import FunctionFactory, FunctionModel, records_from

STEADY, HANGY = 401, 402


class HangsWhenArmed(FunctionFactory):
    """Loads and scores like a FunctionFactory until ``armed`` is set; then its loads (hang
    ``"load"``) or its scoring calls (hang ``"score"``) block until ``gate`` opens."""

    def __init__(self, gate: threading.Event, hang: str) -> None:
        super().__init__(self._score, width=2)
        self.gate = gate
        self.hang = hang
        self.armed = threading.Event()
        self.blocked = threading.Event()

    def _block(self) -> None:
        self.blocked.set()
        self.gate.wait(600)

    def _score(self, features: FloatMatrix) -> np.ndarray:
        if self.hang == "score" and self.armed.is_set():
            self._block()
        return features[:, 0] * 10

    def load(self, request: LoadRequest) -> Model:
        if self.hang == "load" and self.armed.is_set():
            self._block()
        return FunctionModel(self._score, width=2)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    opened = threading.Event()
    yield opened
    opened.set()  # every stuck call returns, so no thread outlives the test by long


def _core(settings: ServingSettings, hangy: FunctionFactory, router: object = None) -> ServingCore:
    registry = FactoryRegistry(FactoryContext())
    registry.register(STEADY, FunctionFactory(lambda x: x[:, 0], width=2))
    registry.register(HANGY, lambda context: hangy)
    return ServingCore(settings, registry, router=router)  # type: ignore[arg-type]


def _descriptor(name: str, model_type: int, key: str) -> ModelDescriptor:
    return ModelDescriptor(name=name, data_type=key, model_type=model_type, data=b"python")


def _batch(*keys: str) -> list[bytes]:
    return [
        orjson.dumps({"dataType": key, "features": [float(n), 1.0]}) for n, key in enumerate(keys)
    ]


def _score(core: ServingCore, payloads: list[bytes]) -> BatchOutcome:
    return core.score(JsonCodec().decode(records_from(payloads)))


def _by_row(outcome: BatchOutcome) -> dict[int, tuple[str, str]]:
    seen: dict[int, tuple[str, str]] = {}
    for row, group, _value in outcome.results():
        seen[row] = ("result", group.model.name)
    for error in outcome.errors:
        seen[error.row] = ("error", error.kind)
    return seen


def test_a_model_hanging_in_its_reload_after_eviction_is_given_up_on_within_the_deadline(
    gate: threading.Event,
) -> None:
    """serving.max_live_models evicts an idle model; its next batch makes it again from its
    bytes (ServedModel.instance -> reload), *holding the model's lock*. If that reload hangs,
    the deadline finds the stuck model call and quarantines the model, and the quarantine
    closes it: ServedModel.close() waits for the same lock. So the batch does not come back
    at the scoring deadline but only when the reload gives up at serving.load_timeout_s
    (default 300 s, against a 30 s deadline: Kafka's max.poll.interval.ms is 300 s), and
    forever if the load timeout is larger still.

    Reloads now run off the scoring thread (serving/reloads.py): the key's records wait for
    their reload at most the scoring deadline, then fail with the time limit; the model is not
    quarantined for a slow reload (it never scored), and serves once its reload returns."""
    deadline_s, load_timeout_s = 0.5, 30.0
    hangy = HangsWhenArmed(gate, hang="load")
    settings = ServingSettings(
        scoring_deadline_s=deadline_s, load_timeout_s=load_timeout_s, max_live_models=1
    )
    core = _core(settings, hangy)
    try:
        core.submit_model(_descriptor("reloads", HANGY, "a"))
        core.submit_model(_descriptor("steady", STEADY, "b"))
        assert core.wait_for_models(60)
        assert _by_row(_score(core, _batch("a"))) == {0: ("result", "reloads")}
        assert _by_row(_score(core, _batch("b"))) == {0: ("result", "steady")}
        slot_a = core.find_slot("a")
        assert slot_a is not None
        assert slot_a.current is not None
        assert not slot_a.current.live, "setup: the budget of 1 should have evicted a's model"

        hangy.armed.set()  # a's model cannot be made again: its reload hangs
        outcomes: list[BatchOutcome] = []
        scoring = threading.Thread(
            target=lambda: outcomes.append(_score(core, _batch("a", "b"))), daemon=True
        )
        started = time.monotonic()
        scoring.start()
        scoring.join(10 * deadline_s)
        returned = not scoring.is_alive()
        elapsed = time.monotonic() - started
        gate.set()
        scoring.join(load_timeout_s + 30)
        assert core.wait_for_reloads(load_timeout_s + 30)
        after = _by_row(_score(core, _batch("a", "b")))
    finally:
        gate.set()
        core.close()
    assert returned, (
        f"the scoring deadline did not hold: a batch whose model hangs in its reload after "
        f"an eviction had not returned {elapsed:.1f} s after it started, 10x the "
        f"serving.scoring_deadline_s of {deadline_s} s (quarantining the stuck model waits "
        "for the lock its hung reload holds, up to serving.load_timeout_s)"
    )
    assert _by_row(outcomes[0]) == {0: ("error", "scoring_timeout"), 1: ("result", "steady")}
    assert after == {0: ("result", "reloads"), 1: ("result", "steady")}, "it left service"


def test_inference_requests_to_a_hung_model_lose_at_most_one_thread(
    gate: threading.Event,
) -> None:
    """operations.md: "the stuck model serves no more records, so at most one thread is lost
    per stuck model". A V2 request never quarantines a model, so a hung model keeps answering
    requests, and each request hands it one more worker that it keeps: any client that can
    reach the API takes one thread of the process per request (two per deadline with the
    default inference_threads), until threads run out."""
    hangy = HangsWhenArmed(gate, hang="score")
    requests = 6
    with _core(ServingSettings(scoring_deadline_s=0.5), hangy) as core:
        core.submit_model(_descriptor("hangs", HANGY, "k"))
        assert core.wait_for_models(60)
        hangy.armed.set()
        server = ApiServer(core, ApiSettings(port=0), lambda: True)
        server.start()
        body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                statuses = [
                    http.post("/v2/models/k/infer", json=body).status_code for _ in range(requests)
                ]
            threads_lost = core.overrunning_calls
        finally:
            server.stop()
            gate.set()
    assert statuses == [504] * requests
    assert threads_lost <= 1, (
        f"threads bounded (operations.md, 'Hung and slow models'): {requests} inference requests "
        f"to one hung model left {threads_lost} model calls running; at most one thread is "
        "lost per stuck model"
    )


class HangsOnKey:
    """A key router that hangs (until ``gate`` opens) when it routes key ``hangs_on``."""

    def __init__(self, gate: threading.Event, hangs_on: str) -> None:
        self.gate = gate
        self.hangs_on = hangs_on

    def route(
        self, key: str, records: Sequence[InputRecord], rows: np.ndarray
    ) -> Mapping[str, np.ndarray]:
        if key == self.hangs_on:
            self.gate.wait(600)
        return {key: rows}


def test_a_router_hanging_on_one_key_fails_only_that_keys_records_and_loses_one_thread(
    gate: threading.Event,
) -> None:
    """A router plug-in that hangs routing one key: the deadline finds no model call, so it
    fails *every* record of the batch (the healthy key's too) and abandons a worker; the next
    batch does the same, so every batch fails whole and costs one more thread for good."""
    hangy = HangsWhenArmed(gate, hang="score")
    batches = 4
    core = _core(ServingSettings(scoring_deadline_s=0.5), hangy, HangsOnKey(gate, "bad"))
    with core:
        core.submit_model(_descriptor("steady", STEADY, "good"))
        core.submit_model(_descriptor("steady-bad", STEADY, "bad"))
        assert core.wait_for_models(60)
        outcomes = [_score(core, _batch("good", "bad", "good")) for _ in range(batches)]
        threads_lost = core.overrunning_calls
        gate.set()
    healthy = [_by_row(outcome)[0] for outcome in outcomes]
    assert healthy == [("result", "steady")] * batches, (
        f"contract 4 (a record fails alone): records of key 'good' failed because the router "
        f"hung on key 'bad': {healthy}"
    )
    assert threads_lost <= 1, (
        f"threads bounded: {batches} batches through a router hung on one key left "
        f"{threads_lost} calls running, one more per batch"
    )


def test_five_hung_keys_in_one_batch_do_not_fail_the_healthy_keys_records(
    gate: threading.Event,
) -> None:
    """operations.md: past the deadline the stuck model is taken out of service, the batch is
    scored again without it, "and the other keys' records are scored as ever". The core
    scores a batch at most MAX_SCORING_ATTEMPTS (4) times: with five keys whose models hang
    in one batch, the records of every healthy key in it fail with scoring_timeout."""
    hangy = HangsWhenArmed(gate, hang="score")
    hung_keys = [f"hung{n}" for n in range(5)]
    with _core(ServingSettings(scoring_deadline_s=0.3), hangy) as core:
        core.submit_model(_descriptor("steady", STEADY, "good"))
        for key in hung_keys:
            core.submit_model(_descriptor(f"hangs-{key}", HANGY, key))
        assert core.wait_for_models(60)
        hangy.armed.set()
        outcome = _score(core, _batch("good", *hung_keys))
        gate.set()
    rows = _by_row(outcome)
    assert rows[0] == ("result", "steady"), (
        f"contract 4 (a record fails alone): the healthy key's record got {rows[0]} because "
        "five other keys' models hung in its batch"
    )


TOKEN = "0123456789abcdef0123456789abcdef"


def test_unloading_a_key_whose_model_hangs_in_its_reload_leaves_the_api_answering(
    gate: threading.Event,
) -> None:
    """Same lock as above, reached from the HTTP API: a V2 request makes an evicted model
    again and that reload hangs (the request itself gets its 504 at the deadline), holding the
    model's lock. An admin unload of the key closes the model *on the event loop*
    (Endpoints.unload is a plain async route), and the close waits for that lock: the whole
    API, /v2/health/live included, stops answering until serving.load_timeout_s."""
    hangy = HangsWhenArmed(gate, hang="load")
    settings = ServingSettings(scoring_deadline_s=0.5, load_timeout_s=60.0, max_live_models=1)
    core = _core(settings, hangy)
    server = ApiServer(core, ApiSettings(port=0, admin_token=TOKEN), lambda: True)  # type: ignore[arg-type]
    server.start()
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}
    unloading: list[int] = []
    try:
        core.submit_model(_descriptor("reloads", HANGY, "a"))
        core.submit_model(_descriptor("steady", STEADY, "b"))
        assert core.wait_for_models(60)
        _score(core, _batch("a"))
        _score(core, _batch("b"))  # the budget of 1 evicts a's model
        hangy.armed.set()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.post("/v2/models/a/infer", json=body).status_code == 504
            assert hangy.blocked.is_set()

            def unload() -> None:
                with httpx.Client(base_url=server.url, timeout=120) as admin:
                    reply = admin.delete(
                        "/admin/keys/a", headers={"Authorization": f"Bearer {TOKEN}"}
                    )
                    unloading.append(reply.status_code)

            threading.Thread(target=unload, daemon=True).start()
            time.sleep(0.5)
            try:
                live = http.get("/v2/health/live", timeout=5).status_code
            except httpx.TimeoutException:
                live = None
    finally:
        gate.set()
        deadline = time.monotonic() + 90
        while not unloading and time.monotonic() < deadline:
            time.sleep(0.1)
        server.stop()
        core.close()
    assert live == 200, (
        "the HTTP API stopped answering (/v2/health/live timed out after 5 s) while an admin "
        "unload waited for a model whose reload hangs: the close ran on the event loop"
    )


FAILING = 403


class FailsWhenArmed(FunctionFactory):
    """Models that score until ``armed`` is set, then raise on every call (a backend broke)."""

    def __init__(self) -> None:
        super().__init__(self._score, width=2)
        self.armed = threading.Event()

    def _score(self, features: FloatMatrix) -> np.ndarray:
        if self.armed.is_set():
            raise RuntimeError("the backend broke")
        return features[:, 0]


def test_a_batch_scored_again_after_a_hang_does_not_count_other_models_failures_twice(
    gate: threading.Event,
) -> None:
    """model-message.md, Quarantine: a model is quarantined after quarantine_after_failures
    failed stream records in a row "over at least three batches". The per-model statistics of
    an abandoned scoring attempt are deferred (BatchOutcome.stats_updates) so they never count,
    but the failure streak is not: when another key's model hangs, the batch is scored again
    and a failing model's records and batch are counted once per attempt. Here two batches of
    two records each quarantine a model set to need 4 records over 3 batches."""
    hangy = HangsWhenArmed(gate, hang="score")
    failing = FailsWhenArmed()
    registry = FactoryRegistry(FactoryContext())
    registry.register(STEADY, FunctionFactory(lambda x: x[:, 0], width=2))
    registry.register(HANGY, lambda context: hangy)
    registry.register(FAILING, lambda context: failing)
    settings = ServingSettings(scoring_deadline_s=0.5, quarantine_after_failures=4)
    with ServingCore(settings, registry) as core:
        core.submit_model(_descriptor("breaks", FAILING, "f"))
        core.submit_model(_descriptor("hangs", HANGY, "h"))
        assert core.wait_for_models(60)
        _score(core, _batch("f", "h"))  # both serve: their records' fields are seen
        failing.armed.set()
        hangy.armed.set()
        first = _score(core, _batch("f", "f", "h"))  # h hangs: scored again without it
        second = _score(core, _batch("f", "f"))
        slot = core.find_slot("f")
        assert slot is not None
        current = slot.current.identity.name if slot.current is not None else None
        gate.set()
    assert [_by_row(first)[row] for row in (0, 1)] == [("error", "scoring_failed")] * 2
    assert [_by_row(second)[row] for row in (0, 1)] == [("error", "scoring_failed")] * 2
    assert current == "breaks", (
        "quarantine (model-message.md): model 'breaks' failed 4 records over 2 batches, yet "
        "it was quarantined as if over 3 or more: the attempt abandoned at the deadline "
        "counted its failures too"
    )
