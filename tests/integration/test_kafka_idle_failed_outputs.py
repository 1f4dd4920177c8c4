"""Fixed (issue 15 review):
an idle replica whose outputs failed stays up and ready, for ever.

docs/kafka.md: "Outputs not acknowledged within kafka.flush_timeout_s stop the replica without
committing", and "A replica that stops on an error (an output the client refuses ...) commits
only the batches already acknowledged". ARCHITECTURE.md: an infrastructure failure "stops
without committing"; contract 4: every input produces one output.

Acknowledgements, and delivery failures, are looked at only inside ``emit`` (and at revoke and
stop): ``OffsetCommits.wait_for_acknowledgements`` runs when a *new* batch is emitted and blocks
only past ``max_batches_in_flight``. A replica whose last batches' outputs failed (here: the
results topic does not exist, librdkafka fails them after ``topic.metadata.propagation.max.ms``)
and to which no further record comes neither stops nor reports anything: it stays ready, its lag
is 0, and its inputs have no output until some later record arrives. The same holds for a
broker that stops answering: with fewer than ``max_batches_in_flight`` batches pending, an
idle replica waited 54 s (the group session timeout, then ``flush_timeout_s``) with
``flush_timeout_s = 10``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from apache_kafka import ApacheKafka, running_apache_kafka
from review_support import Replica, kafka_settings, make_topics, wine_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FLUSH_TIMEOUT_S = 20.0
# librdkafka fails messages for a topic that does not exist after
# topic.metadata.propagation.max.ms (30 s); the replica should be down soon after either.
STOPPED_WITHIN_S = 75.0


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_apache_kafka() as broker:
        yield broker


def test_an_idle_replica_whose_outputs_failed_stops_without_committing(kafka: ApacheKafka) -> None:
    topics = make_topics(kafka, "idle-failed")
    topics = replace(topics, results=f"{topics.results}-never-created")  # forgotten by the operator
    kafka.produce(topics.data, wine_records(100))
    settings = kafka_settings(kafka.bootstrap, topics, flush_timeout_s=FLUSH_TIMEOUT_S)
    replica = Replica(settings, timeout_s=240)
    started = time.monotonic()
    try:
        while replica.alive and time.monotonic() - started < STOPPED_WITHIN_S:
            time.sleep(1)
        alive = replica.alive
        ready = replica.runtime.ready.is_set()
        lag = replica.runtime.consumer_lag
    finally:
        replica.stop()
    assert not alive, (
        "docs/kafka.md promise broken (outputs not acknowledged within flush_timeout_s, or "
        "refused, stop the replica without committing): 100 records were consumed, their "
        f"outputs failed, and {STOPPED_WITHIN_S:.0f} s later the replica still runs "
        f"(flush_timeout_s = {FLUSH_TIMEOUT_S:.0f}), ready={ready}, consumer_lag={lag}; it "
        f"reported: {replica.failure!r} only once stopped"
    )
