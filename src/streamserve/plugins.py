"""Named extensions: built-ins by name, and those of outside packages by entry point.

Codecs and runtimes are chosen by name in the settings. A built-in is a lazy ``module:attr``
reference, imported only when used; an outside package registers an entry point in the
extension's group, whose name is the extension's name and whose value is a ``module:attr``.
Entry points are read when an extension is looked up, never at import.

Built-in names are reserved: a plug-in registered under one is never loaded (looking the name up
logs a warning), so a name in the settings means the same thing whatever else is installed; a
plug-in that improves on a built-in takes a name of its own, which the operator opts into.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from streamserve.errors import ConfigurationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NamedPlugins:
    """The extensions of one kind (``kind``: "codec", "runtime") and their entry-point group."""

    kind: str
    group: str
    builtins: Mapping[str, str]
    setting: str  # where the name is set, for messages: "codec.format, --codec"

    def names(self) -> list[str]:
        """Every name :meth:`load` accepts: the built-ins, then the installed plug-ins'."""
        plugins = {entry.name for entry in entry_points(group=self.group)}
        return [*self.builtins, *sorted(plugins.difference(self.builtins))]

    def load(self, name: str) -> tuple[object, str]:
        """The object ``name`` refers to, and a description of where it comes from (for
        messages); :class:`ConfigurationError` if it is unknown or cannot be imported."""
        if name in self.builtins:
            self._warn_shadowed(name)
            reference = self.builtins[name]
            module_name, _, attribute = reference.partition(":")
            return getattr(importlib.import_module(module_name), attribute), f"{self.kind} {name!r}"
        plugin = self._plugin(name)
        where = f"{self.kind} plug-in {name!r} ({origin(plugin)})"
        try:
            return plugin.load(), where
        except Exception as err:
            raise ConfigurationError(f"{where} cannot be imported: {reason(err)}") from err

    def _warn_shadowed(self, name: str) -> None:
        for shadowed in entry_points(group=self.group, name=name):
            log.warning(
                "%s plug-in %r (%s) is ignored: %r is a built-in %s's name",
                self.kind,
                name,
                origin(shadowed),
                name,
                self.kind,
            )

    def _plugin(self, name: str) -> EntryPoint:
        """The entry point of ``name``; more than one (with different values) is an error."""
        found = {entry.value: entry for entry in entry_points(group=self.group, name=name)}
        if not found:
            known = self.names()
            listed = f"the known {self.kind}s are {', '.join(known)}"
            raise ConfigurationError(
                f"unknown {self.kind} {name!r} ({self.setting}): "
                f"{listed if known else f'no {self.kind} is installed'}; an outside package "
                f"adds one through the {self.group!r} entry-point group"
            )
        if len(found) > 1:
            raise ConfigurationError(
                f"{self.kind} {name!r} is registered by {len(found)} plug-ins: "
                f"{'; '.join(map(origin, found.values()))}; uninstall all but one"
            )
        return next(iter(found.values()))


def origin(entry: EntryPoint) -> str:
    """``module:attr from distribution version``, as far as it is known."""
    dist = entry.dist
    return f"{entry.value} from {dist.name} {dist.version}" if dist else entry.value


def reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"
