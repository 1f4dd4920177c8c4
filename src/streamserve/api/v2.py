"""Open Inference Protocol (KServe V2) REST: model metadata and inference on the live slots.

The model name is the key (data type); inference uses the key's current model, the same one
the stream uses. A request carries either one 2-D input tensor ``[rows, features]`` (positional,
or named by the model's input names in order) or one 1-D/``[rows, 1]`` tensor per named feature.
Errors answer ``{"error": "..."}`` with a 4xx status, as the specification shapes them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamserve.codecs.base import DecodedBatch, InputRecord
from streamserve.formats.base import InputSpec
from streamserve.serving.core import ServingCore
from streamserve.serving.output import ValueType
from streamserve.serving.slot import ServedModel

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


class V2Error(Exception):
    """A request the protocol answers with ``{"error": message}`` and ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def current_model(core: ServingCore, name: str) -> ServedModel:
    """The model serving key ``name``: the current one, else the one staged to take over."""
    slot = core.find_slot(name)
    served = None if slot is None else slot.current or slot.staged
    if served is None:
        raise V2Error(f"model {name!r} not found: no model serves that key", status=404)
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
    served = current_model(core, name)
    names, values, positional = _features(request, served.inputs)
    records = [InputRecord(b"", position=f"v2:{row}") for row in range(len(values))]
    batch = DecodedBatch(records, [name] * len(records), names, values, positional=positional)
    outcome = core.score(batch, observe=False)  # requests are not the key's stream records
    if outcome.errors:
        first = min(outcome.errors, key=lambda error: error.row)
        raise V2Error(f"row {first.row}: {first.reason}")
    if outcome.groups:
        (group,) = outcome.groups
        output, identity = np.asarray(group.values), group.model
    else:  # no rows: nothing scored, the current model still answers
        output, identity = np.empty(0), served.identity
    response: dict[str, Any] = {
        "model_name": name,
        "model_version": identity.version,
        "outputs": [
            {
                "name": "value",
                "shape": list(output.shape),
                "datatype": V2_DATATYPES.get(output.dtype.kind, "BYTES")
                if len(output)
                else VALUE_TYPE_DATATYPES[served.value_type],
                "data": output.ravel().tolist(),
            }
        ],
        "parameters": {"model": identity.name},
    }
    if isinstance(request.get("id"), str):
        response["id"] = request["id"]
    return response


def _features(request: Any, spec: InputSpec) -> tuple[tuple[str, ...], np.ndarray, bool]:
    """The request's feature columns, their names, and whether they are the model's inputs in
    order: a 2-D tensor as wide as the model is positional (it takes a named model's names)."""
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise V2Error("the request must be a JSON object with an 'inputs' list")
    tensors = [_tensor(item, index) for index, item in enumerate(request["inputs"])]
    if not tensors:
        raise V2Error("'inputs' is empty")
    if len(tensors) == 1 and tensors[0][1].ndim == 2:
        tensor_name, matrix = tensors[0]
        generated = tuple(f"{tensor_name}[{i}]" for i in range(matrix.shape[1]))
        if matrix.shape[1] == spec.width:
            return spec.names or generated, matrix, True
        return generated, matrix, False
    columns = []
    for tensor_name, data in tensors:
        if data.ndim == 2 and data.shape[1] != 1:
            raise V2Error(
                f"input {tensor_name!r} has shape {list(data.shape)}; with several "
                "inputs each must be one feature: [rows] or [rows, 1]"
            )
        columns.append(data.reshape(-1))
    if len({len(column) for column in columns}) != 1:
        raise V2Error("inputs have different numbers of rows")
    return tuple(name for name, _ in tensors), np.column_stack(columns), False


def _tensor(item: Any, index: int) -> tuple[str, np.ndarray]:
    if not isinstance(item, dict):
        raise V2Error(f"inputs[{index}] is not an object")
    missing = [key for key in ("name", "shape", "datatype", "data") if key not in item]
    if missing:
        raise V2Error(f"inputs[{index}] lacks {', '.join(missing)}")
    name, shape, datatype = item["name"], item["shape"], item["datatype"]
    if datatype not in NUMERIC_REQUEST_TYPES:
        raise V2Error(
            f"inputs[{index}] ({name}): datatype {datatype!r} is not supported; "
            "features are numbers"
        )
    if not (
        isinstance(shape, list)
        and 1 <= len(shape) <= 2
        and all(type(d) is int and d >= 0 for d in shape)  # not bool, whatever Python says
    ):
        raise V2Error(f"inputs[{index}] ({name}): shape must be [rows] or [rows, features]")
    try:
        data = np.asarray(item["data"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise V2Error(f"inputs[{index}] ({name}): data must be numbers: {err}") from err
    if data.size != math.prod(shape):  # Python integers: no wrap-around
        raise V2Error(f"inputs[{index}] ({name}): {data.size} values do not fill shape {shape}")
    return str(name), data.reshape(shape)
