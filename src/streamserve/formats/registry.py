"""Which factory builds which model type.

Built-in formats are lazy ``module:Attr`` references, imported only when a model of their type
first arrives (``import tensorflow`` alone costs seconds). Outside packages add formats through
the ``streamserve.model_factories`` entry-point group: the entry-point name is the model type
(an enum name such as ``ONNX`` or a number such as ``100``), the value a factory class taking a
:class:`FactoryContext`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points

from streamserve.descriptor import ModelType
from streamserve.descriptor.model_descriptor import model_type_label
from streamserve.errors import ConfigurationError, ModelLoadError
from streamserve.formats.base import FactoryContext, ModelFactory

ENTRY_POINT_GROUP = "streamserve.model_factories"

BUILTIN_FACTORIES: Mapping[int, str] = {
    ModelType.TENSORFLOW: "streamserve.formats.tensorflow:FrozenGraphFactory",
    ModelType.TENSORFLOWSAVED: "streamserve.formats.tensorflow:SavedModelFactory",
    ModelType.PMML: "streamserve.formats.pmml:PmmlFactory",
    ModelType.ONNX: "streamserve.formats.onnx:OnnxFactory",
    ModelType.PYTORCH: "streamserve.formats.torch:TorchFactory",
    ModelType.SKLEARN: "streamserve.formats.sklearn:SklearnFactory",
    ModelType.XGBOOST: "streamserve.formats.xgboost:XGBoostFactory",
    ModelType.LIGHTGBM: "streamserve.formats.lightgbm:LightGBMFactory",
}

FactoryClass = Callable[[FactoryContext], ModelFactory]


def parse_model_type(name: str) -> int:
    """``ONNX`` -> 3, ``100`` -> 100; anything else is a configuration error."""
    if name.isdigit():
        return int(name)
    try:
        return int(ModelType[name.upper()])
    except KeyError as err:
        raise ConfigurationError(
            f"model factory entry point {name!r}: not a model type name or number"
        ) from err


class FactoryRegistry:
    """Resolves model types to factory instances, importing each factory once, on first use."""

    def __init__(
        self,
        context: FactoryContext,
        references: Mapping[int, str] | None = None,
        *,
        discover_plugins: bool = True,
    ) -> None:
        self._context = context
        self._references: dict[int, str | FactoryClass] = dict(
            BUILTIN_FACTORIES if references is None else references
        )
        if discover_plugins:
            for entry in entry_points(group=ENTRY_POINT_GROUP):
                self._references[parse_model_type(entry.name)] = entry.value
        self._instances: dict[int, ModelFactory] = {}
        self._lock = threading.Lock()

    def register(self, model_type: int, factory: str | FactoryClass) -> None:
        """Adds or replaces the factory of ``model_type`` (a ``module:Attr`` or a class)."""
        with self._lock:
            self._references[model_type] = factory
            self._instances.pop(model_type, None)

    @property
    def context(self) -> FactoryContext:
        return self._context

    @property
    def model_types(self) -> list[int]:
        return sorted(self._references)

    def factory_for(self, model_type: int) -> ModelFactory:
        """The factory of ``model_type``; :class:`ModelLoadError` if none is registered."""
        with self._lock:
            if model_type in self._instances:
                return self._instances[model_type]
            reference = self._references.get(model_type)
            if reference is None:
                known = ", ".join(model_type_label(t) for t in sorted(self._references))
                raise ModelLoadError(
                    f"unknown model type {model_type_label(model_type)}: no factory is registered "
                    f"for it (known: {known})"
                )
            factory_class = (
                _import_reference(reference) if isinstance(reference, str) else reference
            )
            self._instances[model_type] = factory = factory_class(self._context)
            return factory


def _import_reference(reference: str) -> FactoryClass:
    module_name, _, attribute = reference.partition(":")
    try:
        factory_class: FactoryClass = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ModelLoadError(f"cannot import model factory {reference!r}: {err}") from err
    return factory_class
