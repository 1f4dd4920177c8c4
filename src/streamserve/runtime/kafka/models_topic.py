"""The models topic, read in full by every replica.

The topic (compacted, keyed by data type) is read with ``assign`` from the beginning, so any
replica can serve any key: at startup up to its end (the latest model of each key is loaded
before the first record is scored), then followed between batches. A tombstone unloads its key.
A message's ``streamserve-signature`` header goes to the core with it, which checks it when
signing is on (``serving.security.trusted_keys``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TYPE_CHECKING

from streamserve.descriptor.signing import signature_header
from streamserve.errors import InfrastructureError
from streamserve.runtime.base import counted, freeze_startup_objects
from streamserve.runtime.kafka.clients import KafkaClients, is_partition_end
from streamserve.serving.core import ServingCore
from streamserve.settings import KafkaSettings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message

log = logging.getLogger("streamserve.runtime.kafka")

METADATA_TIMEOUT_S = 30.0
MAX_BACKOFF_S = 10.0
# Model messages submitted and not yet loaded, at most: the loader's queue holds their bytes (a
# models topic of 10,000 models read at once would hold all of them). Enough to keep the
# loader's threads busy: submitting is much faster than loading.
MAX_LOADS_PENDING = 32
LOADER_WAIT_S = 0.01  # one wait for the loader while its queue is full
MODELS_WAIT_S = 0.2  # one wait for model messages during the catch-up
# A library import this large (TensorFlow: ~4,000 modules; LightGBM with scikit-learn: ~1,000)
# is frozen out of the collector's view during a server's catch-up (see ImportFreezer).
FREEZE_AFTER_MODULES = 200


class CatchUpWatch:
    """How long the models catch-up has gone without progress: a model message read or a
    model load finished. Past ``catch_up_timeout_s``, :meth:`check` stops the replica."""

    def __init__(
        self, core: ServingCore, settings: KafkaSettings, stopping: threading.Event
    ) -> None:
        self._core = core
        self._settings = settings
        self.stopping = stopping  # a stop request ends the catch-up early
        self.submitted = 0  # models the catch-up handed in (submitted for loading or rejected)
        self._finished = 0
        self._progressed_at = time.monotonic()

    def check(self, read: int) -> None:
        """Notes ``read`` messages and the loads finished since the last check; raises
        :class:`InfrastructureError` once nothing moved for ``catch_up_timeout_s``."""
        now = time.monotonic()
        pending = self._core.loads_pending
        finished = self.submitted - pending
        if read or finished > self._finished:
            self._finished = finished
            self._progressed_at = now
        limit_s = self._settings.catch_up_timeout_s
        if now - self._progressed_at <= limit_s:
            return
        topic = self._settings.models_topic
        if pending:
            raise InfrastructureError(
                f"{pending} models of the models topic {topic!r} were still loading after "
                f"{limit_s:.0f} s without one finishing (kafka.catch_up_timeout_s); stopping "
                "before scoring any record with models missing"
            )
        raise InfrastructureError(
            f"the models topic {topic!r} was not read to its end: nothing arrived for "
            f"{limit_s:.0f} s (kafka.catch_up_timeout_s)"
        )


class ImportFreezer:
    """Moves the objects of the libraries that the catch-up's loads import (TensorFlow, the
    JVM's bridge, LightGBM with scikit-learn) out of the cyclic collector's view, in a server
    process (``enabled``), as soon as they are imported.

    Every full collection scans every tracked object: with TensorFlow imported, tens of
    milliseconds each. A catch-up runs many: the heap grows by a thousand models, and with a PMML
    model the JVM bridge (JPype) runs a full Python collection after every Java one. Frozen
    objects are skipped, so each pass then costs what the catch-up added since. Module objects
    live as long as the process anyway; what else is alive at a freeze (models loaded so far, a
    load in progress) is never collected if it becomes cyclic garbage later, as with
    :func:`~streamserve.runtime.base.freeze_startup_objects` after the catch-up, which a server
    process runs anyway.
    """

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._modules = len(sys.modules)

    def check(self) -> None:
        """Freezes the heap if at least ``FREEZE_AFTER_MODULES`` modules were imported since
        the last freeze (after a collection, so that no garbage alive now is kept for good)."""
        if not self._enabled or len(sys.modules) - self._modules < FREEZE_AFTER_MODULES:
            return
        self._modules = len(sys.modules)
        freeze_startup_objects()


class ModelsTopicReader:
    """Submits the models topic's messages to the core, in order, never more than
    ``MAX_LOADS_PENDING`` at once (with the ``clients``' models reader). ``freeze_imports``: a
    server process, whose catch-up freezes the libraries its loads import (:class:`ImportFreezer`).

    Credentials or TLS settings that the brokers refuse stop the replica at the next read
    (:meth:`KafkaClients.raise_problem`), at startup and while it serves, instead of waiting
    for brokers that will never accept it.
    """

    def __init__(
        self,
        core: ServingCore,
        settings: KafkaSettings,
        clients: KafkaClients,
        *,
        freeze_imports: bool = False,
    ) -> None:
        self._kafka = clients.kafka
        self._freezer = ImportFreezer(freeze_imports)
        self._core = core
        self._settings = settings
        self._clients = clients
        self._reader: Consumer = clients.models

    def catch_up(self, stopping: threading.Event) -> int:
        """Reads the models topic to its end, submitting every model in order, and waits until
        each one is loaded or rejected; how many models it handed in (loaded or rejected). No
        record is scored before: records of a key whose model is still loading would get
        ``no_model`` errors, or an older model's scores.

        Every message, not only the latest per key: if a key's latest model is bad, a restarted
        replica must keep the good one before it, exactly as a running replica does. The loader
        loads models of different keys side by side (``serving.loader_threads``) and those of
        one key in their topic order (``in_key_order``), so each key ends as it would loading
        them one by one.

        ``catch_up_timeout_s`` bounds the time *without progress* (no model message read, no
        load finished), not the whole catch-up: a topic of thousands of slow models takes as long
        as it needs while it moves, and a broker gone quiet or a load that hangs stops the replica
        with an :class:`InfrastructureError` saying what it waited for, rather than serve with
        models missing. At most ``MAX_LOADS_PENDING`` models wait in the loader's queue at once,
        so it holds the bytes of that many models, not of the whole topic.
        """
        partitions = self._assign(stopping)
        watch = CatchUpWatch(self._core, self._settings, stopping)
        at_end: set[int] = set()
        while len(at_end) < partitions and not stopping.is_set():
            room = self._wait_for_loader(MAX_LOADS_PENDING - 1, watch)
            messages = self._reader.consume(room, MODELS_WAIT_S)
            self._clients.raise_problem()
            watch.check(read=len(messages))
            self._freezer.check()
            for message in messages:
                if is_partition_end(self._kafka, message):
                    at_end.add(message.partition() or 0)
                elif message.error() is None:
                    watch.submitted += self._submit(message)
        self._wait_for_loader(0, watch)
        return watch.submitted

    def follow(self) -> None:
        """Submits the model messages that arrived, never more than the loader's queue has room
        for: the rest wait on the broker, and serving never waits."""
        room = MAX_LOADS_PENDING - self._core.loads_pending
        messages = self._reader.consume(room, 0) if room > 0 else []
        self._clients.raise_problem()  # refusals the clients reported, the data consumer's too
        for message in messages:
            if message.error() is None:
                self._submit(message)

    def _wait_for_loader(self, max_pending: int, watch: CatchUpWatch) -> int:
        """Waits while more than ``max_pending`` models are loading; how many more may be
        submitted now (at least 1)."""
        while self._core.loads_pending > max_pending and not watch.stopping.is_set():
            self._core.wait_for_models(LOADER_WAIT_S)  # returns early once the loader is idle
            watch.check(read=0)
            self._freezer.check()
        return max(MAX_LOADS_PENDING - self._core.loads_pending, 1)

    def _partitions(self, stopping: threading.Event) -> list[int]:
        """The models topic's partitions, retried with backoff until the catch-up limit.

        The broker may be down or the topic not created yet: both are waited for, saying so.
        Brokers that refuse the settings are not: the reader is polled (it has no partitions
        yet) for the refusals librdkafka reports through its error callback.
        """
        topic = self._settings.models_topic
        deadline = time.monotonic() + self._settings.catch_up_timeout_s
        backoff_s = 0.5
        while True:
            try:
                timeout_s = min(METADATA_TIMEOUT_S, backoff_s * 4)
                described = self._reader.list_topics(topic, timeout=timeout_s).topics.get(topic)
                if described is not None and described.error is None and described.partitions:
                    return sorted(described.partitions)
                problem = f"the models topic {topic!r} does not exist yet"
            except self._kafka.KafkaException as err:
                problem = f"Kafka at {self._settings.bootstrap_servers} is not answering ({err})"
            self._reader.poll(0)
            self._clients.raise_problem()
            if stopping.is_set() or time.monotonic() + backoff_s > deadline:
                raise InfrastructureError(
                    f"{problem}; gave up after {self._settings.catch_up_timeout_s:.0f} s"
                )
            log.warning("%s; retrying in %.1f s", problem, backoff_s)
            stopping.wait(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)

    def _assign(self, stopping: threading.Event) -> int:
        kafka = self._kafka
        topic = self._settings.models_topic
        partitions = self._partitions(stopping)
        settings = self._settings
        log.info(
            "connected to Kafka at %s: group %r on data topics %s; reading the models topic %r "
            "(%s) from its start",
            settings.bootstrap_servers,
            settings.group_id,
            ", ".join(settings.data_topics),
            topic,
            counted(len(partitions), "partition"),
            extra={
                "event": "connected",
                "bootstrap_servers": settings.bootstrap_servers,
                "group": settings.group_id,
                "data_topics": settings.data_topics,
                "models_topic": topic,
            },
        )
        self._reader.assign(
            [kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions]
        )
        return len(partitions)

    def _submit(self, message: Message) -> int:
        """Hands a model message to the core: how many models it handed in (1 for a model
        submitted for loading or rejected at once, as unreadable or unsigned; 0 for a
        tombstone). Models load in their key's order, at a restart and while running: a
        running replica and its restart then hold the same model for every key (ModelLoader)."""
        origin = position_of(message)
        payload = message.value()
        signature = signature_header(message.headers())
        if payload is not None:
            self._core.submit_model_message(payload, origin, signature, in_key_order=True)
            return 1
        # A tombstone deletes its key's model from the compacted topic: unload the key too.
        key = message.key()
        if key is None:
            log.warning("ignored a tombstone without a key at %s", origin)
            return 0
        self._core.submit_tombstone(key, origin, signature)
        return 0

    def close(self) -> None:
        self._reader.close()


def position_of(message: Message) -> str:
    """Where a message is: ``topic/partition@offset``."""
    return f"{message.topic()}/{message.partition()}@{message.offset()}"
