"""The codec registry: built-in names, plug-ins through the ``streamserve.codecs`` entry-point
group (real dist-info folders on ``sys.path``, no patching), and every way a name can fail."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from codec_plugins import install_codecs, install_packed_floats
from plugins import on_sys_path

from streamserve.codecs.base import Framing
from streamserve.codecs.json import JsonCodec
from streamserve.codecs.registry import BUILTIN_CODECS, build_codec, codec_names
from streamserve.errors import ConfigurationError
from streamserve.settings import CodecSettings, load_settings


@pytest.mark.parametrize(
    ("name", "framing"),
    [
        ("json", Framing.LINES),
        ("csv", Framing.LINES),
        ("wine-csv", Framing.LINES),
        ("wine-protobuf", Framing.LENGTH_DELIMITED),
    ],
)
def test_each_builtin_codec_declares_its_framing(name: str, framing: Framing) -> None:
    codec = build_codec(CodecSettings(format=name, csv_columns=["dataType", "x"]))
    assert codec.framing is framing


def test_every_builtin_codec_is_tested_for_its_framing() -> None:
    assert set(BUILTIN_CODECS) == {"json", "csv", "wine-csv", "wine-protobuf"}


def test_an_unknown_codec_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as refused:
        build_codec(CodecSettings(format="avro"))
    message = str(refused.value)
    assert "unknown codec 'avro'" in message
    assert "json, csv, wine-protobuf, wine-csv" in message
    assert "'streamserve.codecs' entry-point group" in message


def test_a_plugin_codec_is_built_by_name_with_its_own_options(tmp_path: Path) -> None:
    with on_sys_path(install_packed_floats(tmp_path / "site")):
        assert "packed-floats" in codec_names()
        codec = build_codec(CodecSettings(format="packed-floats", options={"width": 2}))
    assert (codec.name, codec.framing) == ("packed-floats", Framing.LENGTH_DELIMITED)
    assert type(codec).__module__ == "packed_floats_codec"


@pytest.mark.parametrize(
    ("modules", "value", "reason"),
    [
        ({}, "absent_module:build", "ModuleNotFoundError: No module named 'absent_module'"),
        (
            {"licensed_codec": "raise RuntimeError('no licence key')\n"},
            "licensed_codec:build",
            "RuntimeError: no licence key",
        ),
        ({"empty_codec": ""}, "empty_codec:build", "AttributeError"),
    ],
)
def test_a_plugin_that_cannot_be_imported_is_named_with_the_reason(
    tmp_path: Path, modules: dict[str, str], value: str, reason: str
) -> None:
    site = install_codecs(tmp_path / "site", "broken-codec", modules, {"broken": value})
    with on_sys_path(site), pytest.raises(ConfigurationError) as refused:
        build_codec(CodecSettings(format="broken"))
    message = str(refused.value)
    assert f"codec plug-in 'broken' ({value} from broken-codec 0.1) cannot be imported" in message
    assert reason in message
    assert refused.value.__cause__ is not None


def test_a_plugin_that_fails_to_build_is_named_with_the_reason(tmp_path: Path) -> None:
    with (
        on_sys_path(install_packed_floats(tmp_path / "site")),
        pytest.raises(ConfigurationError) as refused,
    ):
        build_codec(CodecSettings(format="packed-floats"))  # no width option
    assert "codec plug-in 'packed-floats' (packed_floats_codec:build from packed-floats-codec" in (
        str(refused.value)
    )
    assert "failed to build its codec: KeyError: 'width'" in str(refused.value)
    assert isinstance(refused.value.__cause__, KeyError)


def test_a_plugin_that_builds_something_else_than_a_codec_is_refused(tmp_path: Path) -> None:
    module = """
class Frameless:
    name = "frameless"

    def __init__(self, settings): ...

    def decode(self, records): ...
"""
    site = install_codecs(
        tmp_path / "site",
        "frameless-codec",
        {"frameless": module},
        {"frameless": "frameless:Frameless"},
    )
    with on_sys_path(site), pytest.raises(ConfigurationError) as refused:
        build_codec(CodecSettings(format="frameless"))
    assert "built a Frameless, which is not a codec: it lacks a framing" in str(refused.value)


def test_a_builtin_name_wins_over_a_plugin_of_that_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = install_codecs(tmp_path / "site", "json-hijack", {}, {"json": "hijack:build"})
    with on_sys_path(site), caplog.at_level(logging.WARNING):
        codec = build_codec(CodecSettings(format="json"))
    assert isinstance(codec, JsonCodec)
    assert "codec plug-in 'json' (hijack:build from json-hijack 0.1) is ignored" in caplog.text


def test_two_plugins_under_one_name_are_refused_naming_both(tmp_path: Path) -> None:
    site = install_codecs(tmp_path / "site", "one-codec", {}, {"twin": "one:build"})
    install_codecs(site, "other-codec", {}, {"twin": "other:build"})
    with on_sys_path(site), pytest.raises(ConfigurationError) as refused:
        build_codec(CodecSettings(format="twin"))
    message = str(refused.value)
    assert "codec 'twin' is registered by 2 plug-ins" in message
    assert "one:build from one-codec 0.1" in message
    assert "other:build from other-codec 0.1" in message


def test_builtin_codecs_refuse_options_instead_of_ignoring_them() -> None:
    with pytest.raises(ConfigurationError, match=r"codec 'json' takes no options \(got widht\)"):
        build_codec(CodecSettings(format="json", options={"widht": 3}))


def test_settings_take_any_codec_name_and_its_options_from_a_file(tmp_path: Path) -> None:
    config = tmp_path / "streamserve.toml"
    config.write_text('[codec]\nformat = "avro"\n[codec.options]\nregistry = "http://sr"\n')
    codec = load_settings(config).codec
    assert (codec.format, codec.options) == ("avro", {"registry": "http://sr"})
    with pytest.raises(ConfigurationError, match="unknown codec 'avro'"):
        build_codec(codec)
