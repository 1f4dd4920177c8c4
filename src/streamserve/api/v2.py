"""Open Inference Protocol (KServe V2) REST: model metadata and inference on the live slots.

The model name is the key (data type); inference uses the key's current model, the same one
the stream uses. A request carries either one 2-D input tensor ``[rows, features]`` (positional,
or named by the model's input names in order) or one 1-D/``[rows, 1]`` tensor per named feature.
A request that cannot be answered raises a :class:`~streamserve.errors.RequestError`; the app's
exception handlers answer it with ``{"error": "..."}`` and a 4xx status, as the specification
shapes errors. A model that overran the scoring deadline raises
:class:`~streamserve.errors.ScoringTimeoutError` (504): the request may be fine.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamserve.codecs.base import DecodedBatch, InputRecord
from streamserve.errors import InvalidRequestError, ModelNotFoundError, ScoringTimeoutError
from streamserve.formats.base import InputSpec
from streamserve.serving.core import ServingCore
from streamserve.serving.output import ValueType
from streamserve.serving.slot import ModelIdentity, ModelRole, ServedModel

V2_DATATYPES = {"b": "BOOL", "i": "INT64", "u": "UINT64", "f": "FP64", "U": "BYTES", "O": "BYTES"}
VALUE_TYPE_DATATYPES = {
    ValueType.NUMBER: "FP64",
    ValueType.STRING: "BYTES",
    ValueType.BOOLEAN: "BOOL",
    ValueType.ARRAY: "FP64",
}
NUMERIC_REQUEST_TYPES = {
    "FP16",
    "FP32",
    "FP64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "BOOL",
}


# The roles whose model answers a request, in order: a staged model becomes current as the
# request's batch starts (a swap at a batch boundary), so it answers if there is no current one.
ANSWERING_ROLES = (ModelRole.CURRENT, ModelRole.STAGED)


def answering_model(core: ServingCore, name: str) -> ServedModel | None:
    """The model that answers requests for key ``name``, if any (see ``ANSWERING_ROLES``)."""
    slot = core.find_slot(name)
    held = {} if slot is None else dict(slot.models())
    return next((held[role] for role in ANSWERING_ROLES if role in held), None)


def current_model(core: ServingCore, name: str) -> ServedModel:
    """The model that answers requests for key ``name``; raises :class:`ModelNotFoundError`."""
    served = answering_model(core, name)
    if served is None:
        raise ModelNotFoundError(f"model {name!r} not found: no model serves that key")
    return served


def model_metadata(core: ServingCore, name: str) -> dict[str, Any]:
    served = current_model(core, name)
    spec = served.inputs
    if spec.names is None:
        inputs = [{"name": "input", "datatype": "FP64", "shape": [-1, spec.width]}]
    else:
        inputs = [{"name": feature, "datatype": "FP64", "shape": [-1]} for feature in spec.names]
    return {
        "name": name,
        "versions": [served.identity.version],
        "platform": served.identity.model_type.lower(),
        "inputs": inputs,
        "outputs": [
            {
                "name": "value",
                "datatype": VALUE_TYPE_DATATYPES[served.value_type],
                "shape": [-1] if served.value_type != ValueType.ARRAY else [-1, -1],
            }
        ],
        "parameters": {
            "model": served.identity.name,
            "description": served.identity.description,
            "value_type": str(served.value_type),
        },
    }


def infer(core: ServingCore, name: str, request: Any) -> dict[str, Any]:
    """Scores the request's rows with the key's model, as one batch; a row the model cannot
    score refuses the request (:class:`InvalidRequestError`, naming the first such row), and a
    model that did not score within the scoring deadline fails it (:class:`ScoringTimeoutError`)."""
    served = current_model(core, name)
    names, values, positional = _features(request, served.inputs)
    records = [InputRecord(b"", position=f"v2:{row}") for row in range(len(values))]
    batch = DecodedBatch(records, [name] * len(records), names, values, positional=positional)
    outcome = core.score(batch, observe=False)  # requests are not the key's stream records
    if outcome.errors:
        first = min(outcome.errors, key=lambda error: error.row)
        timed_out = [error for error in outcome.errors if error.kind == ScoringTimeoutError.kind]
        if timed_out:
            raise ScoringTimeoutError(f"model {name!r}: {timed_out[0].reason}")
        raise InvalidRequestError(f"row {first.row}: {first.reason}")
    if outcome.groups:
        (group,) = outcome.groups
        output, identity = np.asarray(group.values), group.model
    else:  # no rows: nothing scored, the current model still answers
        output, identity = np.empty(0), served.identity
    response = _inference_response(name, identity, output, served.value_type)
    if isinstance(request.get("id"), str):
        response["id"] = request["id"]
    return response


def _inference_response(
    name: str, identity: ModelIdentity, output: np.ndarray, value_type: ValueType
) -> dict[str, Any]:
    """The response's one output tensor; with no rows its datatype is the model's value type."""
    if len(output):
        datatype = V2_DATATYPES.get(output.dtype.kind, "BYTES")
    else:
        datatype = VALUE_TYPE_DATATYPES[value_type]
    tensor = {
        "name": "value",
        "shape": list(output.shape),
        "datatype": datatype,
        "data": output.ravel().tolist(),
    }
    return {
        "model_name": name,
        "model_version": identity.version,
        "outputs": [tensor],
        "parameters": {"model": identity.name},
    }


def _features(request: Any, spec: InputSpec) -> tuple[tuple[str, ...], np.ndarray, bool]:
    """The request's feature columns, their names, and whether they are the model's inputs in
    order: a 2-D tensor as wide as the model is positional (it takes a named model's names)."""
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InvalidRequestError("the request must be a JSON object with an 'inputs' list")
    tensors = [_tensor(item, index) for index, item in enumerate(request["inputs"])]
    if not tensors:
        raise InvalidRequestError("'inputs' is empty")
    if len(tensors) == 1 and tensors[0][1].ndim == 2:
        tensor_name, matrix = tensors[0]
        generated = tuple(f"{tensor_name}[{i}]" for i in range(matrix.shape[1]))
        if matrix.shape[1] == spec.width:
            return spec.names or generated, matrix, True
        return generated, matrix, False
    return tuple(name for name, _ in tensors), _one_feature_each(tensors), False


def _one_feature_each(tensors: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Several input tensors as the columns of one matrix: each must be one feature."""
    columns = []
    for tensor_name, data in tensors:
        if data.ndim == 2 and data.shape[1] != 1:
            raise InvalidRequestError(
                f"input {tensor_name!r} has shape {list(data.shape)}; with several "
                "inputs each must be one feature: [rows] or [rows, 1]"
            )
        columns.append(data.reshape(-1))
    if len({len(column) for column in columns}) != 1:
        raise InvalidRequestError("inputs have different numbers of rows")
    return np.column_stack(columns)


def _tensor(item: Any, index: int) -> tuple[str, np.ndarray]:
    """One input tensor of a request: its name, and its data in its shape."""
    name, shape = _tensor_header(item, index)
    where = f"inputs[{index}] ({name})"
    try:
        data = np.asarray(item["data"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise InvalidRequestError(f"{where}: data must be numbers: {err}") from err
    if data.size != math.prod(shape):  # Python integers: no wrap-around
        raise InvalidRequestError(f"{where}: {data.size} values do not fill shape {shape}")
    return name, data.reshape(shape)


def _tensor_header(item: Any, index: int) -> tuple[str, list[int]]:
    """A tensor's name and shape, checked with its datatype before its data is read."""
    if not isinstance(item, dict):
        raise InvalidRequestError(f"inputs[{index}] is not an object")
    missing = [key for key in ("name", "shape", "datatype", "data") if key not in item]
    if missing:
        raise InvalidRequestError(f"inputs[{index}] lacks {', '.join(missing)}")
    name, datatype = str(item["name"]), item["datatype"]
    where = f"inputs[{index}] ({name})"
    if datatype not in NUMERIC_REQUEST_TYPES:
        raise InvalidRequestError(
            f"{where}: datatype {datatype!r} is not supported; features are numbers"
        )
    return name, _shape(item["shape"], where)


def _shape(shape: Any, where: str) -> list[int]:
    """A tensor's shape: ``[rows]`` or ``[rows, features]`` with at least one feature."""
    if not (
        isinstance(shape, list)
        and 1 <= len(shape) <= 2
        and all(type(d) is int and d >= 0 for d in shape)  # not bool, whatever Python says
    ):
        raise InvalidRequestError(f"{where}: shape must be [rows] or [rows, features]")
    if shape[1:] == [0]:  # no values fill it however many rows it claims: refused, not built
        raise InvalidRequestError(
            f"{where}: shape {shape} has no features; a row needs at least one"
        )
    return list(shape)
