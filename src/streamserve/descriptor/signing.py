"""Ed25519 signatures of model messages and tombstones (the ``signing`` extra: cryptography).

The ModelDescriptor message stays exactly as an unsigned publisher writes it; the signature
travels beside it: in a Kafka header named :data:`SIGNATURE_HEADER` on the models topic, and in
a sidecar file (``<model file>.sig``) in the embedded runtime's models folder. Both hold the
same text::

    ed25519:<key id>:<signature, base64>

* The key id is the first 16 hex digits of the SHA-256 of the signer's raw 32-byte public key
  (:func:`key_id`): a verifier looks the key up by it.
* A model message's signature is over :func:`model_statement`: a domain prefix and the SHA-256
  of the exact message bytes, so it covers every field that decides what is served (key, name,
  model type, version, options, output rule, data or location and sha256).
* A tombstone's is over :func:`tombstone_statement`: another prefix and the key it unloads. The
  prefixes keep a signature made for one from being taken for the other.

cryptography is imported only when keys are used, so unsigned serving does not need it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from streamserve.errors import ConfigurationError, ModelSignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SIGNATURE_HEADER = "streamserve-signature"
SIGNATURE_SUFFIX = ".sig"
SCHEME = "ed25519"
INLINE_KEY_PREFIX = "ed25519:"
MODEL_DOMAIN = b"streamserve model message v1\0"
TOMBSTONE_DOMAIN = b"streamserve tombstone v1\0"
MAX_SIGNATURE_TEXT_BYTES = 1024
_RAW_KEY_BYTES = 32
_SIGNATURE_BYTES = 64


def model_statement(payload: bytes) -> bytes:
    """What a model message's signature signs."""
    return MODEL_DOMAIN + hashlib.sha256(payload).digest()


def tombstone_statement(key: bytes) -> bytes:
    """What a tombstone's signature signs: the key (data type) it unloads."""
    return TOMBSTONE_DOMAIN + key


def key_id(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


@dataclass(frozen=True)
class Signature:
    """A signature as it travels: the signer's key id and the 64 signature bytes."""

    key_id: str
    value: bytes

    def encode(self) -> bytes:
        text = base64.b64encode(self.value).decode()
        return f"{SCHEME}:{self.key_id}:{text}".encode()

    @classmethod
    def parse(cls, raw: bytes) -> Signature:
        """The signature ``raw`` holds, or :class:`ModelSignatureError` saying what is wrong."""
        try:
            scheme, key, text = raw.strip().decode("ascii").split(":")
            value = base64.b64decode(text, validate=True)
        except (UnicodeDecodeError, ValueError, binascii.Error) as err:
            shown = raw[:80].decode("ascii", "replace")
            raise ModelSignatureError(
                f"signature {shown!r} is not '{SCHEME}:<key id>:<base64 signature>'"
            ) from err
        if scheme != SCHEME or len(value) != _SIGNATURE_BYTES:
            raise ModelSignatureError(
                f"signature of scheme {scheme!r} with {len(value)} bytes: only {SCHEME} "
                f"signatures of {_SIGNATURE_BYTES} bytes are accepted"
            )
        return cls(key, value)


Headers = Iterable[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None]


def signature_header(headers: Headers | None) -> bytes | None:
    """The value of a Kafka message's signature header (the last one, if several)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    found = None
    for name, value in pairs:
        if name == SIGNATURE_HEADER:
            found = value.encode() if isinstance(value, str) else value
    return found


def require_cryptography() -> None:
    """Raises a :class:`ConfigurationError` naming the extra if cryptography is missing."""
    try:
        import cryptography  # noqa: F401 - only whether it is there
    except ImportError as err:
        raise ConfigurationError(
            "model signing needs cryptography, which is not installed: "
            "pip install 'streamserve[signing]'"
        ) from err


class TrustedKeys:
    """The public keys whose signatures a server accepts, by key id (``trusted_keys``)."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def load(cls, sources: Sequence[str]) -> TrustedKeys:
        """Keys from ``sources``: each a path to a PEM or raw 32-byte public key file, or a key
        inline (``ed25519:<base64 of the raw key>``, or PEM text). A source that is not a
        usable Ed25519 public key stops the server: :class:`ConfigurationError`."""
        keys = [_public_key(source) for source in sources]
        return cls({key_id(_raw(key)): key for key in keys})

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, statement: bytes, signature: bytes | None, what: str) -> str:
        """The id of the trusted key that signed ``statement``; :class:`ModelSignatureError`
        naming ``what`` and why if none did."""
        trusted = ", ".join(self.ids)
        if signature is None:
            raise ModelSignatureError(
                f"{what} is unsigned; this server accepts only models signed by a trusted key "
                f"({trusted}; serving.security.trusted_keys)"
            )
        try:
            parsed = Signature.parse(signature)
        except ModelSignatureError as err:
            raise ModelSignatureError(f"{what}: {err}") from err
        key = self._keys.get(parsed.key_id)
        if key is None:
            raise ModelSignatureError(
                f"{what} is signed by key {parsed.key_id!r}, which is not trusted ({trusted})"
            )
        from cryptography.exceptions import InvalidSignature  # installed: keys were loaded

        try:
            key.verify(parsed.value, statement)
        except InvalidSignature as err:
            raise ModelSignatureError(
                f"{what}: the signature of key {parsed.key_id!r} does not verify (the message "
                "was changed after signing, or the signature belongs to another message)"
            ) from err
        return parsed.key_id


