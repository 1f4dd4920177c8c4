from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from streamserve.descriptor import (
    ModelDescriptor,
    ModelType,
    OutputRule,
    decode_descriptor,
    encode_descriptor,
)
from streamserve.descriptor.codegen import GENERATED_DIR
from streamserve.errors import DescriptorError


def original_flip23_message_class() -> type:
    """ModelDescriptor exactly as FLIP-23's modeldescriptor.proto declares it (fields 1-6)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="flip23.proto", package="modelserving", syntax="proto3"
    )
    message = file.message_type.add(name="ModelDescriptor")
    enum = message.enum_type.add(name="ModelType")
    for number, name in enumerate(["TENSORFLOW", "TENSORFLOWSAVED", "PMML"]):
        enum.value.add(name=name, number=number)
    message.oneof_decl.add(name="MessageContent")
    field = descriptor_pb2.FieldDescriptorProto
    for number, name, kind in [
        (1, "name", field.TYPE_STRING),
        (2, "description", field.TYPE_STRING),
        (3, "dataType", field.TYPE_STRING),
    ]:
        message.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    message.field.add(
        name="modeltype",
        number=4,
        type=field.TYPE_ENUM,
        type_name=".modelserving.ModelDescriptor.ModelType",
        label=field.LABEL_OPTIONAL,
    )
    message.field.add(
        name="data", number=5, type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL, oneof_index=0
    )
    message.field.add(
        name="location", number=6, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL, oneof_index=0
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("modelserving.ModelDescriptor")
    )


def test_a_message_from_an_original_publisher_decodes_to_the_same_model() -> None:
    original = original_flip23_message_class()(
        name="wine-pmml",
        description="from the original publisher",
        dataType="wine",
        modeltype=2,
        data=b"<PMML/>",
    )
    decoded = decode_descriptor(original.SerializeToString())
    assert decoded == ModelDescriptor(
        name="wine-pmml",
        description="from the original publisher",
        data_type="wine",
        model_type=ModelType.PMML,
        data=b"<PMML/>",
    )


def test_an_original_reader_sees_fields_1_to_6_of_our_messages_unchanged() -> None:
    ours = ModelDescriptor(
        name="m",
        description="d",
        data_type="wine",
        location="/models/m",
        model_type=ModelType.TENSORFLOWSAVED,
        version="7",
        sha256="a" * 64,
        options={"signature": "predict"},
        output=OutputRule.ARGMAX,
    )
    original = original_flip23_message_class()()
    original.ParseFromString(encode_descriptor(ours))
    assert (
        original.name,
        original.description,
        original.dataType,
        original.modeltype,
        original.location,
    ) == ("m", "d", "wine", 1, "/models/m")
    assert original.WhichOneof("MessageContent") == "location"


def test_every_field_round_trips() -> None:
    descriptor = ModelDescriptor(
        name="m",
        description="d",
        data_type="wine",
        model_type=ModelType.ONNX,
        data=b"bytes",
        version="v2",
        sha256=hashlib.sha256(b"bytes").hexdigest(),
        options={"output": "y"},
        output=OutputRule.VALUE,
    )
    assert decode_descriptor(encode_descriptor(descriptor)) == descriptor


def test_plug_in_model_type_numbers_survive_the_wire() -> None:
    descriptor = ModelDescriptor(name="m", data_type="k", model_type=1234, data=b"x")
    assert decode_descriptor(encode_descriptor(descriptor)).model_type == 1234
    assert descriptor.model_type_label == "type 1234"


def test_version_label_is_the_version_else_a_short_digest() -> None:
    inline = ModelDescriptor(name="m", data_type="k", model_type=3, data=b"x")
    assert inline.version_label == "sha256:" + hashlib.sha256(b"x").hexdigest()[:12]
    assert (
        ModelDescriptor(
            name="m", data_type="k", model_type=3, data=b"x", version="2024-01"
        ).version_label
        == "2024-01"
    )
    assert ModelDescriptor(name="m", data_type="k", model_type=3, location="/m").version_label == ""


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"data_type": "k", "data": b"x", "name": ""}, "name (field 1) is empty"),
        ({"name": "m", "data_type": "", "data": b"x"}, "dataType (field 3) is empty"),
        ({"name": "m", "data_type": "k"}, "neither data (field 5) nor location (field 6)"),
        ({"name": "m", "data_type": "k", "data": b"x", "location": "/m"}, "carries both"),
        ({"name": "m", "data_type": "k", "data": b""}, "data (field 5) is empty"),
        ({"name": "m", "data_type": "k", "location": "  "}, "location (field 6) is empty"),
        ({"name": "m", "data_type": "k", "data": b"x", "sha256": "XYZ"}, "64 lowercase hex"),
        ({"name": "m", "data_type": "k", "data": b"x", "sha256": "0" * 64}, "does not match"),
        ({"name": "m", "data_type": "k", "data": b"x", "output": 9}, "unknown output rule 9"),
    ],
)
def test_invalid_descriptors_say_which_field_is_wrong(fields: dict, reason: str) -> None:
    with pytest.raises(DescriptorError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        ModelDescriptor(model_type=3, **fields)


@pytest.mark.parametrize("payload", [b"", b"\xff\xff\xff", b"\x0a\x05ab"])
def test_undecodable_messages_are_rejected_with_their_size(payload: bytes) -> None:
    with pytest.raises(DescriptorError, match=r"empty|not a ModelDescriptor protobuf") as caught:
        decode_descriptor(payload)
    assert str(len(payload)) in str(caught.value) or not payload


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    # In its own process: protoc in-process crashes once TensorFlow's native protobuf is loaded.
    subprocess.run(
        [sys.executable, "-m", "streamserve.descriptor.codegen", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh_files = sorted(tmp_path.glob("*_pb2.py*"))
    assert [p.name for p in fresh_files] == sorted(p.name for p in GENERATED_DIR.glob("*_pb2.py*"))
    for fresh in fresh_files:
        committed = GENERATED_DIR / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} is stale: run python -m streamserve.descriptor.codegen"
        )
