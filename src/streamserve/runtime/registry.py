"""Which runtime a name means: ``embedded``, ``kafka``, or an outside package's.

``runtime`` in the settings (``--runtime`` on the command line) names it. An outside package
adds a runtime through the ``streamserve.runtimes`` entry-point group: the name is the runtime's,
the value a ``module:attr`` factory taking a :class:`RuntimeContext` and returning a
:class:`~streamserve.runtime.base.Runtime` (usually a
:class:`~streamserve.runtime.base.BatchLoop` over a transport of its own). It reads its own
settings from ``settings.runtime_options``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import cast

from streamserve.codecs.base import Codec
from streamserve.errors import ConfigurationError, StreamserveError
from streamserve.plugins import NamedPlugins, reason
from streamserve.runtime.base import Runtime
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEvent
from streamserve.settings import Settings

RUNTIMES = NamedPlugins(
    kind="runtime",
    group="streamserve.runtimes",
    builtins={
        "embedded": "streamserve.runtime.embedded:embedded_runtime",
        "kafka": "streamserve.runtime.kafka:kafka_runtime",
    },
    setting="runtime, --runtime",
)


@dataclass(frozen=True)
class RuntimeContext:
    """What a runtime factory is given. ``resources`` closes, after the run, whatever the
    runtime opened (files, connections)."""

    settings: Settings
    core: ServingCore
    codec: Codec
    resources: ExitStack
    on_event: Callable[[ModelEvent], None] | None = None


RuntimeFactory = Callable[[RuntimeContext], Runtime]


def build_runtime(name: str, context: RuntimeContext) -> Runtime:
    """The runtime ``name`` names, built for ``context``; :class:`ConfigurationError` if it is
    unknown, given options it does not take, or its factory fails (naming the plug-in)."""
    factory, where = RUNTIMES.load(name)
    builtin = name in RUNTIMES.builtins
    if builtin and context.settings.runtime_options:
        options = ", ".join(sorted(context.settings.runtime_options))
        raise ConfigurationError(
            f"runtime {name!r} takes no runtime_options (got {options}): they are for plug-in "
            f"runtimes; the {name} runtime's settings are its own section, [{name}]"
        )
    try:
        runtime = cast(RuntimeFactory, factory)(context)
    except Exception as err:  # outside code may fail in any way; say which plug-in
        if builtin and isinstance(err, StreamserveError):
            raise  # streamserve's own messages say what and where already
        raise ConfigurationError(f"{where} failed to build its runtime: {reason(err)}") from err
    missing = [
        attribute
        for attribute in ("run", "stop", "ready", "consumer_lag")
        if not hasattr(runtime, attribute)
    ]
    if missing:
        raise ConfigurationError(
            f"{where} built a {type(runtime).__name__}, which is not a runtime: it lacks "
            f"{', '.join(missing)}"
        )
    return runtime


def runtime_names() -> list[str]:
    return RUNTIMES.names()