class Signer:
    """Signs model messages and tombstones with an Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.key_id = key_id(_raw(private_key.public_key()))

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """The key of a PEM private key file (``streamserve keygen``, or ``openssl genpkey
        -algorithm ed25519``), unencrypted."""
        require_cryptography()
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as err:
            raise ConfigurationError(
                f"signing key {path} is not an unencrypted PEM private key: {err}"
            ) from err
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(f"signing key {path} is not an Ed25519 key")
        return cls(key)

    def sign_model(self, payload: bytes) -> Signature:
        return Signature(self.key_id, self._key.sign(model_statement(payload)))

    def sign_tombstone(self, key: bytes) -> Signature:
        return Signature(self.key_id, self._key.sign(tombstone_statement(key)))


def generate_key(path: Path) -> tuple[Path, str]:
    """Writes a new Ed25519 private key to ``path`` (PEM, readable by its owner only) and its
    public key to ``path.pub``; returns the public key file and the inline form of the key.
    Refuses to overwrite either file."""
    require_cryptography()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path = path.with_name(path.name + ".pub")
    _write_new(path, private, 0o600)
    _write_new(public_path, public, 0o644)
    return public_path, INLINE_KEY_PREFIX + base64.b64encode(_raw(key.public_key())).decode()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as err:
        raise ConfigurationError(f"cannot create {path}: {err}") from err
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _public_key(source: str) -> Ed25519PublicKey:
    require_cryptography()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    shown = source if len(source) <= 80 else source[:77] + "..."
    try:
        if source.startswith(INLINE_KEY_PREFIX):
            raw = base64.b64decode(source.removeprefix(INLINE_KEY_PREFIX), validate=True)
        elif source.lstrip().startswith("-----BEGIN"):
            raw = source.encode()
        else:
            raw = Path(source).read_bytes()
        if len(raw) == _RAW_KEY_BYTES:
            return Ed25519PublicKey.from_public_bytes(raw)
        key = load_pem_public_key(raw)
    except (OSError, ValueError, binascii.Error) as err:
        raise ConfigurationError(
            f"trusted key {shown!r} (serving.security.trusted_keys) is not a readable Ed25519 "
            f"public key (a PEM or raw 32-byte file, or 'ed25519:<base64>'): {err}"
        ) from err
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(
            f"trusted key {shown!r} (serving.security.trusted_keys) is not an Ed25519 key"
        )
    return key


def _raw(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
