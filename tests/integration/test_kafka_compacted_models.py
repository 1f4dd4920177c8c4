"""The models topic as a compacted topic, compacted for real by Apache Kafka's log cleaner.

Several versions per key and tombstones are published; the cleaner (tuned to run at once) then
keeps only the latest message of each key and, after ``delete.retention.ms``, drops the
tombstones: reading the topic from its beginning returns fewer messages than were written. A new
replica started afterwards serves exactly the latest model of every key, and the keys whose
latest message was a tombstone stay unloaded (their records get ``no_model``). A key whose latest
model is bad has no model left to fall back on once the cleaner removed the good one before it.

The topic's settings are those an operator uses (docs/kafka.md), with intervals shortened from
hours to milliseconds so the cleaner acts within the test.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest
from apache_kafka import ApacheKafka, running_apache_kafka, unique_name
from confluent_kafka import Message

from builders import onnx_constant, onnx_descriptor
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import encode_descriptor
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings

pytestmark = pytest.mark.slow

SEGMENT_MS = 100  # a segment rolls at the first message written this long after it started
# The models topic as docs/kafka.md has operators create it, with the intervals shortened.
MODELS_TOPIC_CONFIG = {
    "cleanup.policy": "compact",  # never "compact,delete": old models must not expire
    "segment.ms": str(SEGMENT_MS),  # only closed segments are compacted
    "segment.bytes": str(2**20),  # the least Kafka 4 accepts; segment.ms rolls them here
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "max.compaction.lag.ms": "1000",
    "delete.retention.ms": "100",  # how long a tombstone outlives its first compaction
}
# Written until the cleaner is done: each closes the segment before it and dirties the log. A
# key of its own each, so the cleaner has nothing left to remove once the history is compacted.
FILLER = "filler-"
DEADLINE_S = 120.0  # a bound on the wait for the cleaner, never asserted as a duration


@dataclass(frozen=True)
class Version:
    key: str
    number: int | None  # None: a tombstone
    junk: bool = False  # a model message whose model cannot load

    @property
    def name(self) -> str:
        return f"{self.key}-v{self.number}"

    @property
    def value(self) -> float:
        return float(int(self.key[1:]) * 10 + (self.number or 0))

    def message(self) -> tuple[bytes | None, bytes | None]:
        if self.number is None:
            return self.key.encode(), None
        data = b"not a model" if self.junk else onnx_constant(1, self.value)
        model = onnx_descriptor(self.name, data, key=self.key)
        return self.key.encode(), encode_descriptor(model)


# Written in rounds, a segment apart, keys interleaved.
HISTORY: list[list[Version]] = [
    [Version("k0", 1), Version("k1", 1), Version("k2", 1), Version("k3", 1), Version("k4", 1)],
    [Version("k5", 1), Version("k0", 2), Version("k1", 2), Version("k3", 2), Version("k4", 2)],
    [Version("k2", 2), Version("k0", 3), Version("k3", None), Version("k5", None)],
    [Version("k1", 3), Version("k4", None), Version("k3", 3)],  # k3 comes back after its tombstone
    [Version("k6", 1), Version("k6", 2, junk=True)],  # a bad latest model: see the test
]
LATEST = {version.key: version for round_ in HISTORY for version in round_}
LIVE = {key: version for key, version in LATEST.items() if version.number is not None}
SERVED = {key: version for key, version in LIVE.items() if not version.junk}
TOMBSTONED = sorted(key for key, version in LATEST.items() if version.number is None)


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_apache_kafka({"log.cleaner.backoff.ms": "100"}) as broker:
        yield broker


def _write_history(kafka: ApacheKafka, topic: str) -> int:
    for number, round_ in enumerate(HISTORY):
        if number:
            time.sleep(2 * SEGMENT_MS / 1000)  # the next round opens a new segment
        kafka.produce(topic, [version.message() for version in round_])
    return sum(len(round_) for round_ in HISTORY)


def _compacted(messages: list[Message]) -> bool:
    """Only the latest message of each key is left, and no tombstone."""
    kept = Counter((m.key(), m.value()) for m in messages if not _is_filler(m))
    return kept == Counter(version.message() for version in LIVE.values())


def _is_filler(message: Message) -> bool:
    return (message.key() or b"").startswith(FILLER.encode())


def _wait_for_the_cleaner(kafka: ApacheKafka, topic: str) -> tuple[list[str], list[Message]]:
    """Writes a filler model every two segment lengths until the topic read from its beginning
    holds only the latest message of each key: the fillers' keys, and the topic as read back."""
    deadline = time.monotonic() + DEADLINE_S
    fillers: list[str] = []
    while not _compacted(messages := kafka.read_all(topic)):
        left = [(m.key(), m.value() is None) for m in messages]
        assert time.monotonic() < deadline, f"the cleaner did not compact {topic}: {left}"
        time.sleep(2 * SEGMENT_MS / 1000)
        key = f"{FILLER}{len(fillers)}"
        filler = onnx_descriptor(key, onnx_constant(1, -1.0), key=key)
        kafka.produce(topic, [(key.encode(), encode_descriptor(filler))])
        fillers.append(key)
    return fillers, messages


