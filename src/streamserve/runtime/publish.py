"""``streamserve publish-model``, ``publish-tombstone`` and ``publish-data``: put models and
records on Kafka topics, the way an original FLIP-23 publisher does (model messages keyed by data
type; records with null keys), with a progress display. With a signer, a model message or
tombstone carries its signature in the ``streamserve-signature`` header; the message itself is
unchanged."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamserve.descriptor import ModelDescriptor, ModelType, OutputRule, encode_descriptor
from streamserve.descriptor.signing import SIGNATURE_HEADER, Signer
from streamserve.errors import ConfigurationError, InfrastructureError
from streamserve.formats.artifact import pack_directory
from streamserve.runtime.kafka import confluent_kafka_module
from streamserve.runtime.kafka.clients import ClientLog
from streamserve.runtime.model_directory import MODEL_TYPES_BY_SUFFIX

FLUSH_TIMEOUT_S = 60.0


def model_descriptor(
    path: Path,
    key: str,
    *,
    model_type: str | None = None,
    name: str | None = None,
    version: str = "",
    description: str = "",
    options: Mapping[str, str] | None = None,
    output: str = "AUTO",
) -> ModelDescriptor:
    """The descriptor of a model file (or a SavedModel directory, sent as a tar.gz archive)."""
    if not path.exists():
        raise ConfigurationError(f"model file {path} does not exist")
    resolved_type = _model_type(path, model_type)
    data = pack_directory(path) if path.is_dir() else path.read_bytes()
    try:
        rule = OutputRule[output.upper()]
    except KeyError as err:
        raise ConfigurationError(
            f"output rule {output!r} is not one of {', '.join(OutputRule.__members__)}"
        ) from err
    return ModelDescriptor(
        name=name or path.stem,
        description=description,
        data_type=key,
        model_type=resolved_type,
        data=data,
        version=version,
        options=dict(options or {}),
        output=rule,
    )


def _model_type(path: Path, declared: str | None) -> int:
    if declared is not None:
        if declared.isdigit():
            return int(declared)
        try:
            return int(ModelType[declared.upper()])
        except KeyError as err:
            raise ConfigurationError(
                f"model type {declared!r} is not one of {', '.join(ModelType.__members__)}"
            ) from err
    if path.is_dir():
        return int(ModelType.TENSORFLOWSAVED)
    suffix_type = MODEL_TYPES_BY_SUFFIX.get(path.suffix.lower())
    if suffix_type is None:
        raise ConfigurationError(f"cannot tell the model type of {path.name}: give --type")
    return int(suffix_type)


class Publisher:
    """Publishes model messages and data records to Kafka (``publish-model``, ``publish-data``)."""

    def __init__(self, bootstrap_servers: str, settings: Mapping[str, str | int | bool]) -> None:
        kafka = confluent_kafka_module()
        self._producer = kafka.Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "message.max.bytes": 200 * 1024 * 1024,
                "linger.ms": 5,
                **settings,
                "logger": ClientLog(),  # librdkafka's lines through logging, as the server's
            }
        )
        self._failures: list[str] = []

    def publish_model(
        self, topic: str, descriptor: ModelDescriptor, signer: Signer | None = None
    ) -> None:
        payload = encode_descriptor(descriptor)
        headers = None if signer is None else _signed(signer.sign_model(payload).encode())
        self._send(topic, descriptor.data_type.encode(), payload, headers)
        self._flush()

    def publish_tombstone(self, topic: str, key: str, signer: Signer | None = None) -> None:
        """A tombstone (null value) for ``key``: every replica unloads the key."""
        encoded = key.encode()
        headers = None if signer is None else _signed(signer.sign_tombstone(encoded).encode())
        self._send(topic, encoded, None, headers)
        self._flush()

    def publish_records(
        self, topic: str, payloads: Sequence[bytes], rate_per_s: float | None, console: Console
    ) -> None:
        columns = (TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("records", total=len(payloads))
            started = time.monotonic()
            for sent, payload in enumerate(payloads, start=1):
                self._send(topic, None, payload)
                if rate_per_s:
                    ahead_s = sent / rate_per_s - (time.monotonic() - started)
                    if ahead_s > 0:
                        time.sleep(ahead_s)
                if sent % 1000 == 0 or sent == len(payloads):
                    progress.update(task, completed=sent)
        self._flush()

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._delivered
                )
                self._producer.poll(0)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _delivered(self, error: object, message: object) -> None:
        if error is not None:
            self._failures.append(str(error))

    def _flush(self) -> None:
        remaining = self._producer.flush(FLUSH_TIMEOUT_S)
        if remaining or self._failures:
            raise InfrastructureError(
                f"{remaining} messages not acknowledged; {'; '.join(self._failures[:3])}"
            )


def _signed(signature: bytes) -> list[tuple[str, bytes]]:
    return [(SIGNATURE_HEADER, signature)]


def parse_options(pairs: Iterable[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"option {pair!r} is not NAME=VALUE")
        options[name] = value
    return options
