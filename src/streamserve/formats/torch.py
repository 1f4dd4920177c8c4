"""PyTorch models (model type PYTORCH): ``torch.export`` programs (.pt2) and TorchScript.

CPU only, inference mode, ``threads_per_model`` intra-op threads (torch's setting is
process-wide). The model takes one float32 tensor [rows, width]. Width: option ``width``, else the
exported program's input shape, else the input width of the first 2-D weight (a TorchScript
module's first layer). Option ``format`` (``export`` or ``torchscript``) skips detection.
Neither loader runs arbitrary Python. ``torch.export.load`` falls back to a full, unrestricted
unpickling of an archive member that its weights-only load refuses, so every pickled member of
an export archive is loaded weights-only first, and an archive with any other pickle is refused
before torch reads it. TorchScript runs TorchScript code.

torch imports triton (its GPU kernel compiler) whenever triton is installed, as it is beside
PyPI's Linux wheels; loaded after TensorFlow, triton's LLVM crashes the process (seen with
tensorflow-cpu 2.21 and triton 3.7). CPU inference never uses it, so :func:`import_torch` keeps
triton from loading in a process that serves PyTorch models.
"""

from __future__ import annotations

import importlib.abc
import io
import json
import posixpath
import sys
import threading
import zipfile
from typing import Any

import numpy as np

from streamserve.descriptor import OutputRule
from streamserve.errors import ModelLoadError
from streamserve.formats.base import (
    FactoryContext,
    FloatMatrix,
    InputSpec,
    LoadRequest,
    Model,
    RawOutputModel,
    import_optional,
)

_threads_lock = threading.Lock()
FORMATS = ("export", "torchscript")


class _TritonRefused(importlib.abc.MetaPathFinder):
    """Answers ``import triton`` with ModuleNotFoundError, so torch takes it as absent."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname.partition(".")[0] == "triton":
            raise ModuleNotFoundError(f"streamserve runs torch on the CPU without {fullname}")


def import_torch() -> Any:
    """torch for CPU inference, with triton kept out of the process (see the module's doc)."""
    with _threads_lock:
        if "triton" not in sys.modules and not any(
            isinstance(finder, _TritonRefused) for finder in sys.meta_path
        ):
            sys.meta_path.insert(0, _TritonRefused())
    return import_optional("torch", "for PyTorch models", "torch")


def _torch(context: FactoryContext) -> Any:
    torch = import_torch()
    with _threads_lock:
        if torch.get_num_threads() != context.threads_per_model:
            torch.set_num_threads(context.threads_per_model)
    return torch


class TorchModel(RawOutputModel):
    def __init__(self, torch: Any, module: Any, width: int, output: OutputRule, name: str) -> None:
        super().__init__(InputSpec(width=width), output, name)
        self._torch = torch
        self._module = module

    def raw_output(self, features: FloatMatrix) -> Any:
        with self._torch.inference_mode():
            raw = self._module(self._torch.from_numpy(features.astype(np.float32)))
        if isinstance(raw, tuple | list):
            raw = raw[0]
        return raw.detach().numpy()

    def close(self) -> None:
        self._module = None


class TorchFactory:
    format_name = "pytorch"

    def __init__(self, context: FactoryContext) -> None:
        self._context = context

    def load(self, request: LoadRequest) -> Model:
        torch = _torch(self._context)
        where = f"PyTorch model {request.name!r}"
        kind = request.options.get("format")
        if kind is not None and kind not in FORMATS:
            raise ModelLoadError(f"{where}: option format={kind!r} is not one of {FORMATS}")
        data = request.artifact.read_bytes()
        failures: list[str] = []
        for candidate in [kind] if kind else list(FORMATS):
            try:
                module, width = _LOADERS[candidate](torch, data)
            except Exception as err:  # noqa: BLE001 - torch raises many types for foreign bytes
                failures.append(f"as {candidate}: {err}")
                continue
            width = _width(request, width, where)
            return TorchModel(torch, module, width, request.output, request.name)
        raise ModelLoadError(
            f"{where} from {request.artifact.describe()} cannot be loaded ({'; '.join(failures)})"
        )


def _load_export(torch: Any, data: bytes) -> tuple[Any, int | None]:
    _refuse_unsafe_pickles(torch, data)
    program = torch.export.load(io.BytesIO(data))
    users = set(program.graph_signature.user_inputs)
    shapes = [
        node.meta["val"].shape
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in users
    ]
    if len(shapes) != 1:
        raise ModelLoadError(f"the program takes {len(shapes)} inputs; streamserve feeds one")
    width = shapes[0][-1] if len(shapes[0]) == 2 else None
    return program.module(), int(width) if isinstance(width, int) else None


def _refuse_unsafe_pickles(torch: Any, data: bytes) -> None:
    """Loads every pickled member of an export archive weights-only; raises if one is not."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise ModelLoadError(f"not a torch.export archive: {err}") from err
    with archive:
        for member in _pickled_members(archive):
            try:
                torch.load(io.BytesIO(archive.read(member)), weights_only=True)
            except Exception as err:  # whatever the reason, torch would unpickle it in full
                raise ModelLoadError(
                    f"archive member {member!r} is not a weights-only pickle ({err}); "
                    "torch.export.load would unpickle it without restriction: refused"
                ) from err


def _pickled_members(archive: zipfile.ZipFile) -> set[str]:
    """The members torch unpickles: ``.pt`` files (sample inputs, legacy weights) and the weights
    and constants whose payload config says ``use_pickle`` (their names carry no suffix)."""
    names = archive.namelist()
    pickled = {name for name in names if name.endswith((".pt", ".pkl"))}
    for config in (name for name in names if name.endswith("_config.json")):
        try:
            entries = json.loads(archive.read(config))["config"].values()
            folder = posixpath.dirname(config)
            pickled |= {posixpath.join(folder, e["path_name"]) for e in entries if e["use_pickle"]}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ModelLoadError(
                f"archive member {config!r} is not a payload config: {err}"
            ) from err
    return pickled


def _load_torchscript(torch: Any, data: bytes) -> tuple[Any, int | None]:
    module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    module.eval()
    weights = [p for p in module.parameters() if p.dim() == 2]
    return module, int(weights[0].shape[1]) if weights else None


_LOADERS = {"export": _load_export, "torchscript": _load_torchscript}


def _width(request: LoadRequest, found: int | None, where: str) -> int:
    declared = request.options.get("width")
    if declared is not None:
        if not declared.isdigit() or int(declared) <= 0:
            raise ModelLoadError(f"{where}: option width={declared!r} is not a positive number")
        return int(declared)
    if found is None:
        raise ModelLoadError(f"{where}: its input width is unknown; declare it in option 'width'")
    return found
