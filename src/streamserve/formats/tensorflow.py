"""TensorFlow models: TF1 frozen GraphDefs (TENSORFLOW) and SavedModels (TENSORFLOWSAVED).

TensorFlow is imported on the first TF model only (the import alone takes seconds and ~500 MB).
Its native log lines go to the ``tensorflow`` Python logger (:mod:`.native_logs`).

Frozen graph options: ``input`` (default: the graph's single Placeholder) and ``output``
(default: the last node). SavedModel options: ``signature`` (default: the first, as FLIP-23 did),
``input`` and ``output`` keys of that signature (default: the single one). A SavedModel comes
from a directory ``location`` or as inline data holding a tar or zip archive of the directory.
"""

from __future__ import annotations

import sys
import threading
from contextlib import nullcontext
from typing import Any

from streamserve.descriptor import OutputRule
from streamserve.errors import ModelLoadError
from streamserve.formats.artifact import materialize_directory
from streamserve.formats.base import (
    FactoryContext,
    FloatMatrix,
    InputSpec,
    LoadRequest,
    Model,
    RawOutputModel,
    import_optional,
)
from streamserve.formats.cache import LeasedDirectory
from streamserve.formats.native_logs import native_logs_to

_import_lock = threading.Lock()


def _tensorflow(context: FactoryContext) -> Any:
    with _import_lock:
        first = "tensorflow" not in sys.modules
        with native_logs_to("tensorflow", "TF_CPP_MIN_LOG_LEVEL") if first else nullcontext():
            tf = import_optional("tensorflow", "for TensorFlow models", "tensorflow")
            try:
                tf.config.threading.set_intra_op_parallelism_threads(context.threads_per_model)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass  # the runtime was initialized already (an earlier model): threads are set
        return tf


class TensorFlowModel(RawOutputModel):
    """A TF function of one float32 input tensor [rows, width] and one output tensor."""

    def __init__(
        self,
        tf: Any,
        function: Any,
        width: int,
        output: OutputRule,
        name: str,
        *,
        owner: Any = None,
        directory: LeasedDirectory | None = None,
    ) -> None:
        super().__init__(InputSpec(width=width), output, name)
        self._tf = tf
        self._function = function
        self._owner = owner  # a SavedModel's signatures need the loaded object alive
        # Held while the model lives: TF may read the directory after the load (assets).
        self._directory = directory

    def raw_output(self, features: FloatMatrix) -> Any:
        return self._function(self._tf.constant(features, dtype=self._tf.float32))

    def close(self) -> None:
        self._function = None
        self._owner = None
        if self._directory is not None:
            self._directory.close()
            self._directory = None


def _feature_width(shape: Any, where: str) -> int:
    dims = list(shape)
    width = dims[-1] if len(dims) >= 2 else None
    if not isinstance(width, int) or width <= 0:
        raise ModelLoadError(
            f"{where}: input shape {dims or 'unknown'} has no fixed feature "
            "width; declare it in option 'width'"
        )
    return width


