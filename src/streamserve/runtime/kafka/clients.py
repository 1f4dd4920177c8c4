"""The librdkafka clients of a replica, made from its settings, with their logs tamed."""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

from streamserve.errors import ConfigurationError, InfrastructureError
from streamserve.settings import MAX_MODEL_MESSAGE_BYTES_LIMIT, KafkaSettings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, Message, Producer
    from confluent_kafka.admin import AdminClient

log = logging.getLogger("streamserve.runtime.kafka")

ERROR_LOG_INTERVAL_S = 5.0
MAX_MESSAGE_BYTES = 200 * 1024 * 1024  # model messages carry whole models

# The data consumer's defaults (settings.consumer overrides them). librdkafka stops fetching a
# partition while its local queue holds queued.min.messages and looks again only after
# fetch.queue.backoff.ms (1 s by default): at 100k+ small records a second the queue drains long
# before that, and the serving loop would wait for records the broker has.
DATA_CONSUMER_DEFAULTS: dict[str, str | int | bool] = {"fetch.queue.backoff.ms": 10}


def confluent_kafka_module() -> ModuleType:
    """confluent_kafka, imported when a Kafka runtime or publisher is made (an optional extra)."""
    try:
        import confluent_kafka
        import confluent_kafka.admin  # the admin client and ACL operations
    except ImportError as err:
        raise InfrastructureError(
            "confluent-kafka is not installed: pip install 'streamserve[kafka]'"
        ) from err
    return confluent_kafka


