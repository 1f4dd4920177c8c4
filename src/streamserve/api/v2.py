"""Open Inference Protocol (KServe V2) REST: JSON requests and answers, and the binary tensor
data extension; what they mean is :mod:`streamserve.api.inference`'s.

A request body is a JSON object, optionally followed by binary tensor data: then its
``Inference-Header-Content-Length`` header gives the JSON part's length, and each input sent as
binary data says its size in ``parameters.binary_data_size`` (the binary data of the inputs
follows in their order, each little-endian, row-major, without padding). An output is answered
as binary data when the request asks for it (``parameters.binary_data_output`` for every
output, or ``parameters.binary_data`` of one requested output, which wins); the answer is then
``application/octet-stream``: its JSON part (its length in ``Inference-Header-Content-Length``),
then each binary output's data, whose size its ``parameters.binary_data_size`` gives.

A request that cannot be answered raises a :class:`~streamserve.errors.RequestError`; the app's
exception handlers answer it with ``{"error": "..."}`` and a 4xx status, as the specification
shapes errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from streamserve.api import tensors
from streamserve.api.inference import (
    InferenceRequest,
    InferenceResponse,
    InferenceService,
    InputTensor,
    ModelMetadata,
    Parameter,
)
from streamserve.errors import InvalidRequestError
from streamserve.serving.core import ServingCore

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class OutputEncoding:
    """Which outputs an answer carries as binary data: ``default`` (the request's
    ``binary_data_output``) unless a requested output says otherwise."""

    default: bool = False
    overrides: dict[str, bool] = field(default_factory=dict)

    def binary(self, name: str) -> bool:
        return self.overrides.get(name, self.default)


def parse_body(body: bytes, header_length: str | None) -> tuple[Any, memoryview | None]:
    """The JSON document of a request body, and the binary data after it (``None`` without an
    ``Inference-Header-Content-Length`` header: the whole body is JSON)."""
    if header_length is None:
        return _json(body), None
    text = header_length.strip()
    if not text.isdecimal() or not text.isascii():
        raise InvalidRequestError(f"{HEADER_LENGTH} must be a number of bytes, not {text!r}")
    length = int(text)
    if length > len(body):
        raise InvalidRequestError(
            f"{HEADER_LENGTH} is {length}, beyond the request body's {len(body)} bytes"
        )
    return _json(body[:length]), memoryview(body)[length:]


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise InvalidRequestError(f"the request body is not JSON: {err}") from err


def decode_request(
    name: str, document: Any, binary: memoryview | None = None, version: str = ""
) -> tuple[InferenceRequest, OutputEncoding]:
    """The inference request of a parsed body (``binary``: the data after its JSON part), and
    how its answer's outputs are to be encoded."""
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise InvalidRequestError("the request must be a JSON object with an 'inputs' list")
    parameters = _parameters(document.get("parameters"), "parameters")
    data = _BinaryData(binary)
    inputs = [_input(item, index, data) for index, item in enumerate(document["inputs"])]
    data.check_all_taken()
    outputs, encoding = _outputs(document.get("outputs"), parameters)
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        # A client matches answers to requests by id: one it would not get back is refused.
        raise InvalidRequestError(f"'id' must be a string, not {type(request_id).__name__}")
    request = InferenceRequest(
        model_name=name,
        inputs=inputs,
        model_version=version,
        id=request_id or "",
        outputs=outputs,
        parameters=parameters,
    )
    return request, encoding


def encode_response(
    response: InferenceResponse, encoding: OutputEncoding
) -> tuple[bytes, int | None]:
    """The answer's body, and the length of its JSON part when binary data follows it."""
    document, binary = response_document(response, encoding)
    header = orjson.dumps(document)
    if not binary:
        return header, None
    return b"".join([header, *binary]), len(header)


def response_document(
    response: InferenceResponse, encoding: OutputEncoding = OutputEncoding()
) -> tuple[dict[str, Any], list[bytes]]:
    """The answer's JSON document, and the binary data of its outputs sent as binary data."""
    outputs, binary = [], []
    for output in response.outputs:
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.data.shape),
        }
        if encoding.binary(output.name):
            raw = tensors.to_bytes(output.data, output.datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            tensor["data"] = tensors.to_json(output.data)
        outputs.append(tensor)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
        "parameters": response.parameters,
    }
    if response.id:
        document["id"] = response.id
    return document, binary


