"""Breaking the cold-start work (issue 17): the restart's catch-up in key order, the loader's
default threads, the child-process checks of XGBoost and LightGBM models.

Each test fails on the code it was written against and names the contract it breaks.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest
from kafka_broker import TEST_CONSUMER_SETTINGS, Broker, running_broker

from streamserve.codecs.protobuf import WineRecordCodec
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor
from streamserve.formats.base import FactoryContext, FloatMatrix, LoadRequest, Model
from streamserve.formats.cache import ArtifactCache
from streamserve.formats.isolation import CheckedOnce, ChildCheck
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.serving.events import EventLog, ModelEvent, ModelEventKind
from streamserve.serving.loader import LoadJob, ModelLoader
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings
from streamserve.testing import FunctionFactory, GatedFactory

WAIT_S = 60.0  # a bound on waiting for another thread or process, never a pacing sleep
NUMBERS_TYPE, WORDS_TYPE, GATED_TYPE, PLAIN_TYPE = 211, 212, 213, 214
# How long a key's first model waits for its second one to start loading: loaded one by one,
# the second never starts first, and the first loads after this; side by side, at once.
SECOND_LOAD_WAIT_S = 3.0
# The values the XGBoost child check scores (formats/xgboost.py, LOAD_CHECK), each in every column.
CHECKED_VALUES = (0.0, 1.0, -1.0, 1e9, -1e9, float("nan"))
OUT_OF_RANGE_FEATURE = 1_000_000_000


# --- 1. a running replica and a restarted one disagree on a key's model --------------------------


def _numbers(features: FloatMatrix) -> np.ndarray:
    return features[:, 0]


def _words(features: FloatMatrix) -> np.ndarray:
    return np.array(["high"] * len(features))


class WaitingFactory:
    """Loads once ``wait()`` returns: a load slower than the next one's, side by side."""

    format_name = "waiting function"

    def __init__(self, inner: FunctionFactory, wait: Callable[[], object]) -> None:
        self._inner = inner
        self._wait = wait

    def load(self, request: LoadRequest) -> Model:
        self._wait()
        return self._inner.load(request)


def _numbers_then_words_registry(words_staged: threading.Event) -> FactoryRegistry:
    """A number model whose load ends once the word model staged (or after
    ``SECOND_LOAD_WAIT_S``: loaded one by one, that never happens first), and a word model."""
    numbers = WaitingFactory(
        FunctionFactory(_numbers, width=11), lambda: words_staged.wait(SECOND_LOAD_WAIT_S)
    )
    words = FunctionFactory(_words, width=11)
    registry = FactoryRegistry(FactoryContext())
    registry.register(NUMBERS_TYPE, lambda context: numbers)
    registry.register(WORDS_TYPE, lambda context: words)
    return registry


@pytest.fixture
def broker() -> Iterator[Broker]:
    with running_broker() as running:
        running.create_topics("wine-data", "results", "errors")
        running.create_topics("models", partitions=1)
        yield running


def _runtime(
    broker: Broker, core: ServingCore, on_event: Callable[[ModelEvent], None] | None = None
) -> KafkaRuntime:
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        data_topics=["wine-data"],
        consumer=TEST_CONSUMER_SETTINGS,
        catch_up_timeout_s=120,
    )
    return KafkaRuntime(
        core, WineRecordCodec(), settings, BatchSettings(max_delay_ms=20), on_event=on_event
    )


