"""Fixed (issue 15 review):
a record with a long key is a poison pill that stops every replica.

ARCHITECTURE.md, contract 4: every input record produces exactly one output, a result or an
error record, and "one odd record never fails the other records of its batch"; BREAK-IT.md:
"Poison pills that replay". docs/kafka.md: "An error record carries at most 64 KiB of its input,
so it always fits the errors topic."

The input is cut at 64 KiB, but the record's *key* is not: ``runtime/encoding.py`` writes the
full key into the error document (``"key"``) and again as the Kafka message key. A JSON record
whose ``dataType`` is 700 KB long fits the data topic (Kafka's default limit, ~1 MB); its
``no_model`` error record carries the key twice (~1.4 MB) and the errors topic refuses it
(MSG_SIZE_TOO_LARGE). The replica stops without committing, and every restart reads the same
record again and stops again, while the good records of its batch are scored over and over.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import orjson
import pytest
from apache_kafka import ApacheKafka, running_apache_kafka
from review_support import kafka_settings, make_topics, mean_core, positions

from streamserve.codecs.json import JsonCodec
from streamserve.errors import InfrastructureError
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.settings import BatchSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LONG_KEY = "x" * 700_000  # the record is ~700 KB: under the data topic's default 1 MB


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_apache_kafka() as broker:
        yield broker


def test_a_record_with_a_long_key_gets_an_error_record_and_fails_alone(kafka: ApacheKafka) -> None:
    topics = make_topics(kafka, "long-key")
    features = [0.5] * 11
    records = [orjson.dumps({"dataType": "wine", "features": features}) for _ in range(3)]
    records.insert(1, orjson.dumps({"dataType": LONG_KEY, "features": features}))
    kafka.produce(topics.data, [(None, record) for record in records])  # the topic accepts it
    settings = kafka_settings(kafka.bootstrap, topics)

    stops: list[str] = []
    for _restart in range(2):  # a supervisor restarts a replica that stopped
        core = mean_core()
        try:
            KafkaRuntime(core, JsonCodec(), settings, BatchSettings(max_delay_ms=20)).run(
                count=len(records), timeout_s=60
            )
        except InfrastructureError as err:
            stops.append(str(err))
        finally:
            core.close()

    outputs = Counter(positions(kafka, topics.results, topics.errors))
    assert stops == [], (
        "contract 4 broken (one odd record never fails the others; an error record always fits "
        f"the errors topic): a record with a 700 KB key stopped the replica {len(stops)} times "
        f"out of 2 runs, at the same record each time: {stops[0][:300]}"
    )
    assert len(outputs) == len(records), f"inputs without an output: {outputs}"
    assert max(outputs.values()) == 1, f"inputs scored again after each stop: {outputs}"
