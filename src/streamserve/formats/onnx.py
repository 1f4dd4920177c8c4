"""ONNX models through onnxruntime (model type ONNX).

Inputs: one 2-D tensor is a positional model (features in codec order; the ``feature_names``
option, which every format takes, names its columns); several inputs of one column each are
named by their input names. Output: option ``output`` names it, else the first output.
Each session runs with ``threads_per_model`` intra-op threads (default 1) and no memory arena.
"""

from __future__ import annotations

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

_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _onnxruntime() -> Any:
    return import_optional("onnxruntime", "for ONNX models", "onnx")


class OnnxModel(RawOutputModel):
    def __init__(
        self, session: Any, output_name: str, inputs: InputSpec, output: OutputRule, name: str
    ) -> None:
        super().__init__(inputs, output, name)
        self._session = session
        self._output_name = output_name
        nodes = session.get_inputs()
        self._input_names = [node.name for node in nodes]
        self._dtypes = [_input_dtype(node, name) for node in nodes]

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
        (raw,) = self._session.run([self._output_name], feeds)
        return raw

    def close(self) -> None:
        self._session = None


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
        try:
            session = ort.InferenceSession(
                request.artifact.read_bytes(), options, providers=["CPUExecutionProvider"]
            )
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
        return OnnxModel(session, output_name, inputs, request.output, request.name)
