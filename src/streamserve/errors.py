"""The one exception tree of streamserve.

Two families, treated differently everywhere:

* :class:`RejectedInput` — a bad model or a bad record. It is counted, routed to the errors output
  with its reason, and the stream goes on; the current model keeps serving.
* :class:`InfrastructureError` — something the stream cannot go on without (a sink that cannot be
  written, a missing dependency). It stops the runtime without committing progress.

Every ``kind`` is a stable, machine-readable label carried into error records and metrics.
"""

from __future__ import annotations


class StreamserveError(Exception):
    """Base of every error streamserve raises on purpose."""

    kind = "error"


class RejectedInput(StreamserveError):  # noqa: N818 - the family, not one error
    """Input that is rejected with a reason; the stream goes on."""

    kind = "rejected"


class DescriptorError(RejectedInput):
    """A model message that is not a usable ModelDescriptor."""

    kind = "bad_descriptor"


class ModelLoadError(RejectedInput):
    """A model whose bytes or location could not be turned into a live model."""

    kind = "model_load_failed"


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


class NothingToRollBackError(StreamserveError):
    """An admin rollback of a key that has no previous model."""

    kind = "nothing_to_roll_back"


class InfrastructureError(StreamserveError):
    """The stream cannot go on: stop without committing."""

    kind = "infrastructure"


class MissingDependencyError(ModelLoadError):
    """An optional dependency of a model format is not installed.

    The model that needed it is rejected (the stream goes on); the message names the pip extra
    that installs the dependency.
    """

    kind = "missing_dependency"

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} is not installed: pip install 'streamserve[{extra}]'")
        self.extra = extra


class ConfigurationError(InfrastructureError):
    """Settings that cannot work, found at startup."""

    kind = "configuration"
