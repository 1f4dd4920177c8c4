"""A replica through a SASL_SSL listener (SCRAM-SHA-512 over TLS, tests/apache_kafka.py), with
the settings docs/kafka.md documents: it serves records end to end, and settings the brokers
refuse (a wrong password, a CA that did not sign the broker's certificate) stop it at startup,
saying what was refused and where, instead of waiting ``catch_up_timeout_s`` for the models.
Credentials deleted while it serves stop it at its next connection; a broker restart does not."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from apache_kafka import ApacheKafka, SaslSsl, running_apache_kafka, unique_name, write_tls_files
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ScramMechanism,
    UserScramCredentialDeletion,
)

from streamserve.codecs.protobuf import WineRecordCodec, encode_wine_record
from streamserve.descriptor import ModelDescriptor, encode_descriptor
from streamserve.errors import ConfigurationError
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings
from streamserve.testing import FunctionFactory

pytestmark = pytest.mark.slow

MEAN_TYPE = 102  # a plug-in model type: the mean of the features, loaded at once
USER = "streamserve"
RETIRED = "retired"  # a user whose credentials a test deletes while its replica runs
REFUSED_WITHIN_S = 15.0  # librdkafka reports a refusal in ~0.5-1.5 s; the catch-up waits 300 s


@dataclass(frozen=True)
class Topics:
    data: str
    models: str
    results: str
    errors: str


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    users = {USER: "streamserve-secret", RETIRED: "retired-secret"}
    with running_apache_kafka(sasl_ssl=SaslSsl("SCRAM-SHA-512", users)) as broker:
        yield broker


@pytest.fixture
def topics(kafka: ApacheKafka, request: pytest.FixtureRequest) -> Topics:
    return _topics(kafka, unique_name(request.node.name))


def _topics(kafka: ApacheKafka, prefix: str) -> Topics:
    """Fresh topics, the mean model published for key ``wine`` (over the plaintext listener)."""
    topics = Topics(f"{prefix}-data", f"{prefix}-models", f"{prefix}-results", f"{prefix}-errors")
    kafka.create_topics(topics.data, topics.results, topics.errors, partitions=2)
    kafka.create_topics(topics.models, partitions=1, config={"cleanup.policy": "compact"})
    descriptor = ModelDescriptor(name="mean", data_type="wine", model_type=MEAN_TYPE, data=b"-")
    kafka.produce(topics.models, [(b"wine", encode_descriptor(descriptor))])
    return topics


@pytest.fixture
def core() -> Iterator[ServingCore]:
    registry = FactoryRegistry(FactoryContext())
    registry.register(MEAN_TYPE, FunctionFactory(_mean, width=11))
    serving = ServingCore(ServingSettings(), registry)
    yield serving
    serving.close()


def _mean(features: FloatMatrix) -> np.ndarray:
    return features.mean(axis=1)


def _runtime(
    kafka: ApacheKafka,
    topics: Topics,
    core: ServingCore,
    consumer: dict[str, str | int],
    producer: dict[str, str | int] | None = None,
) -> KafkaRuntime:
    """A replica on the SASL_SSL listener, its security settings in kafka.consumer and
    kafka.producer as docs/kafka.md says."""
    settings = KafkaSettings.model_validate(
        {
            "bootstrap_servers": kafka.secure_bootstrap,
            "group_id": unique_name("secured"),
            "data_topics": [topics.data],
            "models_topic": topics.models,
            "results_topic": topics.results,
            "errors_topic": topics.errors,
            "consumer": consumer,
            "producer": consumer if producer is None else producer,
        }
    )
    return KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings(max_delay_ms=20))


def test_a_replica_serves_records_through_the_sasl_ssl_listener(
    kafka: ApacheKafka, topics: Topics, core: ServingCore, wine_matrix: np.ndarray
) -> None:
    rows = wine_matrix[:200, :11]
    records: list[tuple[bytes | None, bytes | None]] = [
        (None, encode_wine_record(row)) for row in rows
    ]
    kafka.produce(topics.data, [*records, (None, b"\xff not a wine record")])
    runtime = _runtime(kafka, topics, core, kafka.sasl_ssl_settings(USER))

    summary = runtime.run(count=len(records) + 1, timeout_s=120)

    assert (summary.records, summary.results, summary.errors) == (201, 200, 1)
    results = [orjson.loads(m.value()) for m in kafka.read_all(topics.results)]
    errors = [orjson.loads(m.value()) for m in kafka.read_all(topics.errors)]
    assert sorted(r["value"] for r in results) == pytest.approx(sorted(rows.mean(axis=1)))
    assert len(errors) == 1
    positions = [r["position"] for r in results] + [e["position"] for e in errors]
    assert len(set(positions)) == 201


def test_sasl_plain_serves_too(core: ServingCore, wine_matrix: np.ndarray) -> None:
    """PLAIN over TLS (docs/kafka.md's other example), on a broker of its own."""
    with running_apache_kafka(sasl_ssl=SaslSsl(mechanism="PLAIN")) as plain:
        topics = _topics(plain, unique_name("plain"))
        plain.produce(topics.data, [(None, encode_wine_record(r)) for r in wine_matrix[:20, :11]])
        runtime = _runtime(plain, topics, core, plain.sasl_ssl_settings(USER))

        summary = runtime.run(count=20, timeout_s=120)

        assert (summary.results, summary.errors) == (20, 0)
        assert len(plain.read_all(topics.results)) == 20


@pytest.mark.parametrize("refused", ["consumer", "producer"])
def test_a_wrong_password_stops_the_replica_at_startup_naming_the_user_and_servers(
    kafka: ApacheKafka, topics: Topics, core: ServingCore, refused: str
) -> None:
    right = kafka.sasl_ssl_settings(USER)
    wrong = kafka.sasl_ssl_settings(USER, password="not-the-password")
    consumer, producer = (wrong, right) if refused == "consumer" else (right, wrong)
    runtime = _runtime(kafka, topics, core, consumer, producer)

    message, elapsed_s = _startup_failure(runtime)

    assert f"authentication failed for user {USER!r} at {kafka.secure_bootstrap}" in message
    assert f"the Kafka {refused}" in message
    assert f"check sasl.username and sasl.password in kafka.{refused}" in message
    assert "invalid credentials" in message  # the broker's reason, as librdkafka quotes it
    assert elapsed_s < REFUSED_WITHIN_S
    assert not runtime.ready.is_set()


def test_a_ca_that_did_not_sign_the_broker_certificate_stops_the_replica_at_startup(
    kafka: ApacheKafka, topics: Topics, core: ServingCore, tmp_path: Path
) -> None:
    another_ca = write_tls_files(tmp_path / "another").ca
    security = kafka.sasl_ssl_settings(USER, ca_location=another_ca)
    runtime = _runtime(kafka, topics, core, security)

    message, elapsed_s = _startup_failure(runtime)

    handshake = f"the TLS handshake of the Kafka consumer with {kafka.secure_bootstrap} failed"
    assert handshake in message
    assert "certificate verify failed" in message
    assert "ssl.ca.location" in message
    assert elapsed_s < REFUSED_WITHIN_S


def test_a_broker_restart_is_no_refusal_the_replica_goes_on(
    kafka: ApacheKafka, topics: Topics, core: ServingCore, wine_matrix: np.ndarray
) -> None:
    """While the broker restarts, connections fail and TLS handshakes are cut short: the
    replica waits for it as for any broker away, and serves on once it is back."""
    rows = [(None, encode_wine_record(row)) for row in wine_matrix[:100, :11]]
    runtime = _runtime(kafka, topics, core, kafka.sasl_ssl_settings(USER))
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            runtime.run(count=2 * len(rows), timeout_s=180)
        except BaseException as err:  # noqa: BLE001 - asserted below
            failures.append(err)

    replica = threading.Thread(target=serve, daemon=True)
    replica.start()
    try:
        kafka.produce(topics.data, rows)
        _wait_for_results(kafka, topics, len(rows))
        kafka.restart()
        kafka.produce(topics.data, rows)
    finally:
        replica.join(180)
    assert not replica.is_alive(), "the replica did not finish"
    assert failures == []
    assert len(kafka.read_all(topics.results)) >= 2 * len(rows)


def test_credentials_deleted_while_it_serves_stop_the_replica_at_its_next_connection(
    kafka: ApacheKafka, topics: Topics, core: ServingCore, wine_matrix: np.ndarray
) -> None:
    """Connections stay authenticated; once the broker restarts, the replica's reconnections
    are refused, and it stops saying so rather than wait for a broker that never accepts it."""
    rows = [(None, encode_wine_record(row)) for row in wine_matrix[:100, :11]]
    # At its end the replica commits synchronously, which waits for a coordinator it cannot
    # reach (about a session timeout): a short one keeps the test short.
    security = {**kafka.sasl_ssl_settings(RETIRED), "session.timeout.ms": 6000}
    runtime = _runtime(kafka, topics, core, security, kafka.sasl_ssl_settings(RETIRED))
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            runtime.run(timeout_s=180)
        except BaseException as err:  # noqa: BLE001 - asserted below
            failures.append(err)

    replica = threading.Thread(target=serve, daemon=True)
    replica.start()
    try:
        kafka.produce(topics.data, rows)
        _wait_for_results(kafka, topics, len(rows))
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        deletion = UserScramCredentialDeletion(RETIRED, ScramMechanism.SCRAM_SHA_512)
        for future in admin.alter_user_scram_credentials([deletion]).values():
            future.result(30)
        kafka.restart()
        replica.join(60)
    finally:
        runtime.stop()
        replica.join(60)
    assert len(failures) == 1, failures
    assert isinstance(failures[0], ConfigurationError)
    assert f"authentication failed for user {RETIRED!r}" in str(failures[0])


def _wait_for_results(kafka: ApacheKafka, topics: Topics, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(kafka.read_all(topics.results)) < count:
        assert time.monotonic() < deadline, f"{count} results never arrived"
        time.sleep(0.2)


def _startup_failure(runtime: KafkaRuntime) -> tuple[str, float]:
    """The message of the ConfigurationError that ends ``runtime.run``, and how soon it came."""
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as failure:
        runtime.run(timeout_s=120)
    return str(failure.value), time.monotonic() - started
