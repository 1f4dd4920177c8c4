"""Fuzz target: ModelDescriptor decoding on arbitrary bytes and on mutated valid messages.

Invariant: ``decode_descriptor`` returns a descriptor that survives a round trip through
``encode_descriptor``, or raises DescriptorError (a RejectedInput) with a reason; nothing else.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mutations import fuzz_settings, mutated, shuffled_fields

from streamserve.descriptor import ModelDescriptor, OutputRule, decode_descriptor
from streamserve.descriptor import encode_descriptor as encode
from streamserve.errors import DescriptorError, RejectedInput

CASES = 10_000


@st.composite
def descriptors(draw: st.DrawFn) -> ModelDescriptor:
    data = draw(st.binary(min_size=1, max_size=64))
    inline = draw(st.booleans())
    return ModelDescriptor(
        name=draw(st.text(min_size=1, max_size=12)),
        data_type=draw(st.text(min_size=1, max_size=12)),
        model_type=draw(st.integers(-(2**31), 2**31 - 1)),
        description=draw(st.text(max_size=12)),
        data=data if inline else None,
        location=None if inline else draw(st.text(min_size=1, max_size=20).filter(str.strip)),
        version=draw(st.text(max_size=8)),
        sha256=hashlib.sha256(data).hexdigest() if inline and draw(st.booleans()) else "",
        options=draw(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)),
        output=draw(st.sampled_from(OutputRule)),
    )


payloads = st.one_of(
    st.binary(max_size=256),
    descriptors().map(encode).flatmap(mutated),
    descriptors().map(encode).flatmap(shuffled_fields),
    descriptors().map(encode).flatmap(shuffled_fields).flatmap(mutated),
)


def check_decodes_or_rejects(payload: bytes) -> None:
    try:
        descriptor = decode_descriptor(payload)
    except DescriptorError as err:
        rejection: RejectedInput = err
        assert str(rejection).strip(), "a rejection must say why"
        return
    assert isinstance(descriptor, ModelDescriptor)
    assert decode_descriptor(encode(descriptor)) == descriptor


@pytest.mark.timeout(240)
@fuzz_settings(CASES)
@given(payloads)
def test_decoding_returns_a_descriptor_or_rejects_with_a_reason(payload: bytes) -> None:
    check_decodes_or_rejects(payload)


@fuzz_settings(CASES // 10)
@given(descriptors())
def test_valid_messages_decode_to_themselves(
    descriptor: ModelDescriptor,
) -> None:
    assert decode_descriptor(encode(descriptor)) == descriptor


@pytest.mark.parametrize(
    "payload",
    [
        b"\x0a\x02\xff\xfe\x1a\x01a\x2a\x01x",  # a name that is not UTF-8
        b"\x0a\x01a\x1a\x01a\x2a\x01x\x50\x05",  # output rule 5
        b"\x0a\x01a\x1a\x01a\x2a\x01x\x32\x01l",  # data and location both (oneof: last wins)
        b"\xff" * 11,  # a tag that is no varint
        b"\x0a\x80\x80\x80\x80\x10",  # a name longer than the message
    ],
)
def test_known_odd_messages(payload: bytes) -> None:
    check_decodes_or_rejects(payload)
