"""The gRPC messages of the Open Inference Protocol, to and from :mod:`streamserve.api.inference`.

An input's data comes from the request's ``raw_input_contents`` (one entry per input, in their
order: then no input may carry typed contents) or from its typed ``contents`` field of its
datatype (FP16 and BF16 have none: raw only). Outputs are always answered as
``raw_output_contents``, which every client reads (Triton's reads nothing else but BYTES
contents).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from streamserve.api import tensors
from streamserve.api.grpc._generated import grpc_predict_v2_pb2 as pb
from streamserve.api.inference import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    ModelMetadata,
    Parameter,
    ServerMetadata,
    TensorMetadata,
)
from streamserve.errors import InvalidRequestError

# The typed contents field of each datatype that has one.
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_request(message: pb.ModelInferRequest) -> InferenceRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidRequestError(
            f"raw_input_contents holds {len(raw)} tensors for {len(message.inputs)} inputs"
        )
    inputs = [
        _input(tensor, index, raw[index] if raw else None)
        for index, tensor in enumerate(message.inputs)
    ]
    return InferenceRequest(
        model_name=message.model_name,
        inputs=inputs,
        model_version=message.model_version,
        id=message.id,
        outputs=_outputs(message.outputs),
        parameters=_parameters(message.parameters),
    )


def _outputs(
    requested: Sequence[pb.ModelInferRequest.InferRequestedOutputTensor],
) -> tuple[str, ...]:
    """The names of the requested outputs; Triton's classification extension is refused, as
    over REST (a client asking for the top classes must not get the values instead)."""
    for index, output in enumerate(requested):
        if "classification" in output.parameters:
            raise InvalidRequestError(
                f"outputs[{index}] ({output.name}): the classification extension is not supported"
            )
    return tuple(output.name for output in requested)


def _input(
    tensor: pb.ModelInferRequest.InferInputTensor, index: int, raw: bytes | None
) -> InputTensor:
    name, datatype = tensor.name, tensor.datatype
    where = f"inputs[{index}] ({name})"
    problem = tensors.datatype_problem(datatype)
    if problem is not None:
        raise InvalidRequestError(f"{where}: {problem}")
    shape = tensors.input_shape(list(tensor.shape), where)
    given = [field.name for field, _ in tensor.contents.ListFields()]
    if raw is not None:
        if given:
            raise InvalidRequestError(
                f"{where} has contents.{given[0]}, and the request raw_input_contents: "
                "an input's data is in one or the other"
            )
        return InputTensor(name, datatype, tensors.from_bytes(raw, datatype, shape, where))
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise InvalidRequestError(f"{where}: {datatype} data must be in raw_input_contents")
    strays = [other for other in given if other != field]
    if strays:
        raise InvalidRequestError(
            f"{where}: {datatype} data belongs in contents.{field}, not {strays[0]}"
        )
    values = list(getattr(tensor.contents, field))
    return InputTensor(name, datatype, tensors.from_values(values, datatype, shape, where))


def _parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Parameter]:
    decoded: dict[str, Parameter] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            decoded[key] = getattr(parameter, choice)
    return decoded


def encode_response(response: InferenceResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for key, value in response.parameters.items():
        message.parameters[key].CopyFrom(_parameter(value))
    for output in response.outputs:
        message.outputs.add(name=output.name, datatype=output.datatype, shape=output.data.shape)
        message.raw_output_contents.append(tensors.to_bytes(output.data, output.datatype))
    return message


def _parameter(value: Parameter) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=str(value))  # the protocol has no floating point


def metadata_response(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=metadata.name,
        versions=metadata.versions,
        platform=metadata.platform,
        inputs=_tensors_metadata(metadata.inputs),
        outputs=_tensors_metadata(metadata.outputs),
    )


def _tensors_metadata(
    described: Sequence[TensorMetadata],
) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
        )
        for tensor in described
    ]


def server_metadata_response(metadata: ServerMetadata) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name=metadata.name, version=metadata.version, extensions=metadata.extensions
    )
