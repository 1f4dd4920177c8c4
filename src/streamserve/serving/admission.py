"""What a model message must be before it is decoded and loaded at all.

Model publishers are not trusted beyond ``serving.security``: a message over the size limit is
refused before it is decoded, and with trusted keys configured every model message and every
tombstone must carry a signature of one of them (:mod:`streamserve.descriptor.signing`). The
check runs where messages enter the core, so every transport (the Kafka models topic, the
models folder, plug-in runtimes) is held to it; an embedding application calling
``ServingCore.submit_model`` with a descriptor it made is trusted as the process itself.
"""

from __future__ import annotations

from streamserve.descriptor import ModelDescriptor, decode_descriptor
from streamserve.descriptor.signing import TrustedKeys, model_statement, tombstone_statement
from streamserve.errors import ModelSignatureError, ModelTooLargeError
from streamserve.settings import ModelSecuritySettings


class ModelAdmission:
    """Admits model messages and tombstones: within the size limit and, when trusted keys are
    configured, signed by one of them. Refusals raise a :class:`RejectedInput` with the reason.

    Keys are loaded when it is made: a key that cannot be read stops the server at startup
    (:class:`ConfigurationError`).
    """

    def __init__(self, settings: ModelSecuritySettings) -> None:
        self._max_bytes = settings.max_model_message_bytes
        self._keys = TrustedKeys.load(settings.trusted_keys) if settings.trusted_keys else None

    @property
    def signing(self) -> bool:
        """Whether only signed model messages and tombstones are admitted."""
        return self._keys is not None

    def admit(self, payload: bytes, signature: bytes | None = None) -> ModelDescriptor:
        """The descriptor of an admitted model message."""
        if len(payload) > self._max_bytes:
            raise ModelTooLargeError(
                f"model message of {len(payload)} bytes is over the limit of {self._max_bytes} "
                "bytes (serving.security.max_model_message_bytes); not decoded"
            )
        if self._keys is None:
            return decode_descriptor(payload)
        self._keys.verify(model_statement(payload), signature, "model message")
        descriptor = decode_descriptor(payload)
        if descriptor.location is not None and not descriptor.sha256:
            raise ModelSignatureError(
                f"model {descriptor.name!r} for key {descriptor.data_type!r} names location "
                f"{descriptor.location!r} without a sha256 (field 8): with signing on, a location "
                "model must declare its digest, or the file could be swapped after signing"
            )
        return descriptor

    def admit_tombstone(self, key: bytes, signature: bytes | None = None) -> None:
        """Admits a tombstone (the unloading of ``key``), or raises saying why not."""
        if self._keys is not None:
            shown = key.decode("utf-8", "replace")
            self._keys.verify(tombstone_statement(key), signature, f"tombstone for key {shown!r}")
