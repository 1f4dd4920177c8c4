"""A models directory, scanned for new and changed models.

What it takes:

* ``*.desc`` files: serialized ModelDescriptor messages, used as they are;
* ``KEY/NAME.EXT`` files: a model for data type ``KEY``, its type from the extension
  (``.pb`` TENSORFLOW frozen graph, ``.pmml`` PMML, ``.onnx`` ONNX, ``.desc`` a descriptor);
* ``KEY/NAME/`` directories holding ``saved_model.pb``: a TENSORFLOWSAVED model by location.

Files present at the first scan are taken at once; later files once their size and mtime hold
still across two scans, so a model being copied in is not read half-written. A changed file is a
new model version. Anything else in the directory is reported once as a rejection, and so is a
file over the model message size limit, before it is read.

Signatures: a model's sidecar file ``<model file>.sig`` (``<folder>.sig`` for a SavedModel
folder) holds its signature, which goes with the model message to the core. It signs the
message the folder makes of the model (:func:`model_message_of`; ``streamserve sign`` writes
it). A changed or new sidecar makes its model new again. A SavedModel folder with a sidecar is
sent with its digest, so that what was signed is what loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor
from streamserve.descriptor.signing import MAX_SIGNATURE_TEXT_BYTES, SIGNATURE_SUFFIX
from streamserve.errors import DescriptorError, ModelTooLargeError, RejectedInput
from streamserve.formats.artifact import path_digest

MODEL_TYPES_BY_SUFFIX = {
    ".pb": ModelType.TENSORFLOW,
    ".pmml": ModelType.PMML,
    ".onnx": ModelType.ONNX,
}
DESCRIPTOR_SUFFIX = ".desc"
SAVED_MODEL_FILE = "saved_model.pb"


@dataclass(frozen=True)
class ModelMessage:
    """A model message to submit (``payload``, with its ``signature`` if it has one) or a file
    that is not one (``problem``, a :class:`RejectedInput` of kind ``problem_kind``)."""

    origin: str
    payload: bytes | None = None
    problem: str = ""
    signature: bytes | None = None
    problem_kind: type[RejectedInput] = DescriptorError

    def rejection(self) -> RejectedInput:
        return self.problem_kind(self.problem)


Stamp = tuple[int, ...]  # size and mtime_ns of a model, then of its sidecar (-1 if none)


class ModelDirectory:
    """A watched folder of models for the embedded runtime: ``<key>/<model file>`` or
    descriptor files; each new or changed file becomes one model message."""

    def __init__(self, root: Path, max_message_bytes: int | None = None) -> None:
        self.root = root
        self._max_message_bytes = max_message_bytes
        self._published: dict[Path, Stamp] = {}
        self._candidates: dict[Path, Stamp] = {}
        self._first_scan = True

    def poll(self) -> list[ModelMessage]:
        """Messages for models that are new or changed since the last scan, in path order."""
        messages: list[ModelMessage] = []
        for path in self._entries():
            stamp = _stamp(path)
            if stamp is None or self._published.get(path) == stamp:
                continue
            if not self._first_scan and self._candidates.get(path) != stamp:
                self._candidates[path] = stamp  # seen once: wait for it to hold still
                continue
            self._published[path] = stamp
            self._candidates.pop(path, None)
            messages.append(self._message(path))
        self._first_scan = False
        return messages

    def _entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        entries = [p for p in self.root.iterdir() if p.is_file() and _is_entry(p)]
        for key_dir in (p for p in self.root.iterdir() if p.is_dir() and _is_entry(p)):
            entries.extend(p for p in key_dir.iterdir() if _is_entry(p))
        return sorted(entries)

    def _message(self, path: Path) -> ModelMessage:
        origin = str(path.relative_to(self.root))
        if not origin.isascii() and not _utf8(origin):
            # The folder names the data type (a protobuf string): bytes that are not UTF-8 are
            # refused here, their name shown escaped, rather than failing every poll.
            shown = os.fsencode(origin).decode("utf-8", "backslashreplace")
            return ModelMessage(shown, problem=f"{shown}: a model file's path must be UTF-8")
        try:
            too_large = self._too_large(path, origin)
            if too_large is not None:
                return too_large
            if path.parent == self.root and path.suffix != DESCRIPTOR_SUFFIX:
                return ModelMessage(
                    origin,
                    problem=f"{origin}: a model file must be in a folder "
                    f"named by its data type, or be a {DESCRIPTOR_SUFFIX} file",
                )
            signature = _sidecar(path)
            payload = model_message_of(path, signed=signature is not None)
            return ModelMessage(origin, payload=payload, signature=signature)
        except DescriptorError as err:
            return ModelMessage(origin, problem=str(err))
        except OSError as err:
            return ModelMessage(origin, problem=f"{origin}: cannot be read: {err}")

    def _too_large(self, path: Path, origin: str) -> ModelMessage | None:
        """A rejection of a file over the message size limit, read no further."""
        limit = self._max_message_bytes
        if limit is None or not path.is_file() or (size := path.stat().st_size) <= limit:
            return None
        return ModelMessage(
            origin,
            problem=f"{origin}: {size} bytes, over the model message limit of {limit} bytes "
            "(serving.security.max_model_message_bytes); not read",
            problem_kind=ModelTooLargeError,
        )


def _not_a_model(path: Path, origin: str) -> str | None:
    """Why ``path`` (in a key's folder) is not a model, or ``None`` if it is one."""
    if path.is_dir():
        if not (path / SAVED_MODEL_FILE).is_file():
            return f"{origin}: a folder here must be a SavedModel (holding {SAVED_MODEL_FILE})"
        return None
    if path.suffix.lower() not in MODEL_TYPES_BY_SUFFIX:
        known = ", ".join(sorted([*MODEL_TYPES_BY_SUFFIX, DESCRIPTOR_SUFFIX]))
        return (
            f"{origin}: unknown model file type {path.suffix or '(no suffix)'!r} (known: {known})"
        )
    if path.stat().st_size == 0:
        return f"{origin}: the file is empty"
    return None


def model_message_of(path: Path, *, signed: bool = False) -> bytes:
    """The model message a models folder makes of ``path``: a ``.desc`` file's bytes, or a
    descriptor of the model file (or SavedModel folder) named after it, for the data type named
    by its folder. ``signed``: a SavedModel folder's message declares its digest.

    It depends only on the folder's and file's names and the file's bytes (a SavedModel
    folder's message names its absolute path), so ``streamserve sign`` signs exactly what the
    folder later sends. :class:`DescriptorError` if ``path`` is not a model.
    """
    if path.is_file() and path.suffix == DESCRIPTOR_SUFFIX:
        return path.read_bytes()
    problem = _not_a_model(path, f"{path.parent.name}/{path.name}")
    if problem is not None:
        raise DescriptorError(problem)
    key, origin = path.parent.name, f"{path.parent.name}/{path.name}"
    description = f"{origin} from the models directory"
    if path.is_dir():
        descriptor = ModelDescriptor(
            name=path.name,
            data_type=key,
            description=description,
            model_type=ModelType.TENSORFLOWSAVED,
            location=str(path.resolve()),
            sha256=path_digest(path) if signed else "",
        )
    else:
        descriptor = ModelDescriptor(
            name=path.stem,
            data_type=key,
            description=description,
            model_type=MODEL_TYPES_BY_SUFFIX[path.suffix.lower()],
            data=path.read_bytes(),
        )
    return encode_descriptor(descriptor)


def sidecar_path(path: Path) -> Path:
    """Where the signature of the model at ``path`` is kept."""
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def _sidecar(path: Path) -> bytes | None:
    try:
        with sidecar_path(path).open("rb") as sidecar:
            # a signature is short: more than this is not one, and is not read whole
            return sidecar.read(MAX_SIGNATURE_TEXT_BYTES + 1)
    except FileNotFoundError:
        return None


def _is_entry(path: Path) -> bool:
    return not path.name.startswith(".") and not path.name.endswith(SIGNATURE_SUFFIX)


def _stamp(path: Path) -> Stamp | None:
    try:
        if path.is_dir():
            files = [p.stat() for p in path.rglob("*") if p.is_file()]
            own = (sum(s.st_size for s in files), max((s.st_mtime_ns for s in files), default=0))
        else:
            stat = path.stat()
            own = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        return None  # removed between listing and stat: the next scan sees what is there
    try:
        sidecar = sidecar_path(path).stat()
    except OSError:
        return (*own, -1, -1)
    return (*own, sidecar.st_size, sidecar.st_mtime_ns)


def _utf8(name: str) -> bool:
    """Whether a file name read from the disk is UTF-8 (else Python holds its bytes as
    surrogate escapes, which no UTF-8 string can carry)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True
