"""Named extensions (plugins.py, runtime/registry.py, serving/routing.py) and the settings that
pick them: a plug-in that fails to build is named in the message; a built-in runtime refuses
options meant for plug-ins, as a built-in codec does."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from plugins import install_distribution, on_sys_path

from streamserve.codecs.json import JsonCodec
from streamserve.errors import ConfigurationError, StreamserveError
from streamserve.runtime.registry import RuntimeContext, build_runtime
from streamserve.serving.core import ServingCore
from streamserve.serving.routing import load_router
from streamserve.settings import ServingSettings, Settings

FAILING_PLUGINS = """
from streamserve.errors import ConfigurationError, KeyNotFoundError


def runtime(context):
    raise ConfigurationError("option width must be positive")


def router(options):
    raise KeyNotFoundError("no such target")
"""


@pytest.fixture
def failing_site(tmp_path: Path) -> Path:
    return install_distribution(
        tmp_path / "site",
        "failing-plugins",
        {"failing_plugins": FAILING_PLUGINS},
        {
            "streamserve.runtimes": {"failing-runtime": "failing_plugins:runtime"},
            "streamserve.routers": {"failing-router": "failing_plugins:router"},
        },
    )


def test_a_runtime_plugin_failing_to_build_is_named_in_the_message(failing_site: Path) -> None:
    with on_sys_path(failing_site), ServingCore(ServingSettings()) as core, ExitStack() as res:
        context = RuntimeContext(Settings(), core, JsonCodec(), res)
        with pytest.raises(StreamserveError) as raised:
            build_runtime("failing-runtime", context)
    assert "failing-runtime" in str(raised.value), (
        "a runtime plug-in whose factory raises its own StreamserveError stops the server with "
        f"a message that does not name the plug-in: {raised.value!r}"
    )


def test_a_router_plugin_failing_to_build_is_a_configuration_error_naming_it(
    failing_site: Path,
) -> None:
    with on_sys_path(failing_site), pytest.raises(StreamserveError) as raised:
        load_router("failing-router", {})
    named = isinstance(raised.value, ConfigurationError) and "failing-router" in str(raised.value)
    assert named, (
        "a router plug-in that fails to build passes its own error through (here a "
        f"{type(raised.value).__name__}, an HTTP 'request' error) without naming the plug-in: "
        f"{raised.value!r}"
    )


def test_runtime_options_given_to_a_builtin_runtime_are_refused_like_codec_options() -> None:
    """An operator puts the embedded runtime's input under [runtime_options] (the documented
    home of 'the runtime's own settings'); it is silently ignored, and the server reads stdin."""
    settings = Settings(runtime="embedded", runtime_options={"data": "records.jsonl"})
    with ServingCore(ServingSettings()) as core, ExitStack() as resources:
        try:
            build_runtime("embedded", RuntimeContext(settings, core, JsonCodec(), resources))
        except ConfigurationError:
            return
    raise AssertionError(
        "runtime_options given to the built-in 'embedded' runtime are silently ignored (a "
        "built-in codec refuses codec.options: 'codec.options are for plug-in codecs')"
    )
