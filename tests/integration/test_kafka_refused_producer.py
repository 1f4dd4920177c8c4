"""A transactional (exactly_once) replica whose producer's credentials the broker refuses stops at
startup with a ConfigurationError naming the user, rather than waiting catch_up_timeout_s for
``init_transactions`` and blaming the broker (issue 15's review; fixed by the topic check, which
runs with the producer's own credentials before the transactional producer starts).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from apache_kafka import ApacheKafka, SaslSsl, running_apache_kafka
from review_support import kafka_settings, make_topics, mean_core

from streamserve.codecs.protobuf import WineRecordCodec
from streamserve.errors import ConfigurationError
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.settings import BatchSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

USERS = {"streamserve": "streamserve-secret"}


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_apache_kafka({}, sasl_ssl=SaslSsl("SCRAM-SHA-512", USERS)) as broker:
        yield broker


def test_exactly_once_with_a_refused_producer_stops_within_seconds_naming_the_user(
    kafka: ApacheKafka,
) -> None:
    topics = make_topics(kafka, "eos-refused")
    catch_up_timeout_s = 60.0  # lowered from 300 s to keep the test short
    settings = kafka_settings(
        kafka.secure_bootstrap,
        topics,
        consumer=kafka.sasl_ssl_settings("streamserve"),
        producer=kafka.sasl_ssl_settings("streamserve", password="not-the-password"),
        exactly_once=True,
        catch_up_timeout_s=catch_up_timeout_s,
    )
    core = mean_core()
    runtime = KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings(max_delay_ms=20))
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as failure:  # noqa: PT011 - the kind is asserted below
            runtime.run(timeout_s=120)
    finally:
        core.close()
    elapsed_s = time.monotonic() - started
    # Not a timing test: the bound only tells the refusal apart from the catch-up timeout.
    stopped_as_refused = isinstance(failure.value, ConfigurationError)
    stopped_as_refused = stopped_as_refused and elapsed_s < catch_up_timeout_s / 2
    assert stopped_as_refused, (
        "refused credentials must stop the replica at startup naming the user, not wait for "
        f"catch_up_timeout_s: with exactly_once it stopped after {elapsed_s:.0f} s "
        f"(catch_up_timeout_s = {catch_up_timeout_s:.0f}) with "
        f"{type(failure.value).__name__}: {failure.value}"
    )
    assert "authentication failed for user 'streamserve'" in str(failure.value)
