"""ModelDescriptor (FLIP-23 wire format) and WineRecord: typed values, decode and encode."""

from streamserve.descriptor.model_descriptor import (
    ModelDescriptor,
    ModelType,
    OutputRule,
    decode_descriptor,
    encode_descriptor,
)

__all__ = ["ModelDescriptor", "ModelType", "OutputRule", "decode_descriptor", "encode_descriptor"]