def metadata_document(metadata: ModelMetadata) -> dict[str, Any]:
    return {
        "name": metadata.name,
        "versions": metadata.versions,
        "platform": metadata.platform,
        "inputs": [vars(tensor) for tensor in metadata.inputs],
        "outputs": [vars(tensor) for tensor in metadata.outputs],
        "parameters": metadata.parameters,
    }


def infer(core: ServingCore, name: str, request: Any) -> dict[str, Any]:
    """Scores a JSON request document (no binary data) with the key's model; answers the JSON
    response document. What the HTTP route does, for callers in the same process."""
    decoded, encoding = decode_request(name, request)
    document, _ = response_document(InferenceService(core).infer(decoded), encoding)
    return document


class _BinaryData:
    """The binary data after a request's JSON part, taken by its inputs in their order."""

    def __init__(self, data: memoryview | None) -> None:
        self._data = data
        self._taken = 0

    def take(self, size: int, where: str) -> memoryview:
        if self._data is None:
            raise InvalidRequestError(
                f"{where} has parameters.binary_data_size, but the request has no "
                f"{HEADER_LENGTH} header (the length of its JSON part)"
            )
        left = len(self._data) - self._taken
        if size > left:
            raise InvalidRequestError(
                f"{where}: binary_data_size {size} goes beyond the binary data "
                f"({left} bytes left after the inputs before it)"
            )
        self._taken += size
        return self._data[self._taken - size : self._taken]

    def check_all_taken(self) -> None:
        if self._data is not None and self._taken < len(self._data):
            raise InvalidRequestError(
                f"{len(self._data) - self._taken} bytes of binary data after the JSON part "
                "belong to no input (the inputs' binary_data_size add up to "
                f"{self._taken}; {HEADER_LENGTH} may be wrong)"
            )


def _input(item: Any, index: int, binary: _BinaryData) -> InputTensor:
    """One input tensor of a request, its data from JSON ``data`` or from the binary data."""
    if not isinstance(item, dict):
        raise InvalidRequestError(f"inputs[{index}] is not an object")
    parameters = _parameters(item.get("parameters"), f"inputs[{index}].parameters")
    size = parameters.get("binary_data_size")
    required = ("name", "shape", "datatype") + (("data",) if size is None else ())
    missing = [key for key in required if key not in item]
    if missing:
        raise InvalidRequestError(f"inputs[{index}] lacks {', '.join(missing)}")
    name, datatype = item["name"], item["datatype"]
    if not isinstance(name, str):
        raise InvalidRequestError(f"inputs[{index}]: name must be a string")
    where = f"inputs[{index}] ({name})"
    problem = tensors.datatype_problem(datatype)
    if problem is not None:
        raise InvalidRequestError(f"{where}: {problem}")
    shape = tensors.input_shape(item["shape"], where)
    if size is None:
        return InputTensor(
            name, datatype, tensors.from_values(item["data"], datatype, shape, where)
        )
    if "data" in item:
        raise InvalidRequestError(f"{where} has both data and parameters.binary_data_size")
    if type(size) is not int or size < 0:
        raise InvalidRequestError(f"{where}: binary_data_size must be a number of bytes")
    raw = binary.take(size, where)
    return InputTensor(name, datatype, tensors.from_bytes(raw, datatype, shape, where))


def _outputs(
    requested: Any, parameters: dict[str, Parameter]
) -> tuple[tuple[str, ...], OutputEncoding]:
    """The outputs a request names (none: every output), and how each is to be answered."""
    default = parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidRequestError("parameters.binary_data_output must be true or false")
    if requested is None:
        return (), OutputEncoding(default)
    if not isinstance(requested, list):
        raise InvalidRequestError("'outputs' must be a list")
    names, overrides = [], {}
    for index, item in enumerate(requested):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequestError(f"outputs[{index}] must be an object with a name")
        where = f"outputs[{index}] ({item['name']})"
        own = _parameters(item.get("parameters"), f"outputs[{index}].parameters")
        if "classification" in own:
            raise InvalidRequestError(f"{where}: the classification extension is not supported")
        if "binary_data" in own:
            if not isinstance(own["binary_data"], bool):
                raise InvalidRequestError(f"{where}: binary_data must be true or false")
            overrides[item["name"]] = own["binary_data"]
        names.append(item["name"])
    return tuple(names), OutputEncoding(default, overrides)


def _parameters(value: Any, where: str) -> dict[str, Parameter]:
    """A ``parameters`` object: names to strings, numbers or booleans."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{where} must be an object")
    for key, item in value.items():
        if not isinstance(item, str | int | float | bool):
            raise InvalidRequestError(f"{where}.{key} must be a string, number or boolean")
    return value