def _held(core: ServingCore, key: str) -> tuple[str | None, str | None, int]:
    """What a replica holds for ``key``: its newest model's name, the key's value type, and how
    many models it rejected."""
    slot = core.find_slot(key)
    assert slot is not None, f"no model for {key!r}: {core.rejections_of(key)}"
    newest = slot.staged or slot.current
    rejected, _ = core.rejections_of(key)
    return (
        None if newest is None else newest.identity.name,
        None if slot.value_type is None else str(slot.value_type),
        rejected,
    )


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: one loader thread")
def test_a_running_replica_holds_what_its_restart_holds_with_the_default_loader_threads(
    broker: Broker,
) -> None:
    """Contract 4 (a key's result value keeps one JSON type; a restart rebuilds the models it
    served). A key gets a number model, then a word model (no declared value type). The
    restart's catch-up loads them in topic order: numbers staged, words rejected. A running
    replica follows the same messages with ``serving.loader_threads`` at its new default (the
    CPUs, up to 4), side by side and not in key order: words stage first, numbers are
    superseded. The key publishes strings until the replica restarts, numbers after it, and
    two replicas of one deployment serve it with different models."""
    events: list[ModelEvent] = []
    settled, words_staged = threading.Event(), threading.Event()

    def on_event(event: ModelEvent) -> None:
        events.append(event)
        if event.name == "words" and event.kind is ModelEventKind.STAGED:
            words_staged.set()
        if sum(1 for seen in events if seen.key == "k") >= 2:
            settled.set()

    running = ServingCore(ServingSettings(), _numbers_then_words_registry(words_staged))
    runtime = _runtime(broker, running, on_event)
    served = threading.Thread(target=runtime.run, kwargs={"timeout_s": 2 * WAIT_S})
    served.start()
    try:
        assert runtime.ready.wait(WAIT_S), "the running replica never caught up"
        broker.produce(
            "models",
            [
                (b"k", encode_descriptor(_descriptor("numbers", "k", NUMBERS_TYPE))),
                (b"k", encode_descriptor(_descriptor("words", "k", WORDS_TYPE))),
            ],
        )
        assert settled.wait(WAIT_S), f"the running replica did not load both: {events}"
        assert running.wait_for_models(WAIT_S)
        live = _held(running, "k")
    finally:
        runtime.stop()
        served.join(WAIT_S)
        running.close()

    never = threading.Event()  # the restart's catch-up reports no event before it ends
    with ServingCore(ServingSettings(), _numbers_then_words_registry(never)) as restarted:
        restart = _runtime(broker, restarted)
        try:
            assert restart.catch_up_models() == 2
            rebuilt = _held(restarted, "k")
        finally:
            restart.run(count=0)  # closes its clients

    assert live == rebuilt, (
        "Contract 4 broken: the running replica (default loader_threads="
        f"{ServingSettings().loader_threads}) holds (model, value type, rejected) {live} for "
        f"key 'k', the same replica restarted holds {rebuilt}: the key's results change JSON "
        "type across a restart, and replicas disagree"
    )


def _descriptor(name: str, key: str, model_type: int, data: bytes = b"python") -> ModelDescriptor:
    return ModelDescriptor(name=name, data_type=key, model_type=model_type, data=data)


# --- 2. closing the loader while a key's next in-order job is being handed on ---------------------


@contextmanager
def _paused_before_handing_on(paused: threading.Event, resume: threading.Event) -> Iterator[None]:
    """Loader threads started inside stop in ``ModelLoader._finish`` just before they put a
    key's next in-order job in the queue (after taking it from the key's waiting ones), until
    ``resume`` is set: the moment ``close()`` may come. Tracing only watches; nothing is
    replaced."""
    source, first = inspect.getsourcelines(ModelLoader._finish)
    line = first + next(n for n, text in enumerate(source) if "self._jobs.put(following)" in text)
    code = ModelLoader._finish.__code__

    def local(frame: FrameType, event: str, _arg: object) -> Any:
        if event == "line" and frame.f_lineno == line and frame.f_locals.get("following"):
            paused.set()
            resume.wait(WAIT_S)
        return local

    def trace(frame: FrameType, event: str, _arg: object) -> Any:
        return local if event == "call" and frame.f_code is code else None

    threading.settrace(trace)
    try:
        yield
    finally:
        threading.settrace(None)  # type: ignore[arg-type]


def test_closing_while_a_keys_next_model_is_handed_on_leaves_nothing_pending() -> None:
    """Close contract of the loader (``close`` drops the loads not started; ``wait_idle`` then
    returns). A key's first in-order model finishes; its thread takes the key's next one off
    the waiting list and, before it puts it in the queue, the loader closes: ``close`` finds no
    waiting job to drop and puts its stop markers in the queue, then the job goes in behind
    them. Every thread stops at a marker, the job is never finished: ``pending`` stays 1 for
    good, and ``wait_idle()`` without a timeout never returns."""
    gate = threading.Event()
    gated = GatedFactory(FunctionFactory(_numbers, width=2), gate)
    registry = FactoryRegistry(FactoryContext())
    registry.register(GATED_TYPE, lambda context: gated)
    registry.register(PLAIN_TYPE, lambda context: FunctionFactory(_numbers, width=2))
    paused, resume = threading.Event(), threading.Event()
    with ServingCore(ServingSettings(loader_threads=1), registry) as core:
        with _paused_before_handing_on(paused, resume):
            loader = ModelLoader(registry, EventLog(), core, threads=1)
        try:
            loader.submit(
                LoadJob(_descriptor("k-first", "k", GATED_TYPE), 0, "", in_key_order=True)
            )
            loader.submit(
                LoadJob(_descriptor("k-second", "k", PLAIN_TYPE), 1, "", in_key_order=True)
            )
            assert gated.loading.wait(WAIT_S)
            gate.set()
            assert paused.wait(WAIT_S), "the loader never handed on the key's next model"
            loader.close(timeout_s=0.0)
        finally:
            gate.set()
            resume.set()
        idle = loader.wait_idle(5.0)
        assert loader.pending == 0, (
            f"loader closed with {loader.pending} model(s) pending for good: the key's next "
            "in-order model went into the queue behind close()'s stop markers and no thread "
            "will ever take it (wait_idle() without a timeout hangs)"
        )
        assert idle


