"""Signing models with the ``streamserve`` command, as docs/model-message.md tells a new user
to: ``keygen``, ``publish-model --sign``, ``publish-tombstone --sign`` and ``sign`` (a models
folder), or openssl alone; a server with ``[serving.security] trusted_keys`` serves only what
they signed."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka_broker import run_streamserve, running_broker

from builders import onnx_constant, onnx_descriptor, wine_json_lines
from streamserve.descriptor import encode_descriptor


def _ok(done: subprocess.CompletedProcess[bytes]) -> str:
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(
    tmp_path: Path,
) -> None:
    key = tmp_path / "publisher.pem"
    output = _ok(run_streamserve("keygen", str(key)))
    assert key.stat().st_mode & 0o077 == 0
    assert (tmp_path / "publisher.pem.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "key id " in output
    assert "ed25519:" in output
    again = run_streamserve("keygen", str(key))
    assert again.returncode == 2
    assert b"cannot create" in again.stderr


@pytest.mark.slow
def test_signed_publishing_over_kafka(tmp_path: Path, wine_matrix: np.ndarray) -> None:
    key = tmp_path / "publisher.pem"
    _ok(run_streamserve("keygen", str(key)))
    signed_model, unsigned_model = tmp_path / "signed.onnx", tmp_path / "unsigned.onnx"
    signed_model.write_bytes(onnx_constant(11, 1.0))
    unsigned_model.write_bytes(onnx_constant(11, 2.0))
    records = tmp_path / "wine.jsonl"
    records.write_bytes(b"\n".join(wine_json_lines(wine_matrix[:20])) + b"\n")
    with running_broker() as broker:
        broker.create_topics("data", "results", "errors", partitions=1)
        broker.create_topics("models", partitions=1, config={"cleanup.policy": "compact"})
        config = tmp_path / "streamserve.toml"
        config.write_text(f"""
[serving.security]
trusted_keys = ["{key}.pub"]
[kafka]
bootstrap_servers = "{broker.bootstrap}"
data_topics = ["data"]
""")
        common = ("--key", "wine", "--config", str(config))
        published = _ok(
            run_streamserve("publish-model", str(signed_model), *common, "--sign", str(key))
        )
        assert "signed by key" in published
        _ok(run_streamserve("publish-model", str(unsigned_model), *common))
        _ok(run_streamserve("publish-data", str(records), "--config", str(config)))
        serve = ("serve", "--runtime", "kafka", "--config", str(config), "--timeout-s", "200")
        _ok(run_streamserve(*serve, "--count", "20"))
        results = [orjson.loads(m.value()) for m in broker.read_all("results")]
        errors = [orjson.loads(m.value()) for m in broker.read_all("errors")]

        _ok(run_streamserve("publish-tombstone", *common, "--sign", str(key)))
        _ok(run_streamserve("publish-data", str(records), "--config", str(config)))
        _ok(run_streamserve(*serve, "--count", "20"))
        after_tombstone = [orjson.loads(m.value()) for m in broker.read_all("errors")]

    assert len(results) == 20
    assert {r["model"] for r in results} == {"signed"}
    assert [(e["kind"], e["error_kind"]) for e in errors] == [("model_rejected", "bad_signature")]
    assert "model message is unsigned" in errors[0]["reason"]
    no_model = [e for e in after_tombstone if e["kind"] == "no_model"]
    assert len(no_model) == 20, "the signed tombstone did not unload the key"


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(
        ["openssl", *args], input=stdin, capture_output=True, check=True, timeout=60
    ).stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_signed_models_folder_with_streamserve_sign_and_with_openssl(
    tmp_path: Path, wine_matrix: np.ndarray
) -> None:
    key = tmp_path / "publisher.pem"
    _ok(run_streamserve("keygen", str(key)))
    # A second publisher with openssl only, following docs/model-message.md.
    openssl_key, openssl_public = tmp_path / "openssl.pem", tmp_path / "openssl.pub"
    _openssl("genpkey", "-algorithm", "ed25519", "-out", str(openssl_key))
    _openssl("pkey", "-in", str(openssl_key), "-pubout", "-out", str(openssl_public))

    models = tmp_path / "models"
    for folder in ("wine", "beer", "cider"):
        (models / folder).mkdir(parents=True)
    (models / "wine" / "signed.onnx").write_bytes(onnx_constant(11, 1.0))
    (models / "beer" / "unsigned.onnx").write_bytes(onnx_constant(11, 2.0))
    (models / "cider" / "huge.onnx").write_bytes(onnx_constant(11, 3.0) + bytes(100_000))
    _ok(run_streamserve("sign", str(key), str(models / "wine" / "signed.onnx")))
    desc = models / "by-openssl.desc"
    desc.write_bytes(
        encode_descriptor(onnx_descriptor("by-openssl", onnx_constant(11, 4.0), "ale"))
    )
    statement = tmp_path / "statement"
    statement.write_bytes(
        b"streamserve model message v1\0" + _openssl("dgst", "-sha256", "-binary", str(desc))
    )
    signature = _openssl(
        "pkeyutl", "-sign", "-inkey", str(openssl_key), "-rawin", "-in", str(statement)
    )
    key_id = _key_id(openssl_public)
    (models / "by-openssl.desc.sig").write_text(
        f"ed25519:{key_id}:{base64.b64encode(signature).decode()}\n"
    )

    lines = [
        *wine_json_lines(wine_matrix[:5], "wine"),
        *wine_json_lines(wine_matrix[:5], "ale"),
    ]
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    config = tmp_path / "streamserve.toml"
    config.write_text(f"""
[serving.security]
trusted_keys = ["{key}.pub", "{openssl_public}"]
max_model_message_bytes = 50000
""")
    results, errors = tmp_path / "results.jsonl", tmp_path / "errors.jsonl"
    _ok(
        run_streamserve(
            "serve",
            "--config",
            str(config),
            "--models",
            str(models),
            "--data",
            str(data),
            "--results",
            str(results),
            "--errors",
            str(errors),
        )
    )
    served = [orjson.loads(line) for line in results.read_bytes().splitlines()]
    failed = [orjson.loads(line) for line in errors.read_bytes().splitlines()]
    assert {(r["key"], r["model"]) for r in served} == {("wine", "signed"), ("ale", "by-openssl")}
    assert len(served) == 10
    rejected = {e["origin"]: e for e in failed if e["kind"] == "model_rejected"}
    assert set(rejected) == {"beer/unsigned.onnx", "cider/huge.onnx"}
    assert rejected["beer/unsigned.onnx"]["error_kind"] == "bad_signature"
    assert rejected["cider/huge.onnx"]["error_kind"] == "model_too_large"
    assert "limit of 50000 bytes" in rejected["cider/huge.onnx"]["reason"]


def _key_id(public_pem: Path) -> str:
    """The key id as docs/model-message.md computes it: SHA-256 of the raw key, 16 hex digits."""
    der = _openssl("pkey", "-pubin", "-in", str(public_pem), "-outform", "DER")
    raw = der[-32:]  # an Ed25519 SubjectPublicKeyInfo ends with the 32 raw key bytes
    return _openssl("dgst", "-sha256", "-hex", stdin=raw).decode().split()[-1][:16]
