"""A models directory, scanned for new and changed models.

What it takes:

* ``*.desc`` files: serialized ModelDescriptor messages, used as they are;
* ``KEY/NAME.EXT`` files: a model for data type ``KEY``, its type from the extension
  (``.pb`` TENSORFLOW frozen graph, ``.pmml`` PMML, ``.onnx`` ONNX, ``.desc`` a descriptor);
* ``KEY/NAME/`` directories holding ``saved_model.pb``: a TENSORFLOWSAVED model by location.

Files present at the first scan are taken at once; later files once their size and mtime hold
still across two scans, so a model being copied in is not read half-written. A changed file is a
new model version. Anything else in the directory is reported once as a rejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor

MODEL_TYPES_BY_SUFFIX = {
    ".pb": ModelType.TENSORFLOW,
    ".pmml": ModelType.PMML,
    ".onnx": ModelType.ONNX,
}
DESCRIPTOR_SUFFIX = ".desc"
SAVED_MODEL_FILE = "saved_model.pb"


@dataclass(frozen=True)
class ModelMessage:
    """A model message to submit (``payload``) or a file that is not one (``problem``)."""

    origin: str
    payload: bytes | None = None
    problem: str = ""


Signature = tuple[int, int]  # (size, mtime_ns)


class ModelDirectory:
    """A watched folder of models for the embedded runtime: ``<key>/<model file>`` or
    descriptor files; each new or changed file becomes one model message."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._published: dict[Path, Signature] = {}
        self._candidates: dict[Path, Signature] = {}
        self._first_scan = True

    def poll(self) -> list[ModelMessage]:
        """Messages for models that are new or changed since the last scan, in path order."""
        messages: list[ModelMessage] = []
        for path in self._entries():
            signature = _signature(path)
            if signature is None or self._published.get(path) == signature:
                continue
            if not self._first_scan and self._candidates.get(path) != signature:
                self._candidates[path] = signature  # seen once: wait for it to hold still
                continue
            self._published[path] = signature
            self._candidates.pop(path, None)
            messages.append(self._message(path))
        self._first_scan = False
        return messages

    def _entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        entries = [p for p in self.root.iterdir() if p.is_file() and not p.name.startswith(".")]
        for key_dir in (
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            entries.extend(p for p in key_dir.iterdir() if not p.name.startswith("."))
        return sorted(entries)

    def _message(self, path: Path) -> ModelMessage:
        origin = str(path.relative_to(self.root))
        try:
            if path.is_file() and path.suffix == DESCRIPTOR_SUFFIX:
                return ModelMessage(origin, payload=path.read_bytes())
            if path.parent == self.root:
                return ModelMessage(
                    origin,
                    problem=f"{origin}: a model file must be in a folder "
                    f"named by its data type, or be a {DESCRIPTOR_SUFFIX} file",
                )
            return self._model_file_message(path, origin)
        except OSError as err:
            return ModelMessage(origin, problem=f"{origin}: cannot be read: {err}")

    def _model_file_message(self, path: Path, origin: str) -> ModelMessage:
        if path.is_dir():
            if not (path / SAVED_MODEL_FILE).is_file():
                return ModelMessage(
                    origin,
                    problem=f"{origin}: a folder here must be a SavedModel "
                    f"(holding {SAVED_MODEL_FILE})",
                )
            return _descriptor_message(
                path, origin, ModelType.TENSORFLOWSAVED, location=str(path.resolve())
            )
        model_type = MODEL_TYPES_BY_SUFFIX.get(path.suffix.lower())
        if model_type is None:
            known = ", ".join(sorted([*MODEL_TYPES_BY_SUFFIX, DESCRIPTOR_SUFFIX]))
            return ModelMessage(
                origin,
                problem=f"{origin}: unknown model file type "
                f"{path.suffix or '(no suffix)'!r} (known: {known})",
            )
        data = path.read_bytes()
        if not data:
            return ModelMessage(origin, problem=f"{origin}: the file is empty")
        return _descriptor_message(path, origin, model_type, data=data)


def _descriptor_message(
    path: Path,
    origin: str,
    model_type: ModelType,
    *,
    data: bytes | None = None,
    location: str | None = None,
) -> ModelMessage:
    """A model named after its file, for the data type named by its folder."""
    descriptor = ModelDescriptor(
        name=path.stem if path.is_file() else path.name,
        data_type=path.parent.name,
        description=f"{origin} from the models directory",
        model_type=model_type,
        data=data,
        location=location,
    )
    return ModelMessage(origin, payload=encode_descriptor(descriptor))


def _signature(path: Path) -> Signature | None:
    try:
        if path.is_dir():
            files = [p.stat() for p in path.rglob("*") if p.is_file()]
            return sum(s.st_size for s in files), max((s.st_mtime_ns for s in files), default=0)
        stat = path.stat()
    except OSError:
        return None  # removed between listing and stat: the next scan sees what is there
    return stat.st_size, stat.st_mtime_ns
