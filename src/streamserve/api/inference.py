"""The Open Inference Protocol (KServe V2) over the serving core, whatever the transport.

REST (:mod:`streamserve.api.v2`) and gRPC (:mod:`streamserve.api.grpc`) decode their requests
into the values here, call :class:`InferenceService`, and encode what it answers; validation,
scoring and the errors are all here. The model name is the key (data type), and a request is
scored by the key's current model, the one the stream uses.

A request carries either one 2-D input tensor ``[rows, features]`` (positional, or named by the
model's input names in order) or one ``[rows]`` / ``[rows, 1]`` tensor per named feature, of
any numeric datatype (features become float64, as the codecs give them). The answer is one
output tensor, ``value``: the values the stream would publish for the same rows.

A request that cannot be answered raises a :class:`~streamserve.errors.RequestError`
(:class:`~streamserve.errors.ModelNotFoundError` for an unknown model or version,
:class:`~streamserve.errors.InvalidRequestError` otherwise); a model that overran the scoring
deadline raises :class:`~streamserve.errors.ScoringTimeoutError`: the request may be fine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np

from streamserve import __version__
from streamserve.api import tensors
from streamserve.codecs.base import DecodedBatch, InputRecord
from streamserve.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    NoModelError,
    ScoringTimeoutError,
)
from streamserve.serving.core import ServingCore
from streamserve.serving.outcome import RecordError
from streamserve.serving.output import ValueType
from streamserve.serving.slot import ModelIdentity, ModelRole, ServedModel

OUTPUT_NAME = "value"
# Metadata's datatype of a model's output, by its value type; NUMBER's values answer INT64 or
# FP64 as the model gives integers or not (the widest of each kind).
VALUE_TYPE_DATATYPES = {
    ValueType.NUMBER: "FP64",
    ValueType.STRING: "BYTES",
    ValueType.BOOLEAN: "BOOL",
    ValueType.ARRAY: "FP64",
}
EXTENSIONS = ("binary_tensor_data",)  # REST's binary tensor data extension (Triton's name)

Parameter = str | int | float | bool
REQUEST_ROW = InputRecord(b"", position="v2 request")  # the record of every row of a request


@dataclass(frozen=True)
class InputTensor:
    """A decoded input tensor: its data is shaped as the request says."""

    name: str
    datatype: str
    data: np.ndarray


@dataclass(frozen=True)
class InferenceRequest:
    """A decoded inference request. ``model_version`` empty: whichever version serves;
    ``outputs`` empty: every output. ``parameters`` are the request's own; none changes what
    the core does (a transport reads those of its extensions before)."""

    model_name: str
    inputs: Sequence[InputTensor]
    model_version: str = ""
    id: str = ""
    outputs: Sequence[str] = ()
    parameters: Mapping[str, Parameter] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray  # shaped; its elements are of ``datatype`` once encoded (tensors.as_datatype)


@dataclass(frozen=True)
class InferenceResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    parameters: dict[str, Parameter]  # "model": the name of the model that scored the rows


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]  # -1: any size


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Parameter]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


class InferenceService:
    """The Open Inference Protocol's health, metadata and inference over one core.

    Stateless beyond the core and the readiness callable, and safe to call from several threads
    at once: each call reads the key's model when it starts, and scoring holds it to the end.
    Requests are scored with ``observe=False``: they count in the core's totals, but a key
    router never applies to them and their rows never validate a key's next models.
    """

    def __init__(self, core: ServingCore, is_ready: Callable[[], bool] = lambda: True) -> None:
        self._core = core
        self._is_ready = is_ready

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata("streamserve", __version__, EXTENSIONS)

    def server_ready(self) -> bool:
        """Ready once the runtime says so: the models present at its start are loaded and
        records flow in; a model published later loads beside serving (contract 2)."""
        return self._is_ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        served = answering_model(self._core, name)
        return served is not None and version in ("", served.identity.version)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        served = self._model(name, version)
        spec = served.inputs
        if spec.names is None:
            inputs = [TensorMetadata("input", "FP64", [-1, spec.width])]
        else:
            inputs = [TensorMetadata(feature, "FP64", [-1]) for feature in spec.names]
        shape = [-1, -1] if served.value_type == ValueType.ARRAY else [-1]
        identity = served.identity
        return ModelMetadata(
            name=name,
            versions=[identity.version],
            platform=identity.model_type.lower(),
            inputs=inputs,
            outputs=[TensorMetadata(OUTPUT_NAME, VALUE_TYPE_DATATYPES[served.value_type], shape)],
            parameters={
                "model": identity.name,
                "description": identity.description,
                "value_type": str(served.value_type),
            },
        )

    def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Scores the request's rows with the key's model, as one batch; a row the model cannot
        score refuses the request (naming the first such row)."""
        name = request.model_name
        served = self._model(name, request.model_version)
        unknown = [output for output in request.outputs if output != OUTPUT_NAME]
        if unknown:
            raise InvalidRequestError(
                f"model {name!r} has no output {unknown[0]!r}; its output is {OUTPUT_NAME!r}"
            )
        names, values, positional = _features(request.inputs, served)
        records = [REQUEST_ROW] * len(values)  # no payload: errors name rows by index
        batch = DecodedBatch(records, [name] * len(records), names, values, positional=positional)
        outcome = self._core.score(batch, observe=False)  # requests are not the stream's records
        scored_by = [group.model for group in outcome.groups]
        scored_by += [error.model for error in outcome.errors if error.model is not None]
        for identity in scored_by:
            # another model may have taken the key between the lookup and the batch (a swap,
            # a rollback): it does not answer a request for another version
            _check_version(name, request.model_version, identity)
        if outcome.errors:
            _raise_first(name, outcome.errors)
        if outcome.groups:
            (group,) = outcome.groups
            output, identity = np.asarray(group.values), group.model
            datatype = tensors.output_datatype(output)
        else:  # no rows: nothing scored, the answering model still answers
            output, identity = np.empty(0), served.identity
            datatype = VALUE_TYPE_DATATYPES[served.value_type]
        return _response(request, identity, OutputTensor(OUTPUT_NAME, datatype, output))

    def _model(self, name: str, version: str) -> ServedModel:
        served = answering_model(self._core, name)
        if served is None:
            starting = "" if self._is_ready() else " yet (the server is still starting)"
            raise ModelNotFoundError(
                f"model {name!r} not found: no model serves that key{starting}"
            )
        _check_version(name, version, served.identity)
        return served


