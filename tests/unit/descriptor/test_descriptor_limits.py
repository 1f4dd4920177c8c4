"""A model's name, data type and version are in every result and error record: a message whose
one of them is longer than MAX_NAME_CHARS is refused at decoding, saying which and how long."""

from __future__ import annotations

import pytest

from streamserve.descriptor import ModelType, decode_descriptor
from streamserve.descriptor._generated import modeldescriptor_pb2
from streamserve.descriptor.model_descriptor import MAX_NAME_CHARS
from streamserve.errors import DescriptorError


@pytest.mark.parametrize(
    ("field", "shown"),
    [
        ("name", "name (field 1)"),
        ("dataType", "dataType (field 3)"),
        ("version", "version (field 7)"),
    ],
)
def test_a_name_longer_than_the_limit_is_refused(field: str, shown: str) -> None:
    message = modeldescriptor_pb2.ModelDescriptor(
        name="m", dataType="wine", modeltype=ModelType.ONNX, data=b"x"
    )
    setattr(message, field, "n" * (MAX_NAME_CHARS + 1))
    with pytest.raises(
        DescriptorError, match=rf"{shown.replace('(', '.').replace(')', '.')} is 1,025 characters"
    ) as refused:
        decode_descriptor(message.SerializeToString())
    assert len(str(refused.value)) < 2 * MAX_NAME_CHARS  # the name is not repeated whole


def test_a_name_of_the_limit_is_taken() -> None:
    message = modeldescriptor_pb2.ModelDescriptor(
        name="n" * MAX_NAME_CHARS, dataType="wine", modeltype=ModelType.ONNX, data=b"x"
    )
    assert decode_descriptor(message.SerializeToString()).name == "n" * MAX_NAME_CHARS