def test_a_new_replica_serves_the_latest_model_of_each_key_from_the_compacted_topic(
    kafka: ApacheKafka, request: pytest.FixtureRequest
) -> None:
    models, data, results, errors = (
        unique_name(f"{request.node.name[:40]}-{role}")
        for role in ("models", "data", "results", "errors")
    )
    kafka.create_topics(models, partitions=1, config=MODELS_TOPIC_CONFIG)
    kafka.create_topics(data, results, errors, partitions=1)
    written = _write_history(kafka, models)
    fillers, left = _wait_for_the_cleaner(kafka, models)
    left_fillers = [m for m in left if _is_filler(m)]
    tombstones = sum(version.number is None for round_ in HISTORY for version in round_)
    print(
        f"\nmodels topic: {written} messages written ({tombstones} of them tombstones), then "
        f"{len(fillers)} fillers; read back from the beginning after compaction: {len(left)} "
        f"({len(left) - len(left_fillers)} of the {written}, {len(left_fillers)} fillers), at "
        f"offsets {[m.offset() for m in left]} of 0..{written + len(fillers) - 1}"
    )
    assert all(m.value() is not None for m in left), "a tombstone outlived delete.retention.ms"
    assert len(left) - len(left_fillers) == len(LIVE) < written
    assert len(left_fillers) == len(fillers)

    keys = [*sorted(LATEST), *fillers]
    kafka.produce(
        data, [(None, orjson.dumps({"dataType": key, "features": [1.0]})) for key in keys]
    )
    core = ServingCore(ServingSettings())
    try:
        settings = KafkaSettings(
            bootstrap_servers=kafka.bootstrap,
            group_id=unique_name("compacted"),
            data_topics=[data],
            models_topic=models,
            results_topic=results,
            errors_topic=errors,
        )
        runtime = KafkaRuntime(core, JsonCodec(), settings, BatchSettings(max_delay_ms=20))
        summary = runtime.run(count=len(keys), timeout_s=120)
        model_messages = core.counts["model_messages"]
    finally:
        core.close()

    assert summary.records == len(keys)
    assert model_messages == len(left), "the replica read other messages than the topic holds"
    served = {
        document["key"]: (document["model"], document["value"])
        for document in (orjson.loads(m.value()) for m in kafka.read_all(results))
    }
    failed = {
        (document["key"], document["kind"])
        for document in (orjson.loads(m.value()) for m in kafka.read_all(errors))
    }
    assert served == {
        **{key: (version.name, version.value) for key, version in SERVED.items()},
        **{key: (key, -1.0) for key in fillers},
    }, "a key was not served by its latest model"
    assert failed - {("k6", "no_model"), ("k6", "model_rejected")} == {
        (key, "no_model") for key in TOMBSTONED
    }, "a tombstoned key was served"
    # A replica running before compaction rejected k6's bad v2 and kept serving the good v1. The
    # cleaner removed v1 (only the latest message of a key is kept): a new replica rejects v2 and
    # has no model for k6. Compaction takes away the fallback a bad latest model relies on.
    assert {kind for key, kind in failed if key == "k6"} == {"model_rejected", "no_model"}
