"""Which codec a name means: the built-in codecs, and those of outside packages.

``codec.format`` in the settings (``--codec`` on the command line) names the codec.
Built-in codecs are ``module:function`` references, imported only when built. Outside packages
add codecs through the ``streamserve.codecs`` entry-point group: the entry-point name is the
codec name, the value a ``module:attr`` factory that takes the :class:`CodecSettings` and
returns a :class:`Codec` (a plug-in reads its own settings from ``settings.options``). Entry
points are read when a codec is built, never at import (:class:`~streamserve.plugins.NamedPlugins`,
the shape every named extension shares).

Built-in names are reserved: a plug-in registered under one is never loaded (building that name
logs a warning), so ``format = "json"`` means the same codec whatever else is installed; a
plug-in that improves on a built-in takes a name of its own, which the operator opts into.
(Model formats differ: there a plug-in replaces the factory of a model type, because the
publisher, not the operator, picks the type.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

from streamserve.codecs.base import Codec, Framing
from streamserve.errors import ConfigurationError
from streamserve.plugins import NamedPlugins, reason
from streamserve.settings import CodecSettings

ENTRY_POINT_GROUP = "streamserve.codecs"

BUILTIN_CODECS: Mapping[str, str] = {
    "json": "streamserve.codecs.json:build_json_codec",
    "csv": "streamserve.codecs.csv:build_csv_codec",
    "wine-protobuf": "streamserve.codecs.protobuf:build_wine_record_codec",
    "wine-csv": "streamserve.codecs.csv:build_wine_csv_codec",
}

CODECS = NamedPlugins(
    kind="codec", group=ENTRY_POINT_GROUP, builtins=BUILTIN_CODECS, setting="codec.format, --codec"
)

CodecFactory = Callable[[CodecSettings], Codec]


def build_codec(settings: CodecSettings) -> Codec:
    """The codec ``settings.format`` names, built from ``settings``.

    Raises :class:`ConfigurationError` for an unknown name, a plug-in that cannot be imported or
    fails to build (whatever it raises, named as the plug-in's), or a factory that returns
    something that is not a codec. A built-in's own ConfigurationError passes through."""
    name = settings.format
    if name in BUILTIN_CODECS and settings.options:
        raise ConfigurationError(
            f"codec {name!r} takes no options (got {', '.join(sorted(settings.options))}): "
            "codec.options are for plug-in codecs"
        )
    factory, where = CODECS.load(name)
    if name in BUILTIN_CODECS:
        return _checked(cast(CodecFactory, factory)(settings), where)
    try:
        codec = cast(CodecFactory, factory)(settings)
    except Exception as err:  # outside code may fail in any way
        raise ConfigurationError(f"{where} failed to build its codec: {reason(err)}") from err
    return _checked(codec, where)


def codec_names() -> list[str]:
    """Every name :func:`build_codec` accepts: the built-ins, then the installed plug-ins'."""
    return CODECS.names()


def _checked(codec: object, where: str) -> Codec:
    """``codec`` if it looks like a :class:`Codec`; a ConfigurationError saying what it lacks."""
    missing = [
        what
        for what, present in (
            ("a str name", isinstance(getattr(codec, "name", None), str)),
            ("a framing (a streamserve.codecs.base.Framing)", _has_framing(codec)),
            ("a decode(records) method", callable(getattr(codec, "decode", None))),
        )
        if not present
    ]
    if missing:
        raise ConfigurationError(
            f"{where} built a {type(codec).__name__}, which is not a codec: "
            f"it lacks {' and '.join(missing)}"
        )
    return cast(Codec, codec)


def _has_framing(codec: object) -> bool:
    return isinstance(getattr(codec, "framing", None), Framing)
