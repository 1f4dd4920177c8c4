"""The one exception tree of streamserve.

::

    StreamserveError
    ├── RejectedInput            a bad model or record: counted, routed, the stream goes on
    │   ├── DescriptorError
    │   ├── ModelTooLargeError
    │   ├── ModelSignatureError
    │   ├── ModelLoadError
    │   │   └── MissingDependencyError
    │   ├── ModelValidationError
    │   ├── RecordDecodeError
    │   ├── MissingFeaturesError
    │   ├── NoModelError
    │   └── ScoringError
    │       └── ScoringTimeoutError
    ├── RequestError             a caller's request refused; the stream never notices
    │   ├── InvalidRequestError
    │   ├── NotFoundError
    │   │   ├── KeyNotFoundError
    │   │   └── ModelNotFoundError
    │   ├── NothingToRollBackError
    │   ├── RequestTooLargeError
    │   ├── RequestTimeoutError
    │   └── AccessDeniedError
    │       ├── AdminDisabledError
    │       └── NotAuthenticatedError
    └── InfrastructureError      the stream cannot go on: stop without committing
        ├── ConfigurationError
        └── DeliveryError

The three families are treated differently everywhere:

* :class:`RejectedInput` — a bad model or a bad record. It is counted, routed to the errors output
  with its reason, and the stream goes on; the current model keeps serving.
* :class:`RequestError` — a request to the server (inference, state, admin) that cannot be
  answered as asked. The caller gets the reason; nothing else changes. Transports decide how to
  say it (the HTTP API maps each class to a status); this module knows no transport.
* :class:`InfrastructureError` — something the stream cannot go on without (a sink that cannot be
  written, settings that cannot work). It stops the runtime without committing progress.

Every ``kind`` is a stable, machine-readable label carried into error records and metrics.
"""

from __future__ import annotations

from collections.abc import Mapping


class StreamserveError(Exception):
    """Base of every error streamserve raises on purpose."""

    kind = "error"


# --- rejected input ------------------------------------------------------------------------------
class RejectedInput(StreamserveError):  # noqa: N818 - the family, not one error
    """Input that is rejected with a reason; the stream goes on."""

    kind = "rejected"


class DescriptorError(RejectedInput):
    """A model message that is not a usable ModelDescriptor."""

    kind = "bad_descriptor"


class ModelTooLargeError(RejectedInput):
    """A model message, or the archive it carries unpacked, larger than the configured limit
    (``serving.security``): refused before it is decoded or unpacked any further."""

    kind = "model_too_large"


class ModelSignatureError(RejectedInput):
    """A model message or tombstone refused because signing is on (trusted keys configured)
    and it is unsigned, signed by an unknown key, or its signature does not verify."""

    kind = "bad_signature"


class ModelLoadError(RejectedInput):
    """A model whose bytes or location could not be turned into a live model."""

    kind = "model_load_failed"


class MissingDependencyError(ModelLoadError):
    """An optional dependency of a model format is not installed.

    The model that needed it is rejected (the stream goes on); the message names the pip extra
    that installs the dependency.
    """

    kind = "missing_dependency"

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} is not installed: pip install 'streamserve[{extra}]'")
        self.extra = extra


class ModelValidationError(RejectedInput):
    """A model that loaded but failed validation (input shape, a probe score that raised)."""

    kind = "model_validation_failed"


class RecordDecodeError(RejectedInput):
    """A data record that its codec could not decode."""

    kind = "undecodable_record"


class MissingFeaturesError(RejectedInput):
    """A record that lacks features the model of its key needs."""

    kind = "missing_features"


class NoModelError(RejectedInput):
    """A record whose key has no current model."""

    kind = "no_model"


class ScoringError(RejectedInput):
    """The current model raised while scoring a batch."""

    kind = "scoring_failed"


class ScoringTimeoutError(ScoringError):
    """A model call that did not return within the scoring deadline: the records it held get
    this error, and the model is taken out of service (stream records only)."""

    kind = "scoring_timeout"


# --- refused requests ----------------------------------------------------------------------------
class RequestError(StreamserveError):
    """A request the server refuses, with the reason for the caller; serving goes on."""

    kind = "request_refused"


class InvalidRequestError(RequestError):
    """A request that is malformed, or whose rows the model cannot score."""

    kind = "invalid_request"


class NotFoundError(RequestError):
    """A request about something the server does not hold."""

    kind = "not_found"


class KeyNotFoundError(NotFoundError):
    """A request about a key (data type) the server has no slot for."""

    kind = "key_not_found"


class ModelNotFoundError(NotFoundError):
    """An inference request for a key that no model serves (nor is staged to)."""

    kind = "model_not_found"


class NothingToRollBackError(RequestError):
    """An admin rollback of a key that has no previous model."""

    kind = "nothing_to_roll_back"


class RequestTooLargeError(RequestError):
    """A request whose body is larger than the server accepts: refused before it is read whole,
    so nothing beyond the limit is ever held."""

    kind = "request_too_large"


class RequestTimeoutError(RequestError):
    """A request whose body did not arrive whole in the time the server allows for it."""

    kind = "request_timeout"


class AccessDeniedError(RequestError):
    """An admin action the caller may not take."""

    kind = "access_denied"


class AdminDisabledError(AccessDeniedError):
    """An admin action on a server that has no admin token: nobody may take one."""

    kind = "admin_disabled"


class NotAuthenticatedError(AccessDeniedError):
    """An admin action without the admin token."""

    kind = "not_authenticated"


# --- infrastructure ------------------------------------------------------------------------------
class InfrastructureError(StreamserveError):
    """The stream cannot go on: stop without committing."""

    kind = "infrastructure"


class ConfigurationError(InfrastructureError):
    """Settings that cannot work, found at startup."""

    kind = "configuration"


class DeliveryError(InfrastructureError):
    """An output of a batch was not delivered: the batch must not be committed.

    ``committable`` holds the offsets, by (topic, partition), of the acknowledged batches before
    it: those may be committed.
    """

    kind = "delivery_failed"

    def __init__(self, reason: str, committable: Mapping[tuple[str, int], int]) -> None:
        super().__init__(reason)
        self.committable = dict(committable)