# --- 3 and 4. models that pass their child check and crash the replica --------------------------

CRASH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from streamserve.codecs.json import JsonCodec
    from streamserve.descriptor import ModelDescriptor
    from streamserve.serving.core import ServingCore
    from streamserve.settings import ServingSettings
    from streamserve.testing import records_from, serve_records

    model_type, model_file, record = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].encode()
    descriptor = ModelDescriptor(
        name="crafted", data_type="k", model_type=model_type, data=model_file.read_bytes()
    )
    with ServingCore(ServingSettings(loader_threads=1)) as core:
        run = serve_records(core, JsonCodec(), records_from([record]), models=[descriptor])
        print(json.dumps({"rejected": core.rejections_of("k")[0], "results": run.results,
                          "errors": [error.get("error") for error in run.errors]}))
    """
)


def _replica_serving(model_type: int, model: bytes, record: dict[str, Any], tmp_path: Path) -> Any:
    """Serves ``record`` with ``model`` (a replica in a child process, as in production: the
    model's check in a grandchild); its outcome, or the test fails saying how it died."""
    model_file = tmp_path / "model"
    model_file.write_bytes(model)
    done = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(model_type), str(model_file), json.dumps(record)],
        capture_output=True,
        timeout=WAIT_S * 2,
        check=False,
    )
    assert done.returncode == 0, (
        "Contract 3 broken (a bad model never stops serving; nothing from a topic may escape "
        f"the run loop): the replica died with status {done.returncode} serving a model that "
        "passed its child-process check; a restart reads the model again and dies again. "
        f"stderr: {done.stderr.decode(errors='replace')[-600:]}"
    )
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def _lightgbm_with_out_of_range_root_feature() -> bytes:
    """A real LightGBM model whose root splits on feature 1e9 (the model has 4): LightGBM
    parses it (the child check only parses), then reads far out of the row when it scores."""
    import lightgbm

    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(2000, 4))
    y = np.sin(3 * x[:, 0]) + x[:, 2] * x[:, 3]
    booster = lightgbm.train(
        {"num_leaves": 15, "verbose": -1, "num_threads": 1},
        lightgbm.Dataset(x, label=y),
        num_boost_round=1,
    )
    lines = booster.model_to_string().split("\n")
    for number, line in enumerate(lines):
        if line.startswith("split_feature="):
            features = line.removeprefix("split_feature=").split()
            lines[number] = "split_feature=" + " ".join([str(OUT_OF_RANGE_FEATURE), *features[1:]])
    # tree_sizes lets LightGBM parse trees in parallel; without it, it parses them in turn
    return "\n".join(line for line in lines if not line.startswith("tree_sizes=")).encode()


@pytest.mark.slow
def test_a_lightgbm_model_that_parses_but_crashes_scoring_is_rejected(tmp_path: Path) -> None:
    """LightGBM's child check (formats/lightgbm.py PARSE_CHECK) only parses the model. A model
    with a split on a feature index far out of range parses, so the replica loads it and its
    validation probe (zeros) kills the replica with SIGSEGV: at every restart, since the
    models topic is read from its start."""
    outcome = _replica_serving(
        ModelType.LIGHTGBM,
        _lightgbm_with_out_of_range_root_feature(),
        {"dataType": "k", "features": [0.0, 0.0, 0.0, 0.0]},
        tmp_path,
    )
    assert outcome["rejected"] == 1, outcome
    assert outcome["results"] == [], outcome


