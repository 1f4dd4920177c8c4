"""Fixed (issue 15 review):
the consumer lag of a replica that has read everything is the whole topic.

docs/operations.md: ``streamserve_consumer_lag`` is the "records behind the assigned data
partitions' ends"; the change under review made it "unknown, not stale, while a partition has
no watermark or none is held" (None).

``KafkaTransport.after_batch`` sums ``high - position`` per assigned partition, and takes the
*low* watermark when ``position()`` is not known yet. librdkafka's ``position()`` is the offset
after the last message handed to the application: on a partition just assigned it stays
OFFSET_INVALID until a record of it is consumed, even though the consumer resumes from the
group's committed offset. A replica restarted (or handed partitions by a rebalance) when the
previous owner had scored everything reports the whole partition as lag, and keeps reporting it
for as long as no new record arrives on that partition: an alert on lag fires on a caught-up
replica.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from apache_kafka import ApacheKafka, running_apache_kafka
from review_support import Replica, kafka_settings, make_topics, mean_core, wine_records

from streamserve.codecs.protobuf import WineRecordCodec
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.settings import BatchSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RECORDS = 500


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_apache_kafka() as broker:
        yield broker


def test_a_restarted_replica_with_nothing_left_to_read_reports_no_lag(kafka: ApacheKafka) -> None:
    topics = make_topics(kafka, "lag")
    kafka.produce(topics.data, wine_records(RECORDS))
    settings = kafka_settings(kafka.bootstrap, topics)
    core = mean_core()
    try:  # the first run scores every record and commits: nothing is left behind
        summary = KafkaRuntime(
            core, WineRecordCodec(), settings, BatchSettings(max_delay_ms=20)
        ).run(count=RECORDS, timeout_s=120)
    finally:
        core.close()
    assert summary.records == RECORDS

    replica = Replica(settings)  # the same group: it resumes from the committed offsets
    samples: list[int | None] = []
    try:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if replica.runtime.ready.is_set():
                samples.append(replica.runtime.consumer_lag)
    finally:
        replica.stop()
    assert replica.failure is None, replica.failure
    known = [lag for lag in samples if lag is not None]
    assert known, "the lag was never known in 12 s"
    assert set(known) == {0}, (
        "docs/operations.md promise broken (streamserve_consumer_lag: records behind the "
        f"assigned partitions' ends): a replica with all {RECORDS} records already committed "
        f"reported lags {sorted(set(known))} (samples every 0.5 s: {samples})"
    )
