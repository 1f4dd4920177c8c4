"""The typed ModelDescriptor and its protobuf wire form.

Decoding validates everything a loader relies on and says which field was wrong and how; the
generated protobuf classes stay private to this package.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.message import DecodeError

from streamserve.descriptor._generated import modeldescriptor_pb2 as pb
from streamserve.errors import DescriptorError

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ModelType(enum.IntEnum):
    """Model formats, numbered as on the wire. Plug-in formats may use numbers not listed here."""

    TENSORFLOW = 0
    TENSORFLOWSAVED = 1
    PMML = 2
    ONNX = 3
    PYTORCH = 4
    SKLEARN = 5
    XGBOOST = 6
    LIGHTGBM = 7


class OutputRule(enum.IntEnum):
    """How a model's raw output becomes the published value."""

    AUTO = 0
    VALUE = 1
    ARGMAX = 2


def model_type_label(model_type: int) -> str:
    """``PMML`` for a known type, ``type 42`` for a number this build does not name."""
    try:
        return ModelType(model_type).name
    except ValueError:
        return f"type {model_type}"


@dataclass(frozen=True)
class ModelDescriptor:
    """One model message. Exactly one of ``data`` and ``location`` is set."""

    name: str
    data_type: str
    model_type: int
    description: str = ""
    data: bytes | None = None
    location: str | None = None
    version: str = ""
    sha256: str = ""
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    output: OutputRule = OutputRule.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if self.output not in OutputRule._value2member_map_:
            raise DescriptorError(
                f"model descriptor {self.name!r}: unknown output rule {self.output}"
            )
        object.__setattr__(self, "output", OutputRule(self.output))
        _check_fields(self)

    @property
    def content_digest(self) -> str:
        """The SHA-256 of inline data, else the declared digest, else ``""``."""
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        return self.sha256

    @property
    def version_label(self) -> str:
        """What results report as the model version: the version, else a short digest."""
        if self.version:
            return self.version
        digest = self.content_digest
        return f"sha256:{digest[:12]}" if digest else ""

    @property
    def model_type_label(self) -> str:
        return model_type_label(self.model_type)


MAX_NAME_CHARS = 1024  # a model's name, version and data type: each result names them


def _check_fields(descriptor: ModelDescriptor) -> None:
    shown = descriptor.name[:MAX_NAME_CHARS]
    where = f"model descriptor {shown!r}" if descriptor.name else "model descriptor"
    for which, value in (
        ("name (field 1)", descriptor.name),
        ("dataType (field 3)", descriptor.data_type),
        ("version (field 7)", descriptor.version),
    ):
        if len(value) > MAX_NAME_CHARS:
            # Every result and error record carries them: one of megabytes would make each
            # output larger than a broker takes, and stop the replica at every restart.
            raise DescriptorError(
                f"{where}…: {which} is {len(value):,} characters; at most {MAX_NAME_CHARS:,}"
            )
    if not descriptor.name:
        raise DescriptorError(f"{where}: name (field 1) is empty; every model must be named")
    if not descriptor.data_type:
        raise DescriptorError(
            f"{where}: dataType (field 3) is empty; a model must name the data type it serves"
        )
    if descriptor.data is None and descriptor.location is None:
        raise DescriptorError(f"{where}: carries neither data (field 5) nor location (field 6)")
    if descriptor.data is not None and descriptor.location is not None:
        raise DescriptorError(f"{where}: carries both data (field 5) and location (field 6)")
    if descriptor.data is not None and not descriptor.data:
        raise DescriptorError(f"{where}: data (field 5) is empty")
    if descriptor.location is not None and not descriptor.location.strip():
        raise DescriptorError(f"{where}: location (field 6) is empty")
    if descriptor.sha256 and not _SHA256_HEX.fullmatch(descriptor.sha256):
        raise DescriptorError(
            f"{where}: sha256 (field 8) must be 64 lowercase hex digits, got {descriptor.sha256!r}"
        )
    if descriptor.data is not None and descriptor.sha256:
        actual = hashlib.sha256(descriptor.data).hexdigest()
        if actual != descriptor.sha256:
            raise DescriptorError(
                f"{where}: data does not match its sha256 (field 8): declared "
                f"{descriptor.sha256[:12]}…, actual {actual[:12]}…"
            )


def decode_descriptor(payload: bytes) -> ModelDescriptor:
    """Decodes a model message, raising :class:`DescriptorError` that says what is wrong."""
    if not payload:
        raise DescriptorError("model message is empty (0 bytes)")
    message = pb.ModelDescriptor()
    try:
        message.ParseFromString(payload)
    except DecodeError as err:
        raise DescriptorError(
            f"model message ({len(payload)} bytes) is not a ModelDescriptor protobuf: {err}"
        ) from err
    content = message.WhichOneof("MessageContent")
    return ModelDescriptor(
        name=message.name,
        description=message.description,
        data_type=message.dataType,
        model_type=int(message.modeltype),
        data=message.data if content == "data" else None,
        location=message.location if content == "location" else None,
        version=message.version,
        sha256=message.sha256,
        options=dict(message.options),
        output=message.output,  # type: ignore[arg-type]  # checked in __post_init__
    )


def encode_descriptor(descriptor: ModelDescriptor) -> bytes:
    """The wire form of ``descriptor``; an original FLIP-23 reader sees fields 1-6 unchanged."""
    message = pb.ModelDescriptor(
        name=descriptor.name,
        description=descriptor.description,
        dataType=descriptor.data_type,
        modeltype=descriptor.model_type,  # type: ignore[arg-type]  # open enum: plug-in numbers
        version=descriptor.version,
        sha256=descriptor.sha256,
        options=dict(descriptor.options),
        output=int(descriptor.output),  # type: ignore[arg-type]
    )
    if descriptor.data is not None:
        message.data = descriptor.data
    else:
        message.location = descriptor.location or ""
    return message.SerializeToString()