def _xgboost_with_a_split_out_of_range() -> tuple[bytes, list[float]]:
    """A real XGBoost model with one split, on a node that none of the check's rows reaches,
    on feature 1e9 (the model has 4); and a row that reaches it."""
    import xgboost

    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(5000, 4))
    y = np.sin(3 * x[:, 0]) + np.cos(2 * x[:, 1]) + x[:, 2] * x[:, 3]
    booster = xgboost.train(
        {"max_depth": 6, "eta": 1.0, "nthread": 1, "base_score": 0.0},
        xgboost.DMatrix(x, label=y),
        num_boost_round=1,
    )
    document = json.loads(booster.save_raw("json"))
    tree = document["learner"]["gradient_booster"]["model"]["trees"][0]
    node = _node_no_checked_row_reaches(tree)
    row = _row_reaching(tree, node, width=4)
    tree["split_indices"][node] = OUT_OF_RANGE_FEATURE
    return json.dumps(document).encode(), row


def _node_no_checked_row_reaches(tree: dict[str, list[Any]]) -> int:
    left, right = tree["left_children"], tree["right_children"]
    conditions, default_left = tree["split_conditions"], tree["default_left"]
    reached = set()
    for value in CHECKED_VALUES:
        node = 0
        while left[node] != -1:
            reached.add(node)
            goes_left = default_left[node] if math.isnan(value) else value < conditions[node]
            node = left[node] if goes_left else right[node]
    return next(n for n in range(len(left)) if left[n] != -1 and n not in reached)


def _row_reaching(tree: dict[str, list[Any]], node: int, width: int) -> list[float]:
    parent: dict[int, tuple[int, bool]] = {}
    for n, (low, high) in enumerate(
        zip(tree["left_children"], tree["right_children"], strict=True)
    ):
        if low != -1:
            parent[low], parent[high] = (n, True), (n, False)
    lowest, highest = [-5.0] * width, [5.0] * width
    while node in parent:
        node, went_left = parent[node]
        feature, condition = tree["split_indices"][node], tree["split_conditions"][node]
        if went_left:
            highest[feature] = min(highest[feature], condition)
        else:
            lowest[feature] = max(lowest[feature], condition)
    return [(low + high) / 2 for low, high in zip(lowest, highest, strict=True)]


@pytest.mark.slow
def test_an_xgboost_model_that_passes_its_check_but_crashes_on_a_record_is_rejected(
    tmp_path: Path,
) -> None:
    """XGBoost's child check (formats/xgboost.py LOAD_CHECK) scores rows of one value in every
    column. A split on a feature index far out of range, on a node those rows never reach,
    passes it; the model becomes current (a restart's probe is zeros), and the first record
    that reaches the node kills the replica with SIGSEGV, again at every restart (its offset
    was never committed)."""
    model, row = _xgboost_with_a_split_out_of_range()
    outcome = _replica_serving(
        ModelType.XGBOOST, model, {"dataType": "k", "features": row}, tmp_path
    )
    assert outcome["rejected"] == 1, outcome


# --- 5. one model on many keys at once: its check runs on every loader thread ---------------------


def _recording_check(started: Path) -> ChildCheck:
    """A child check that notes its start in ``started`` and passes once another check of the
    same bytes has started too, or after a while (a single check runs alone)."""
    script = textwrap.dedent(
        f"""
        import pathlib, sys, time, uuid
        started = pathlib.Path({str(started)!r})
        (started / uuid.uuid4().hex).touch()
        sys.stdin.buffer.read()
        for _ in range(300):
            if len(list(started.iterdir())) > 1:
                break
            time.sleep(0.01)
        """
    )
    return ChildCheck(
        name="recorded", script=script, library="Recorded", verb="load", marker="", module="json"
    )


def test_one_model_on_many_keys_at_once_is_checked_once(tmp_path: Path) -> None:
    """docs/kafka.md: XGBoost and LightGBM models "are checked in a child process first ...,
    each distinct model once". A restart whose topic carries one model on many keys loads
    them on ``loader_threads`` threads at once (the new default: the CPUs, up to 4): each
    thread finds the bytes unchecked and starts its own child process for them, with or
    without a shared artifact cache."""
    started = tmp_path / "started"
    started.mkdir()
    checked = CheckedOnce(_recording_check(started), ArtifactCache(tmp_path / "cache"))
    model = b"one model for many keys"
    failures: list[BaseException] = []
    ready = threading.Barrier(4, timeout=WAIT_S)

    def load_for_one_key() -> None:
        ready.wait()
        try:
            checked.ensure(model, "a key's model")
        except BaseException as err:  # noqa: BLE001 - reported below
            failures.append(err)

    threads = [threading.Thread(target=load_for_one_key) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert failures == []
    checks = len(list(started.iterdir()))
    assert checks == 1, (
        f"one model's bytes were checked {checks} times in child processes at once, by the "
        "loader threads of the keys it serves: a check is not shared while it runs"
    )
