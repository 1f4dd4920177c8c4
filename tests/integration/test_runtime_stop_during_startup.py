"""Stopping a runtime while its transport starts: a stop request (SIGTERM, Ctrl-C) ends the
run promptly, though a startup model is still loading (embedded) or the models topic is still
being caught up (Kafka); no record is scored."""

from __future__ import annotations

import threading
import time

import pytest
from kafka_broker import TEST_CONSUMER_SETTINGS, running_broker

from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, encode_descriptor
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.embedded import EmbeddedRuntime
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.runtime.streams import MemorySink, MemorySource, ModelQueue
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings
from streamserve.testing import FunctionFactory, GatedFactory

GATED_TYPE = 1417
STARTUP_LIMIT_S = 60.0


def test_stop_during_the_startup_model_wait_ends_the_run_promptly() -> None:
    gate = threading.Event()
    registry = FactoryRegistry(FactoryContext())
    gated = GatedFactory(FunctionFactory(lambda x: x[:, 0], width=1), gate)
    registry.register(GATED_TYPE, lambda context: gated)
    core = ServingCore(ServingSettings(), registry)
    models = ModelQueue()
    models.publish(
        encode_descriptor(
            ModelDescriptor(name="slow", data_type="k", model_type=GATED_TYPE, data=b"-")
        )  # type: ignore[arg-type]
    )
    runtime = EmbeddedRuntime(
        core,
        JsonCodec(),
        MemorySource(),
        MemorySink(),
        MemorySink(),
        BatchSettings(),
        models=models,
        catch_up_timeout_s=STARTUP_LIMIT_S,
    )
    thread = threading.Thread(target=runtime.run, daemon=True)
    try:
        thread.start()
        assert gated.loading.wait(30)  # the startup model is loading (slowly)
        stopped_at = time.monotonic()
        runtime.stop()  # SIGTERM
        thread.join(10)
        assert not thread.is_alive(), (
            "stop() during the startup model wait is ignored: run() goes on waiting for the "
            f"startup models (up to catch_up_timeout_s = {STARTUP_LIMIT_S:.0f} s here, 300 s by "
            "default) although Transport.start is given the stopping event"
        )
        assert time.monotonic() - stopped_at < 10
    finally:
        gate.set()
        thread.join(STARTUP_LIMIT_S)
        core.close()


@pytest.mark.slow
def test_stop_during_the_kafka_catch_up_ends_the_run_promptly() -> None:
    gate = threading.Event()
    registry = FactoryRegistry(FactoryContext())
    gated = GatedFactory(FunctionFactory(lambda x: x[:, 0], width=1), gate)
    registry.register(GATED_TYPE, lambda context: gated)
    core = ServingCore(ServingSettings(), registry)
    with running_broker() as broker:
        broker.create_topics("data", "models", "results", "errors", partitions=1)
        broker.produce(
            "models",
            [
                (
                    b"k",
                    encode_descriptor(
                        ModelDescriptor(
                            name="slow", data_type="k", model_type=GATED_TYPE, data=b"-"
                        )
                    ),
                )
            ],  # type: ignore[arg-type]
        )
        settings = KafkaSettings(
            bootstrap_servers=broker.bootstrap,
            consumer=TEST_CONSUMER_SETTINGS,
            catch_up_timeout_s=STARTUP_LIMIT_S,
        )
        runtime = KafkaRuntime(core, JsonCodec(), settings, BatchSettings(max_delay_ms=20))
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                runtime.run(timeout_s=2 * STARTUP_LIMIT_S)
                outcome.append(None)
            except BaseException as err:  # noqa: BLE001 - reported below
                outcome.append(err)

        thread = threading.Thread(target=run, daemon=True)
        try:
            thread.start()
            assert gated.loading.wait(30)
            runtime.stop()  # SIGTERM while the replica catches up
            thread.join(10)
            assert not thread.is_alive(), (
                "stop() during the Kafka models catch-up is ignored: the replica waits for the "
                f"slow load (up to catch_up_timeout_s = {STARTUP_LIMIT_S:.0f} s here)"
            )
        finally:
            gate.set()
            thread.join(2 * STARTUP_LIMIT_S)
            core.close()