class ClientLog:
    """librdkafka's log lines in Python logging, at most one per facility every few seconds.

    While a broker is down, librdkafka logs every failed connection attempt of every client,
    many a second; the first of each kind says enough, with a count of those left out.
    """

    def __init__(self, interval_s: float = ERROR_LOG_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}
        self._log = logging.getLogger("streamserve.runtime.kafka.client")

    def log(self, level: int, fmt: str, facility: str, client: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(facility, -self._interval_s) < self._interval_s:
            self._left_out[facility] = self._left_out.get(facility, 0) + 1
            return
        self._last[facility] = now
        left_out = self._left_out.pop(facility, 0)
        suffix = f" ({left_out} similar lines left out)" if left_out else ""
        self._log.log(level, "%s [%s] %s%s", facility, client, text, suffix)


class KafkaClients:
    """A replica's clients: the data consumer (in the group), the models reader (assigned every
    partition of the models topic), the producer, and with ``exactly_once`` a transactional
    producer. Settings librdkafka refuses stop the replica here, saying which and why.

    Brokers that refuse the clients' credentials or TLS settings are not waited for: librdkafka
    reports them through its error callback and retries forever, but no retry mends settings.
    The first such refusal is kept as :attr:`problem`, which :meth:`raise_problem` raises.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        max_model_message_bytes: int = MAX_MESSAGE_BYTES,
        **callbacks: Any,
    ) -> None:
        self.kafka = confluent_kafka_module()
        self._settings = settings
        self._last_error_log = 0.0
        self.problem: ConfigurationError | None = None  # settings that no retry mends
        # A consumer reported a topic or partition gone (a data topic deleted, say): the
        # transport checks its topics again. librdkafka itself would wait for its next metadata
        # refresh (topic.metadata.refresh.interval.ms, 5 min) and meanwhile stay assigned.
        self.topics_changed = False
        codes = self.kafka.KafkaError
        self._topic_gone_codes = {
            codes._UNKNOWN_PARTITION,
            codes._UNKNOWN_TOPIC,
            codes.UNKNOWN_TOPIC_OR_PART,
        }
        self._common: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap_servers,
            "logger": ClientLog(),
        }
        self.producer: Producer = self._producer({"linger.ms": 2})
        self.data: Consumer = self._consumer(
            {
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **callbacks,
                **DATA_CONSUMER_DEFAULTS,
            }
        )
        # The largest model message admitted must fit one fetch, or the reader stalls on it.
        # The settings bound it by librdkafka's largest fetch.message.max.bytes; the 1 MiB of
        # receive.message.max.bytes above it stays under that one's bound (2**31 - 1).
        if max_model_message_bytes > MAX_MODEL_MESSAGE_BYTES_LIMIT:
            raise ConfigurationError(
                f"serving.security.max_model_message_bytes ({max_model_message_bytes}) is over "
                f"{MAX_MODEL_MESSAGE_BYTES_LIMIT}, the largest message librdkafka fetches"
            )
        models_fetch_bytes = max(MAX_MESSAGE_BYTES, max_model_message_bytes)
        self.models: Consumer = self._consumer(
            {
                "group.id": f"{settings.group_id}-models-reader",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.message.max.bytes": models_fetch_bytes,
                # a fetch response holds a whole model message: above librdkafka's 100 MB default
                "fetch.max.bytes": models_fetch_bytes,
                "receive.message.max.bytes": models_fetch_bytes + 1024 * 1024,
            }
        )
        self.transactional: Producer | None = None
        if settings.exactly_once:
            transactional_id = settings.transactional_id or (
                f"{settings.group_id}-{socket.gethostname()}-{os.getpid()}"
            )
            self.transactional = self._producer({"transactional.id": transactional_id})

    def _producer(self, config: dict[str, Any]) -> Producer:
        merged = {
            **self._common,
            "error_cb": functools.partial(self._on_error, "producer"),
            "message.max.bytes": MAX_MESSAGE_BYTES,
            **config,
            **self._settings.producer,
        }
        producer: Producer = self._made("producer", merged)
        return producer

    def _consumer(self, config: dict[str, Any]) -> Consumer:
        merged = {
            **self._common,
            "error_cb": functools.partial(self._on_error, "consumer"),
            **config,
            **self._settings.consumer,
        }
        consumer: Consumer = self._made("consumer", merged)
        return consumer

    def admin(self) -> AdminClient:
        """An admin client with the producer's settings (its servers and credentials), to
        describe the output topics as the producer's user sees them."""
        merged = {
            **self._common,
            "error_cb": functools.partial(self._on_error, "producer"),
            **self._settings.producer,
        }
        admin: AdminClient = self._made("producer", merged, self.kafka.admin.AdminClient)
        return admin

    def _made(self, role: str, config: dict[str, Any], make: Any = None) -> Any:
        if make is None:
            make = self.kafka.Producer if role == "producer" else self.kafka.Consumer
        try:
            return make(config)
        except self.kafka.KafkaException as err:
            raise InfrastructureError(
                f"the Kafka {role} refused its settings (kafka.{role} in the configuration): "
                f"{err.args[0].str()}"
            ) from err

    def raise_problem(self) -> None:
        """Raises the :attr:`problem` (a :class:`ConfigurationError`) the clients reported so
        far, if any. The consumers report theirs as they are polled; the producers' are served
        here."""
        for producer in (self.producer, self.transactional):
            if producer is not None and self.problem is None:
                producer.poll(0)
        if self.problem is not None:
            raise self.problem

    def _on_error(self, role: str, error: KafkaError) -> None:
        """librdkafka's client-level errors: it reconnects by itself, with backoff; say so.
        Credentials or TLS settings the brokers refuse are kept as :attr:`problem` instead."""
        code = error.code()
        refused = code in (self.kafka.KafkaError._AUTHENTICATION, self.kafka.KafkaError._SSL)
        # librdkafka reports a handshake the broker did not answer in time (a paused or
        # overloaded broker) with the same code as a refusal; only its text tells them apart,
        # and a broker that is slow is waited for, like one that is away.
        if refused and not _timed_out(error):
            if self.problem is None:
                self.problem = ConfigurationError(self._refusal(role, error))
                log.error("%s", self.problem)
            return
        if error.fatal():
            log.error("Kafka client failed for good: %s", error)
            return
        if role == "consumer" and code in self._topic_gone_codes:
            self.topics_changed = True
            log.warning("Kafka at %s: %s", self._settings.bootstrap_servers, error)
            return
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            log.warning(
                "Kafka at %s: %s (reconnecting with backoff)",
                self._settings.bootstrap_servers,
                error,
            )

    def _refusal(self, role: str, error: KafkaError) -> str:
        """What the brokers refused, to whom, and which settings to check."""
        config = self._settings.producer if role == "producer" else self._settings.consumer
        protocol = config.get("security.protocol", "PLAINTEXT")
        servers = self._settings.bootstrap_servers
        if error.code() == self.kafka.KafkaError._SSL:
            return (
                f"the TLS handshake of the Kafka {role} with {servers} failed "
                f"(security.protocol {protocol}): {error.str()}; check the ssl.* settings in "
                f"kafka.{role} (ssl.ca.location: the authority that signed the brokers' "
                "certificates)"
            )
        user = config.get("sasl.username")
        mechanism = config.get("sasl.mechanism", "GSSAPI")
        who = f"user {user!r}" if user is not None else f"sasl.mechanism {mechanism}"
        return (
            f"authentication failed for {who} at {servers} (the Kafka {role}, "
            f"{protocol} {mechanism}): {error.str()}; check sasl.username and sasl.password "
            f"in kafka.{role}"
        )


def is_partition_end(kafka: ModuleType, message: Message) -> bool:
    """Whether ``message`` is the end-of-partition event, not a record."""
    error = message.error()
    return error is not None and error.code() == kafka.KafkaError._PARTITION_EOF


def _timed_out(error: KafkaError) -> bool:
    """Whether librdkafka's error says an exchange timed out rather than was refused."""
    return "timed out" in error.str().lower()
