"""What every model format provides: the Model and ModelFactory protocols and shared helpers."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from streamserve.descriptor import OutputRule
from streamserve.errors import MissingDependencyError, ModelLoadError
from streamserve.formats.archive import ArchiveLimits
from streamserve.formats.artifact import Artifact
from streamserve.formats.cache import ArtifactCache

FloatMatrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class InputSpec:
    """The inputs a model declares: feature names in model order, or only a width.

    ``names`` is ``None`` for positional models (a tensor of ``width`` columns); records are then
    fed in the order their codec defines.
    """

    width: int
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.names is not None and len(self.names) != self.width:
            raise ValueError(f"{len(self.names)} input names for width {self.width}")


@runtime_checkable
class Model(Protocol):
    """A live model: scores a batch of feature rows in one vectorized call."""

    @property
    def inputs(self) -> InputSpec: ...

    def score_batch(self, features: FloatMatrix) -> np.ndarray:
        """Scores ``features`` (rows x ``inputs.width``) into one output row per input row."""
        ...

    def close(self) -> None:
        """Releases what the model holds (sessions, temporary files)."""
        ...


# Types a skops file may instantiate beyond skops' own defaults (scikit-learn estimators and
# numpy types are trusted by skops itself). Operators extend this in settings, never per model.
DEFAULT_SKLEARN_TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
)


class RawOutputModel(ABC):
    """A model whose published values are its raw output under the descriptor's output rule.

    Formats give ``raw_output`` and ``close``; the inputs, the rule and the name live here once.
    """

    def __init__(self, inputs: InputSpec, output: OutputRule, name: str) -> None:
        self._inputs = inputs
        self._output = output
        self._name = name

    @property
    def inputs(self) -> InputSpec:
        return self._inputs

    def score_batch(self, features: FloatMatrix) -> np.ndarray:
        raw = np.asarray(self.raw_output(features))
        return apply_output_rule(self._output, raw, model=self._name)

    @abstractmethod
    def raw_output(self, features: FloatMatrix) -> Any:
        """The model's own output for ``features``, rows first."""

    @abstractmethod
    def close(self) -> None: ...


@dataclass(frozen=True)
class FactoryContext:
    """What the serving configuration tells every factory."""

    threads_per_model: int = 1
    sklearn_trusted_types: tuple[str, ...] = DEFAULT_SKLEARN_TRUSTED_TYPES
    cache: ArtifactCache | None = None  # what costly derivations of model bytes are kept in
    # how far a model's archive may unpack
    archive_limits: ArchiveLimits = field(default_factory=ArchiveLimits)


@dataclass(frozen=True)
class LoadRequest:
    """Everything a factory gets to build one model."""

    name: str
    artifact: Artifact
    options: Mapping[str, str]
    output: OutputRule
    context: FactoryContext


class ModelFactory(Protocol):
    """Builds live models of one format. Instances are made once per registry."""

    format_name: str

    def load(self, request: LoadRequest) -> Model:
        """Builds the model, raising :class:`ModelLoadError` with the reason when it cannot."""
        ...


def apply_output_rule(rule: OutputRule, raw: np.ndarray, *, model: str) -> np.ndarray:
    """Turns a model's raw output (rows first) into one published value per row.

    AUTO: a single column (or a 1-D output) is the value; several columns are class scores and
    give the argmax index, the rule of FLIP-23's TensorFlow wine model. VALUE keeps the row as is;
    ARGMAX takes the index of the largest column.
    """
    if raw.ndim == 1 or rule is OutputRule.VALUE:
        return raw
    matrix = raw.reshape(raw.shape[0], -1)
    if rule is OutputRule.AUTO and matrix.shape[1] == 1:
        return matrix[:, 0]
    if matrix.shape[1] == 0:
        raise ModelLoadError(f"model {model!r} produces an empty output row")
    return np.asarray(np.argmax(matrix, axis=1))


def import_optional(module: str, purpose: str, extra: str) -> Any:
    """Imports an optional dependency, or raises an error naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(f"{module} ({purpose})", extra) from err


def require_option(options: Mapping[str, str], key: str, default: str, *, model: str) -> str:
    """An option value, or ``default`` when absent; an empty value is an error."""
    value = options.get(key, default)
    if not value:
        raise ModelLoadError(f"model {model!r}: option {key!r} is empty")
    return value
