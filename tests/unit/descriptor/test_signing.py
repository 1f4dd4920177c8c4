"""Ed25519 signatures of model messages and tombstones: the wire form, the keys a server trusts
(files and inline), and the admission of messages by the core."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streamserve.descriptor import ModelDescriptor, encode_descriptor
from streamserve.descriptor.signing import (
    SIGNATURE_HEADER,
    Signature,
    Signer,
    TrustedKeys,
    generate_key,
    key_id,
    model_statement,
    signature_header,
    tombstone_statement,
)
from streamserve.errors import ConfigurationError, ModelSignatureError, ModelTooLargeError
from streamserve.serving.admission import ModelAdmission
from streamserve.serving.core import ServingCore
from streamserve.settings import ModelSecuritySettings, ServingSettings

PAYLOAD = encode_descriptor(ModelDescriptor(name="m", data_type="wine", model_type=3, data=b"x"))


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def _raw(signer: Signer) -> bytes:
    return signer._key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _admission(signer: Signer, **limits: int) -> ModelAdmission:
    inline = "ed25519:" + base64.b64encode(_raw(signer)).decode()
    return ModelAdmission(ModelSecuritySettings(trusted_keys=[inline], **limits))


def test_the_wire_form_round_trips_and_names_the_key(signer: Signer) -> None:
    signature = signer.sign_model(PAYLOAD)
    text = signature.encode()
    assert text.startswith(f"ed25519:{signer.key_id}:".encode())
    assert Signature.parse(text) == signature
    assert signer.key_id == key_id(_raw(signer))
    assert len(signer.key_id) == 16


@pytest.mark.parametrize(
    "text",
    [b"", b"ed25519:abc", b"rsa:abc:" + base64.b64encode(bytes(64)), b"ed25519:k:!!!", b"\xff"],
)
def test_malformed_signatures_are_refused_saying_what_is_expected(text: bytes) -> None:
    with pytest.raises(ModelSignatureError, match="ed25519"):
        Signature.parse(text)


def test_statements_of_models_and_tombstones_never_coincide() -> None:
    assert model_statement(b"wine") != tombstone_statement(b"wine")
    assert not model_statement(b"x").startswith(tombstone_statement(b""))


def test_the_last_signature_header_counts() -> None:
    assert signature_header(None) is None
    assert signature_header([("other", b"1")]) is None
    headers = [(SIGNATURE_HEADER, b"first"), ("other", b"x"), (SIGNATURE_HEADER, b"last")]
    assert signature_header(headers) == b"last"
    assert signature_header({SIGNATURE_HEADER: "text"}) == b"text"


def test_keys_are_read_from_pem_and_raw_files_and_inline(tmp_path: Path, signer: Signer) -> None:
    public = generate_key(tmp_path / "k.pem")[0]
    pem_signer = Signer.from_file(tmp_path / "k.pem")
    raw_file = tmp_path / "raw.key"
    raw_file.write_bytes(_raw(signer))
    other = Signer(Ed25519PrivateKey.generate())
    inline_pem = (
        other._key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    keys = TrustedKeys.load([str(public), str(raw_file), inline_pem])
    assert keys.ids == sorted([pem_signer.key_id, signer.key_id, other.key_id])
    for each in (pem_signer, signer, other):
        statement = model_statement(PAYLOAD)
        assert keys.verify(statement, each.sign_model(PAYLOAD).encode(), "m") == each.key_id


@pytest.mark.parametrize(
    "source", ["/nonexistent/key.pub", "ed25519:not-base64!", "ed25519:" + "A" * 8]
)
def test_an_unusable_trusted_key_stops_the_server_at_startup(source: str) -> None:
    settings = ServingSettings(security=ModelSecuritySettings(trusted_keys=[source]))
    with pytest.raises(ConfigurationError, match=r"serving\.security\.trusted_keys"):
        ServingCore(settings)


def test_a_private_key_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tmp_path / "ec.pem"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigurationError, match="not an Ed25519 key"):
        Signer.from_file(key)


def test_admission_with_signing_on(signer: Signer) -> None:
    admission = _admission(signer)
    assert admission.signing
    assert admission.admit(PAYLOAD, signer.sign_model(PAYLOAD).encode()).name == "m"
    refusals = {
        "unsigned": None,
        "another message": signer.sign_model(PAYLOAD + b"\x00").encode(),
        "a tombstone's": signer.sign_tombstone(b"wine").encode(),
        "an unknown key": Signer(Ed25519PrivateKey.generate()).sign_model(PAYLOAD).encode(),
    }
    for case, signature in refusals.items():
        with pytest.raises(ModelSignatureError) as refused:
            admission.admit(PAYLOAD, signature)
        assert refused.value.kind == "bad_signature", case
    admission.admit_tombstone(b"wine", signer.sign_tombstone(b"wine").encode())
    with pytest.raises(ModelSignatureError, match="tombstone for key 'beer'"):
        admission.admit_tombstone(b"beer", signer.sign_tombstone(b"wine").encode())
    with pytest.raises(ModelSignatureError, match="is unsigned"):
        admission.admit_tombstone(b"wine", None)


def test_a_signed_location_must_declare_its_digest(signer: Signer) -> None:
    admission = _admission(signer)
    located = encode_descriptor(
        ModelDescriptor(name="m", data_type="wine", model_type=3, location="/srv/models/m.onnx")
    )
    with pytest.raises(ModelSignatureError, match="must declare its digest"):
        admission.admit(located, signer.sign_model(located).encode())
    pinned = encode_descriptor(
        ModelDescriptor(
            name="m", data_type="wine", model_type=3, location="/m.onnx", sha256="a" * 64
        )
    )
    assert admission.admit(pinned, signer.sign_model(pinned).encode()).sha256 == "a" * 64


def test_an_oversize_message_is_refused_before_its_signature_or_content_is_looked_at(
    signer: Signer,
) -> None:
    admission = _admission(signer, max_model_message_bytes=len(PAYLOAD) - 1)
    with pytest.raises(ModelTooLargeError, match=f"limit of {len(PAYLOAD) - 1} bytes"):
        admission.admit(PAYLOAD, b"not even a signature")


def test_without_trusted_keys_nothing_is_signed_and_tombstones_pass() -> None:
    admission = ModelAdmission(ModelSecuritySettings())
    assert not admission.signing
    assert admission.admit(PAYLOAD).name == "m"
    admission.admit_tombstone(b"wine")