def answering_model(core: ServingCore, name: str) -> ServedModel | None:
    """The model that answers the next request for key ``name``, if any: the staged one when
    the key has one and is not pinned to a current model (it becomes current as the request's
    batch starts: a swap at a batch boundary), else the current one."""
    slot = core.find_slot(name)
    if slot is None:
        return None
    held = dict(slot.models())
    current, staged = held.get(ModelRole.CURRENT), held.get(ModelRole.STAGED)
    if staged is not None and (current is None or not slot.pinned):
        return staged
    return current


def _check_version(name: str, version: str, identity: ModelIdentity) -> None:
    """Refuses a request for ``version`` (empty: any) that model ``identity`` would answer."""
    if version not in ("", identity.version):
        raise ModelNotFoundError(
            f"model {name!r} has no version {version!r}: it serves {identity.version!r}"
        )


def _raise_first(name: str, errors: Sequence[RecordError]) -> NoReturn:
    """The error of a request whose rows failed: the time limit, a model gone (unloaded while
    the request waited), or the first row the model could not score."""
    timed_out = [e for e in errors if e.kind == ScoringTimeoutError.kind]
    if timed_out:
        raise ScoringTimeoutError(f"model {name!r}: {timed_out[0].reason}")
    gone = [e for e in errors if e.kind == NoModelError.kind]
    if gone:
        raise ModelNotFoundError(f"model {name!r} not found: {gone[0].reason}")
    first = min(errors, key=lambda error: error.row)
    raise InvalidRequestError(f"row {first.row}: {first.reason}")


def _response(
    request: InferenceRequest, identity: ModelIdentity, output: OutputTensor
) -> InferenceResponse:
    return InferenceResponse(
        model_name=request.model_name,
        model_version=identity.version,
        id=request.id,
        outputs=[output],
        parameters={"model": identity.name},
    )


def _features(
    inputs: Sequence[InputTensor], served: ServedModel
) -> tuple[tuple[str, ...], np.ndarray, bool]:
    """The request's feature columns, their names, and whether they are the model's inputs in
    order: a 2-D tensor is positional (it takes a named model's names), and must be as wide
    as the model; one of another width is refused before a column is named, since naming a
    column each of a wide tensor (one of no rows is as wide as it says) takes far more memory
    than its body."""
    if not inputs:
        raise InvalidRequestError("'inputs' is empty")
    spec = served.inputs
    if len(inputs) == 1 and inputs[0].data.ndim == 2:
        (tensor,) = inputs
        width = tensor.data.shape[1]
        if width != spec.width:
            raise InvalidRequestError(
                f"model {served.identity.name!r} takes {spec.width} positional features, "
                f"input {tensor.name!r} has shape {list(tensor.data.shape)}"
            )
        generated = tuple(f"{tensor.name}[{i}]" for i in range(width))
        return spec.names or generated, tensors.as_features(tensor.data), True
    return tuple(tensor.name for tensor in inputs), _one_feature_each(inputs), False


def _one_feature_each(inputs: Sequence[InputTensor]) -> np.ndarray:
    """Several input tensors as the columns of one matrix: each must be one feature."""
    columns = []
    for tensor in inputs:
        if tensor.data.ndim == 2 and tensor.data.shape[1] != 1:
            raise InvalidRequestError(
                f"input {tensor.name!r} has shape {list(tensor.data.shape)}; with several "
                "inputs each must be one feature: [rows] or [rows, 1]"
            )
        columns.append(tensors.as_features(tensor.data).reshape(-1))
    if len({len(column) for column in columns}) != 1:
        raise InvalidRequestError("inputs have different numbers of rows")
    if len({tensor.name for tensor in inputs}) != len(inputs):
        raise InvalidRequestError("inputs have the same name twice")
    return np.column_stack(columns)