def _width_option(value: str, where: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise ModelLoadError(f"{where}: option width={value!r} is not a positive whole number")
    return int(value)


class FrozenGraphFactory:
    format_name = "tensorflow-frozen-graph"

    def __init__(self, context: FactoryContext) -> None:
        self._context = context

    def load(self, request: LoadRequest) -> Model:
        tf = _tensorflow(self._context)
        where = f"TensorFlow graph {request.name!r}"
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(request.artifact.read_bytes())
        except Exception as err:  # protobuf's DecodeError, or a RuntimeWarning-raising parser
            raise ModelLoadError(
                f"{where}: {request.artifact.describe()} is not a GraphDef: {err}"
            ) from err
        input_name = request.options.get("input") or _single_placeholder(graph_def, where)
        output_name = request.options.get("output") or (
            graph_def.node[-1].name if graph_def.node else ""
        )
        try:
            wrapped = tf.compat.v1.wrap_function(
                lambda: tf.compat.v1.import_graph_def(graph_def, name=""), []
            )
            graph = wrapped.graph
            input_tensor = graph.get_tensor_by_name(f"{input_name}:0")
            function = wrapped.prune(input_tensor, graph.get_tensor_by_name(f"{output_name}:0"))
        except (ValueError, KeyError, TypeError, tf.errors.OpError) as err:
            raise ModelLoadError(
                f"{where}: cannot wire input {input_name!r} to output {output_name!r}: {err}"
            ) from err
        if "width" in request.options:
            width = _width_option(request.options["width"], where)
        else:
            width = _feature_width(_declared_shape(graph_def, input_name, input_tensor), where)
        return TensorFlowModel(tf, function, width, request.output, request.name)


def _declared_shape(graph_def: Any, input_name: str, input_tensor: Any) -> list[int | None]:
    """The input's shape: the tensor's if known, else inferred from the first MatMul's weights.

    TF1 Keras graphs often freeze their input Placeholder without a shape; the weight matrix of
    the first dense layer, ``[width, units]``, still says how wide the input is.
    """
    if input_tensor.shape.rank is not None:
        return list(input_tensor.shape.as_list())
    nodes = {node.name: node for node in graph_def.node}
    for node in graph_def.node:
        inputs = [name.split(":")[0].lstrip("^") for name in node.input]
        if node.op == "MatMul" and inputs and inputs[0] == input_name and len(inputs) > 1:
            weights = nodes.get(inputs[1])
            while weights is not None and weights.op == "Identity" and weights.input:
                weights = nodes.get(weights.input[0].split(":")[0])
            if weights is not None and weights.op == "Const":
                dims = [dim.size for dim in weights.attr["value"].tensor.tensor_shape.dim]
                if len(dims) == 2:
                    return [None, dims[0]]
    return []


def _single_placeholder(graph_def: Any, where: str) -> str:
    placeholders = [node.name for node in graph_def.node if node.op == "Placeholder"]
    if len(placeholders) != 1:
        raise ModelLoadError(
            f"{where}: has {len(placeholders)} placeholders {placeholders}; "
            "name the input in option 'input'"
        )
    return str(placeholders[0])


class SavedModelFactory:
    format_name = "tensorflow-savedmodel"

    def __init__(self, context: FactoryContext) -> None:
        self._context = context

    def load(self, request: LoadRequest) -> Model:
        tf = _tensorflow(self._context)
        where = f"TensorFlow SavedModel {request.name!r}"
        try:
            directory = materialize_directory(
                request.artifact, self._context.cache, self._context.archive_limits
            )
        except ModelLoadError as err:
            raise ModelLoadError(f"{where}: {err}") from err
        try:
            loaded = tf.saved_model.load(str(directory.path))
            signature = _pick(request.options, "signature", list(loaded.signatures.keys()), where)
            function = loaded.signatures[signature]
            input_specs = function.structured_input_signature[1]
            input_key = _pick(request.options, "input", list(input_specs), where)
            output_key = _pick(request.options, "output", list(function.structured_outputs), where)
            width = _feature_width(input_specs[input_key].shape.as_list(), where)
        except ModelLoadError:
            directory.close()
            raise
        except Exception as err:  # TF raises many types for unreadable or foreign directories
            directory.close()
            raise ModelLoadError(
                f"{where} from {request.artifact.describe()} cannot be loaded: {err}"
            ) from err

        def score(tensor: Any) -> Any:
            return function(**{input_key: tensor})[output_key]

        return TensorFlowModel(
            tf, score, width, request.output, request.name, owner=loaded, directory=directory
        )


def _pick(options: Any, option: str, available: list[str], where: str) -> str:
    chosen = options.get(option)
    if chosen is None:
        if not available:
            raise ModelLoadError(f"{where}: has no {option}")
        if option != "signature" and len(available) != 1:
            raise ModelLoadError(
                f"{where}: several {option}s {available}; choose one with option {option!r}"
            )
        return available[0]
    if chosen not in available:
        raise ModelLoadError(f"{where}: {option} {chosen!r} is not one of {available}")
    return str(chosen)
