"""Output topics the brokers' ACLs do not let a replica write: it stops before it reads a record,
naming the topic, its setting and what its user may do, and commits nothing. The same replica
with WRITE granted serves: the check asks nothing beyond what serving needs.

Apache Kafka with its StandardAuthorizer: a SASL_SSL listener (SCRAM, tests/apache_kafka.py) where
the replica's user ``streamserve`` has only the ACLs a test grants; the plaintext listener's
anonymous user (the tests' own admin, producer and readers, and the broker itself) is a super user.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from apache_kafka import ApacheKafka, SaslSsl, running_apache_kafka, unique_name
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from review_support import Topics, kafka_settings, make_topics, mean_core, wine_records

from streamserve.codecs.protobuf import WineRecordCodec
from streamserve.errors import InfrastructureError
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.settings import BatchSettings, KafkaSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

USER = "streamserve"
RECORDS = 50
AUTHORIZER = {
    "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    "super.users": "User:ANONYMOUS",  # the plaintext and controller listeners
    "allow.everyone.if.no.acl.found": "false",
}


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_apache_kafka(AUTHORIZER, sasl_ssl=SaslSsl("SCRAM-SHA-512")) as broker:
        yield broker


def _grant(kafka: ApacheKafka, kind: ResourceType, name: str, *operations: AclOperation) -> None:
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    bindings = [
        AclBinding(
            kind,
            name,
            ResourcePatternType.LITERAL,
            f"User:{USER}",
            "*",
            operation,
            AclPermissionType.ALLOW,
        )
        for operation in operations
    ]
    for future in admin.create_acls(bindings).values():
        future.result(30)


def _replica_settings(
    kafka: ApacheKafka, topics: Topics, results: tuple[AclOperation, ...]
) -> KafkaSettings:
    """A replica as ``streamserve`` over SASL_SSL, granted what serving needs but on the results
    topic only ``results``."""
    security = kafka.sasl_ssl_settings(USER)
    settings = kafka_settings(
        kafka.secure_bootstrap,
        topics,
        group_id=unique_name("acl"),
        catch_up_timeout_s=3,
        consumer=security,
        producer=security,
    )
    for topic in (topics.data, topics.models):
        _grant(kafka, ResourceType.TOPIC, topic, AclOperation.READ, AclOperation.DESCRIBE)
    _grant(kafka, ResourceType.TOPIC, topics.errors, AclOperation.WRITE, AclOperation.DESCRIBE)
    if results:
        _grant(kafka, ResourceType.TOPIC, topics.results, *results)
    for group in (settings.group_id, f"{settings.group_id}-models-reader"):
        _grant(kafka, ResourceType.GROUP, group, AclOperation.READ)
    return settings


def _committed(kafka: ApacheKafka, settings: KafkaSettings, topic: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": settings.group_id})
    try:
        partitions = [TopicPartition(topic, p) for p in range(2)]
        return [tp.offset for tp in consumer.committed(partitions, timeout=30)]
    finally:
        consumer.close()


@pytest.mark.parametrize(
    ("results", "refusal"),
    [
        ((AclOperation.DESCRIBE,), "may not be written by this replica (it may: DESCRIBE)"),
        ((), "may not be described by this replica's user"),
    ],
    ids=["describe-only", "no-acl"],
)
def test_an_output_topic_the_user_may_not_write_stops_the_replica_before_any_record(
    kafka: ApacheKafka, results: tuple[AclOperation, ...], refusal: str
) -> None:
    topics = make_topics(kafka, "acl-refused")
    kafka.produce(topics.data, wine_records(RECORDS))
    settings = _replica_settings(kafka, topics, results)
    core = mean_core()
    runtime = KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings(max_delay_ms=20))
    try:
        with pytest.raises(InfrastructureError) as failure:
            runtime.run(timeout_s=120)
    finally:
        core.close()

    assert f"the results topic {topics.results!r} (kafka.results_topic) {refusal}" in str(
        failure.value
    )
    assert core.counts.get("records", 0) == 0
    assert all(offset < 0 for offset in _committed(kafka, settings, topics.data))
    assert kafka.read_all(topics.errors) == []


def test_with_write_granted_the_same_replica_serves(kafka: ApacheKafka) -> None:
    topics = make_topics(kafka, "acl-granted")
    kafka.produce(topics.data, wine_records(RECORDS))
    settings = _replica_settings(kafka, topics, (AclOperation.WRITE, AclOperation.DESCRIBE))
    core = mean_core()
    try:
        runtime = KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings(max_delay_ms=20))
        summary = runtime.run(count=RECORDS, timeout_s=120)
    finally:
        core.close()

    assert summary.results == RECORDS
    assert len(kafka.read_all(topics.results)) == RECORDS
    assert sum(_committed(kafka, settings, topics.data)) == RECORDS
