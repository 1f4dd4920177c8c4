"""The models folder's part in signing and size limits: sidecar signatures travel with their
model's message (and are no models themselves), a new sidecar makes its model new again, and a
file over the message limit is rejected without being read."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streamserve.descriptor import ModelDescriptor, decode_descriptor, encode_descriptor
from streamserve.descriptor.signing import Signer
from streamserve.errors import DescriptorError, ModelTooLargeError
from streamserve.formats.artifact import path_digest
from streamserve.runtime.model_directory import ModelDirectory, model_message_of, sidecar_path


def _write(path: Path, data: bytes, mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_a_sidecar_goes_with_its_model_and_is_no_model_itself(tmp_path: Path) -> None:
    model = _write(tmp_path / "wine" / "m.onnx", b"onnx")
    _write(sidecar_path(model), b"ed25519:k:sig")
    desc = _write(
        tmp_path / "d.desc",
        encode_descriptor(ModelDescriptor(name="d", data_type="k", model_type=3, data=b"x")),
    )
    _write(sidecar_path(desc), b"ed25519:k:other")
    messages = {m.origin: m for m in ModelDirectory(tmp_path).poll()}
    assert set(messages) == {"wine/m.onnx", "d.desc"}, "a .sig file was taken for a model"
    assert messages["wine/m.onnx"].signature == b"ed25519:k:sig"
    assert messages["wine/m.onnx"].payload == model_message_of(model)
    assert messages["d.desc"].signature == b"ed25519:k:other"
    assert messages["d.desc"].payload == desc.read_bytes()


def test_a_new_sidecar_makes_its_model_new_again(tmp_path: Path) -> None:
    model = _write(tmp_path / "wine" / "m.onnx", b"onnx")
    directory = ModelDirectory(tmp_path)
    (first,) = directory.poll()
    assert first.signature is None
    _write(sidecar_path(model), b"ed25519:k:sig", mtime_ns=5_000)
    assert directory.poll() == [], "a sidecar seen once may still be being written"
    (again,) = directory.poll()
    assert again.signature == b"ed25519:k:sig"


def test_what_streamserve_sign_signs_is_what_the_folder_sends(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    model = _write(tmp_path / "wine" / "m.onnx", b"onnx")
    saved = tmp_path / "wine" / "saved"
    _write(saved / "saved_model.pb", b"graph")
    for path in (model, saved):
        sidecar_path(path).write_bytes(
            signer.sign_model(model_message_of(path, signed=True)).encode()
        )
    messages = {m.origin: m for m in ModelDirectory(tmp_path).poll()}
    for origin in ("wine/m.onnx", "wine/saved"):
        message = messages[origin]
        assert message.payload is not None
        assert message.signature is not None
        assert message.signature == signer.sign_model(message.payload).encode()
    saved_descriptor = decode_descriptor(messages["wine/saved"].payload or b"")
    assert saved_descriptor.sha256 == path_digest(saved), "a signed folder must pin its digest"
    assert decode_descriptor(model_message_of(saved)).sha256 == "", "unsigned: as before"


def test_a_file_over_the_message_limit_is_rejected_unread(tmp_path: Path) -> None:
    _write(tmp_path / "wine" / "big.onnx", bytes(2048))
    _write(tmp_path / "wine" / "small.onnx", bytes(1024))
    messages = {m.origin: m for m in ModelDirectory(tmp_path, max_message_bytes=1024).poll()}
    big = messages["wine/big.onnx"]
    assert big.payload is None
    rejection = big.rejection()
    assert isinstance(rejection, ModelTooLargeError)
    assert "2048 bytes, over the model message limit of 1024 bytes" in str(rejection)
    assert messages["wine/small.onnx"].payload is not None


def test_problems_stay_descriptor_errors(tmp_path: Path) -> None:
    _write(tmp_path / "wine" / "notes.txt", b"x")
    (message,) = ModelDirectory(tmp_path).poll()
    assert isinstance(message.rejection(), DescriptorError)
    assert "unknown model file type '.txt'" in message.problem
