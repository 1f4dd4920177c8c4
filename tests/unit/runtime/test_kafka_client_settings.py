"""Kafka client settings pass through to librdkafka as they are; what it refuses stops the
replica at once with librdkafka's reason (no broker is needed to refuse a configuration)."""

from __future__ import annotations

import pytest

from streamserve.codecs.protobuf import WineRecordCodec
from streamserve.errors import InfrastructureError
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings


@pytest.mark.parametrize(
    ("section", "settings", "reason"),
    [
        (
            "consumer",
            {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"},
            "sasl.username and sasl.password must be set",
        ),
        ("producer", {"security.protocol": "TLS"}, 'Invalid value "TLS"'),
        (
            "consumer",
            {"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"},
            "ssl.ca.location failed",
        ),
        ("producer", {"no.such.property": 1}, 'No such configuration property: "no.such.property"'),
    ],
)
def test_settings_the_client_refuses_stop_the_replica_with_its_reason(
    section: str, settings: dict[str, str | int | bool], reason: str
) -> None:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9", **{section: settings})
    core = ServingCore(ServingSettings())
    try:
        with pytest.raises(InfrastructureError, match=f"Kafka {section} refused") as refused:
            KafkaRuntime(core, WineRecordCodec(), kafka, BatchSettings())
    finally:
        core.close()
    assert reason in str(refused.value)
