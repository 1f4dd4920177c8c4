"""Codec plug-ins as outside packages ship them: a module plus an installed distribution's
dist-info whose ``entry_points.txt`` registers it in the ``streamserve.codecs`` group (see
:mod:`plugins`: the folder works as a site directory on ``sys.path`` or ``PYTHONPATH``)."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

from plugins import install_distribution

# A codec written against streamserve's public codec helpers only: records of ``width`` packed
# little-endian doubles (binary, so length-delimited in files), scaled by ``scale``; the key
# from the ``data-type`` header, else the topic, else the usual key rule.
PACKED_FLOATS_MODULE = """
import struct
from dataclasses import dataclass

from streamserve.codecs.base import Framing, KeyRule, batch_from_rows, decode_each
from streamserve.errors import RecordDecodeError


@dataclass(frozen=True)
class PackedFloatsCodec:
    width: int
    scale: float
    key_rule: KeyRule
    name = "packed-floats"
    framing = Framing.LENGTH_DELIMITED

    def decode(self, records):
        names = tuple(f"x{i}" for i in range(self.width))

        def decode_one(record):
            if len(record.payload) != 8 * self.width:
                raise RecordDecodeError(
                    f"packed-floats record has {len(record.payload)} bytes, "
                    f"expected {8 * self.width}"
                )
            header = dict(record.headers).get("data-type")
            key = self.key_rule.resolve(record, header.decode() if header else record.topic)
            values = struct.unpack(f"<{self.width}d", record.payload)
            return key, [value * self.scale for value in values]

        return batch_from_rows(records, names, decode_each(records, decode_one))


def build(settings):
    options = settings.options
    return PackedFloatsCodec(
        int(options["width"]), float(options.get("scale", 1.0)), KeyRule.from_settings(settings)
    )
"""


def install_codecs(
    site: Path, distribution: str, modules: Mapping[str, str], codecs: Mapping[str, str]
) -> Path:
    """The distribution ``distribution``, its ``modules`` (name -> source) and its ``codecs``
    (name -> ``module:attr``, in the ``streamserve.codecs`` group), written into ``site``."""
    return install_distribution(site, distribution, modules, {"streamserve.codecs": codecs})


def install_packed_floats(site: Path) -> Path:
    """The ``packed-floats`` codec, distribution ``packed-floats-codec``, module
    ``packed_floats_codec``."""
    return install_codecs(
        site,
        "packed-floats-codec",
        {"packed_floats_codec": PACKED_FLOATS_MODULE},
        {"packed-floats": "packed_floats_codec:build"},
    )


def packed(rows: Iterable[Iterable[float]]) -> list[bytes]:
    """Records of the ``packed-floats`` codec."""
    return [struct.pack(f"<{len(row)}d", *row) for row in map(list, rows)]


# 1.0000000000000022 packs to 0a 00 00 00 00 00 f0 3f: a newline byte, which line framing
# would cut the record at.
WITH_A_NEWLINE_BYTE: float = struct.unpack("<d", b"\n\x00\x00\x00\x00\x00\xf0?")[0]
