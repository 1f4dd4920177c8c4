"""Known defect (issue 15 review):
refused credentials that do not stop the replica "within seconds".

docs/kafka.md (Security): "Credentials or TLS settings the brokers refuse stop the replica at
startup within seconds, with exit status 2, rather than after catch_up_timeout_s; the message
names the user, the servers and the settings to check ... A refusal while a replica serves (its
user deleted, seen at its next connection) stops it the same way."

(The exactly_once case at startup is fixed: tests/integration/test_kafka_refused_producer.py.)
While a replica serves a busy stream, a refusal of its producer (its password rotated, seen
at the next re-authentication) leaves every output unacknowledged: the loop waits in
``OffsetCommits.wait_for_acknowledgements`` for ``flush_timeout_s`` and stops with "outputs
were not acknowledged", never raising the ``ConfigurationError`` it holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from apache_kafka import ApacheKafka, SaslSsl, running_apache_kafka
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from review_support import (
    Replica,
    kafka_settings,
    make_topics,
    positions,
    wait_until,
    wine_records,
)

from streamserve.errors import ConfigurationError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

USERS = {"streamserve": "streamserve-secret", "reader": "reader-secret", "writer": "writer-secret"}
REFUSED_WITHIN_S = 15.0  # what test_kafka_security.py allows a refusal at startup
REAUTH_MS = 5000


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    # Clients re-authenticate every few seconds (KIP-368): a rotated password is seen then.
    properties = {"connections.max.reauth.ms": str(REAUTH_MS)}
    with running_apache_kafka(properties, sasl_ssl=SaslSsl("SCRAM-SHA-512", USERS)) as broker:
        yield broker


def test_a_producer_refused_while_serving_a_busy_stream_stops_the_replica_within_seconds(
    kafka: ApacheKafka,
) -> None:
    topics = make_topics(kafka, "producer-refused")
    flush_timeout_s = 90.0  # lowered from 300 s to keep the test short
    settings = kafka_settings(
        kafka.secure_bootstrap,
        topics,
        consumer=kafka.sasl_ssl_settings("reader"),  # the data consumer stays accepted
        producer=kafka.sasl_ssl_settings("writer"),
        flush_timeout_s=flush_timeout_s,
    )
    replica = Replica(settings)
    stream_on = threading.Event()
    stream_on.set()

    def stream() -> None:
        seed = 1
        while stream_on.is_set():
            kafka.produce(topics.data, wine_records(2000, seed))
            seed += 1
            time.sleep(0.2)

    streamer = threading.Thread(target=stream, daemon=True)
    try:
        kafka.produce(topics.data, wine_records(100))
        assert wait_until(lambda: len(positions(kafka, topics.results)) >= 100, 60)
        streamer.start()
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        rotated = UserScramCredentialUpsertion(
            "writer", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"rotated"
        )
        for future in admin.alter_user_scram_credentials([rotated]).values():
            future.result(30)
        rotated_at = time.monotonic()
        replica.join(flush_timeout_s + 60)
    finally:
        stream_on.clear()
        replica.stop()
        if streamer.is_alive():
            streamer.join(30)
    assert replica.failure is not None, "the replica went on with its producer refused"
    stopped_after_s = (replica.failed_at or time.monotonic()) - rotated_at
    assert isinstance(replica.failure, ConfigurationError), (
        "docs/kafka.md promise broken (a refusal while a replica serves stops it the same way: "
        "within seconds, naming the user): the replica's producer was refused, and it stopped "
        f"{stopped_after_s:.0f} s later (flush_timeout_s = {flush_timeout_s:.0f}) with "
        f"{type(replica.failure).__name__}: {replica.failure}"
    )
    assert stopped_after_s < 30, f"the refusal stopped the replica only after {stopped_after_s}"
