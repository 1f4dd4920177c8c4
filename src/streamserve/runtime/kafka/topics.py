"""The topics a replica reads and writes, checked before it reads its first record.

A results or errors topic that does not exist, or that the brokers say this replica may not
write, would otherwise show only once records are consumed and their outputs fail (librdkafka
gives up on a missing topic after ``topic.metadata.propagation.max.ms``, 30 s); a data topic that
does not exist leaves the replica idle and never ready. So, before the models catch-up:

* results and errors topics: described with the producer's settings (its credentials), asking
  the brokers for this client's authorized operations; each must exist and, where the brokers
  report operations (they do once an authorizer is configured; else every operation), allow
  WRITE;
* data topics (regular expressions, ``^…``, excepted): the data consumer's metadata must list
  them.

Topics being created while the replica starts are waited for, saying which, up to
``catch_up_timeout_s`` (or ``flush_timeout_s`` if shorter: the wait for outputs that cannot be
written); then the replica stops with an :class:`InfrastructureError` naming each topic and its
setting. Brokers that do not answer are not this check's to judge: it says so and goes on, and
the models catch-up and the outputs' acknowledgements wait for them as before.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamserve.errors import InfrastructureError
from streamserve.runtime.kafka.clients import KafkaClients
from streamserve.settings import KafkaSettings

if TYPE_CHECKING:
    from confluent_kafka import KafkaError

log = logging.getLogger("streamserve.runtime.kafka")

MAX_BACKOFF_S = 10.0
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TopicProblem:
    """A topic the replica cannot use (yet), and the setting that names it."""

    topic: str
    setting: str
    what: str  # "does not exist", "may not be written by this replica", ...

    def __str__(self) -> str:
        return f"the {_role(self.setting)} topic {self.topic!r} ({self.setting}) {self.what}"


class Unanswered(Exception):  # noqa: N818 - a state of the brokers, not a failure of ours
    """The brokers did not answer the check (down, unreachable, too slow)."""


class TopicCheck:
    """Checks a replica's output and data topics with its ``clients`` (see the module)."""

    def __init__(self, settings: KafkaSettings, clients: KafkaClients) -> None:
        self._settings = settings
        self._clients = clients
        self._kafka = clients.kafka
        self._outputs = {
            settings.results_topic: "kafka.results_topic",
            settings.errors_topic: "kafka.errors_topic",
        }
        self._data = [t for t in settings.data_topics if not t.startswith("^")]

    def run(self, stopping: threading.Event) -> None:
        """Returns once every topic is usable (or the brokers did not answer, or ``stopping``
        is set); raises :class:`InfrastructureError` naming the topics that are not, once the
        wait is over."""
        settings = self._settings
        limit_s = min(settings.catch_up_timeout_s, settings.flush_timeout_s)
        deadline = time.monotonic() + limit_s
        backoff_s = 0.5
        admin = self._clients.admin()
        while not stopping.is_set():
            try:
                problems = self._problems(admin, min(REQUEST_TIMEOUT_S, backoff_s * 4))
            except Unanswered as err:
                problems, unanswered = [], str(err)
            else:
                unanswered = ""
                if not problems:
                    return
            # Credentials refused: no wait mends them. The data consumer, not subscribed yet,
            # reports its refusals as it is polled; the producers' are polled for below.
            self._clients.data.poll(0)
            self._clients.raise_problem()
            if time.monotonic() + backoff_s > deadline:
                if unanswered:
                    log.warning("%s; going on without checking them", unanswered)
                    return
                raise InfrastructureError(
                    f"{'; '.join(str(p) for p in problems)}: gave up after {limit_s:.0f} s "
                    "(create the topics, or grant this replica's user WRITE on the output "
                    "topics, before it starts)"
                )
            said = unanswered or "; ".join(str(p) for p in problems)
            log.warning("%s; retrying in %.1f s", said, backoff_s)
            stopping.wait(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)

    def recheck_data_topics(self) -> None:
        """After a consumer reported a topic gone: raises :class:`InfrastructureError` if a data
        topic no longer exists (the replica would sit idle, assigned partitions that are gone);
        a broker that does not answer is left to the consumer's own reconnection."""
        try:
            problems = self._data_problems(REQUEST_TIMEOUT_S)
        except Unanswered as err:
            log.warning("%s", err)
            return
        if problems:
            raise InfrastructureError(
                f"{'; '.join(str(p) for p in problems)} any more: stopping (offsets are "
                "committed up to the last acknowledged batch)"
            )

    def _problems(self, admin: Any, timeout_s: float) -> list[TopicProblem]:
        return [*self._data_problems(timeout_s), *self._output_problems(admin, timeout_s)]

    def _output_problems(self, admin: Any, timeout_s: float) -> list[TopicProblem]:
        kafka = self._kafka
        futures = admin.describe_topics(
            kafka.TopicCollection(list(self._outputs)),
            request_timeout=timeout_s,
            include_authorized_operations=True,
        )
        admin.poll(0)  # serves the admin client's error callback (refused credentials)
        problems = []
        for topic, future in futures.items():
            setting = self._outputs[topic]
            try:
                described = future.result(timeout_s + 1)
            except kafka.KafkaException as err:
                problems.append(self._refusal(topic, setting, err.args[0]))
                continue
            operations = described.authorized_operations
            if operations is not None and kafka.admin.AclOperation.WRITE not in operations:
                allowed = ", ".join(sorted(op.name for op in operations)) or "nothing"
                what = f"may not be written by this replica (it may: {allowed})"
                problems.append(TopicProblem(topic, setting, what))
        return problems

    def _data_problems(self, timeout_s: float) -> list[TopicProblem]:
        problems = []
        for topic in self._data:
            try:
                listed = self._clients.data.list_topics(topic, timeout=timeout_s)
            except self._kafka.KafkaException as err:
                raise Unanswered(self._unanswered(err.args[0])) from err
            found = listed.topics.get(topic)
            if found is None:
                problems.append(TopicProblem(topic, "kafka.data_topics", "does not exist"))
            elif found.error is not None:
                problems.append(self._refusal(topic, "kafka.data_topics", found.error))
        return problems

    def _refusal(self, topic: str, setting: str, error: KafkaError) -> TopicProblem:
        codes = self._kafka.KafkaError
        if error.code() == codes.UNKNOWN_TOPIC_OR_PART:
            return TopicProblem(topic, setting, "does not exist")
        if error.code() == codes.TOPIC_AUTHORIZATION_FAILED:
            return TopicProblem(topic, setting, "may not be described by this replica's user")
        raise Unanswered(self._unanswered(error))

    def _unanswered(self, error: KafkaError) -> str:
        topics = ", ".join([*self._outputs, *self._data])
        return (
            f"the topics {topics} could not be checked: Kafka at "
            f"{self._settings.bootstrap_servers} is not answering ({error})"
        )


def _role(setting: str) -> str:
    return setting.removeprefix("kafka.").removesuffix("_topics").removesuffix("_topic")
