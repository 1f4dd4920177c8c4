"""ONNX models through onnxruntime (model type ONNX).

Inputs: one 2-D tensor is a positional model (features in codec order; the ``feature_names``
option, which every format takes, names its columns); several inputs of one column each are
named by their input names. Output: option ``output`` names it, else the first output.
Each session runs with ``threads_per_model`` intra-op threads (default 1) and no memory arena.

Option ``graph_optimization`` (``disabled``, ``basic``, ``extended``, ``all``) sets
onnxruntime's graph optimization level. By default a small model (at most
``SMALL_MODEL_BYTES``) is optimized at ``basic``, any other at ``all``: on a one-layer model the
extended fusions score no faster (1 row or 1,024) and give the same values, but cost 30 KiB of
RSS per session (74 against 41 KiB) and a third of its instantiation time, which is what
thousands of per-key models are made of (benchmarks, scenario 5).
"""

from __future__ import annotations

from collections.abc import Mapping
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
    apply_output_rule,
    import_optional,
)

SMALL_MODEL_BYTES = 64 * 1024
GRAPH_OPTIMIZATION_OPTION = "graph_optimization"
_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _onnxruntime() -> Any:
    return import_optional("onnxruntime", "for ONNX models", "onnx")


class OnnxModel(RawOutputModel):
    """An onnxruntime session scoring one output.

    It calls the session's native ``run`` directly when onnxruntime exposes it (its Python
    ``run`` checks, on every call, that the feeds name every input and that no feed is a device
    value of another session: true by construction here), which is a third of a one-row call on
    a small model; the public ``run`` otherwise."""

    def __init__(
        self,
        session: Any,
        output_name: str,
        inputs: InputSpec,
        output: OutputRule,
        name: str,
        run_options: Any = None,
    ) -> None:
        super().__init__(inputs, output, name)
        self._run_options = run_options  # shared, read-only: spares a default one per call
        self._session = session
        self._outputs = [output_name]
        nodes = session.get_inputs()
        self._input_names = [node.name for node in nodes]
        self._dtypes = [_input_dtype(node, name) for node in nodes]
        run = getattr(getattr(session, "_sess", None), "run", None)
        self._run: Any = run if callable(run) else None

    def score_batch(self, features: FloatMatrix) -> np.ndarray:
        raw = self.raw_output(features)
        # the common output, one column per row under the AUTO rule: apply_output_rule's answer
        # (that column) without its general steps, a tenth of a one-row call
        if (
            self._output is OutputRule.AUTO
            and type(raw) is np.ndarray
            and raw.ndim == 2
            and raw.shape[1] == 1
        ):
            return raw[:, 0]
        return apply_output_rule(self._output, np.asarray(raw), model=self._name)

    def raw_output(self, features: FloatMatrix) -> Any:
        if len(self._input_names) == 1:
            feeds = {self._input_names[0]: features.astype(self._dtypes[0], copy=False)}
        else:
            feeds = {
                name: features[:, [column]].astype(dtype, copy=False)
                for column, (name, dtype) in enumerate(
                    zip(self._input_names, self._dtypes, strict=True)
                )
            }
        if self._run is not None:
            return self._run(self._outputs, feeds, self._run_options)[0]
        (raw,) = self._session.run(self._outputs, feeds, self._run_options)
        return raw

    def close(self) -> None:
        self._session = self._run = None


def optimization_level(options: Mapping[str, str], size_bytes: int, *, model: str) -> str:
    """The graph optimization level (a key of ``_LEVELS``) of a model of ``size_bytes`` bytes:
    its ``graph_optimization`` option, else ``basic`` for a small model and ``all`` for others."""
    default = "basic" if size_bytes <= SMALL_MODEL_BYTES else "all"
    level = options.get(GRAPH_OPTIMIZATION_OPTION, default)
    if level not in _LEVELS:
        raise ModelLoadError(
            f"ONNX model {model!r}: option {GRAPH_OPTIMIZATION_OPTION}={level!r} is not one of "
            f"{', '.join(_LEVELS)}"
        )
    return level


def _input_dtype(node: Any, model: str) -> type[np.generic]:
    dtype = _NUMPY_TYPES.get(node.type)
    if dtype is None:
        raise ModelLoadError(
            f"ONNX model {model!r}: input {node.name!r} has type {node.type}, "
            f"not a numeric tensor ({', '.join(_NUMPY_TYPES)})"
        )
    return dtype


def _input_spec(inputs: list[Any], model: str) -> InputSpec:
    widths = [node.shape[-1] if len(node.shape) >= 2 else 1 for node in inputs]
    if len(inputs) == 1:
        width = widths[0]
        if not isinstance(width, int):
            raise ModelLoadError(
                f"ONNX model {model!r}: input {inputs[0].name!r} has no fixed "
                f"feature width (shape {inputs[0].shape})"
            )
        return InputSpec(width=width)
    if any(width != 1 for width in widths):
        raise ModelLoadError(
            f"ONNX model {model!r}: several inputs must each be one column "
            f"wide; shapes {[node.shape for node in inputs]}"
        )
    return InputSpec(width=len(inputs), names=tuple(node.name for node in inputs))


class OnnxFactory:
    format_name = "onnx"

    def __init__(self, context: FactoryContext) -> None:
        self._context = context
        self._shared_run_options: Any = None

    def load(self, request: LoadRequest) -> Model:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._context.threads_per_model
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # No per-session memory arena: small models score as fast without one, and an arena per
        # session multiplies memory by the number of models held (and keeps what churned
        # sessions took). The benchmarks' "many" scenario measures it.
        options.enable_cpu_mem_arena = False
        data = request.artifact.read_bytes()
        level = optimization_level(request.options, len(data), model=request.name)
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
        try:
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except ModelLoadError:
            raise
        except Exception as err:  # onnxruntime raises its own, unexported exception types
            raise ModelLoadError(
                f"ONNX model {request.name!r} from {request.artifact.describe()} "
                f"cannot be loaded: {err}"
            ) from err
        outputs = [node.name for node in session.get_outputs()]
        if not outputs:
            raise ModelLoadError(f"ONNX model {request.name!r} declares no outputs")
        output_name = request.options.get("output", outputs[0])
        if output_name not in outputs:
            raise ModelLoadError(
                f"ONNX model {request.name!r}: option output={output_name!r} is "
                f"not one of its outputs {outputs}"
            )
        inputs = _input_spec(session.get_inputs(), request.name)
        return OnnxModel(
            session, output_name, inputs, request.output, request.name, self._run_options(ort)
        )

    def _run_options(self, ort: Any) -> Any:
        """One ``RunOptions`` for every model of this factory (onnxruntime only reads it)."""
        if self._shared_run_options is None:
            self._shared_run_options = ort.RunOptions()
        return self._shared_run_options
