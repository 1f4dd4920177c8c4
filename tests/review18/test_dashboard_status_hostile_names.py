"""``streamserve status`` prints keys and model names that come from model messages: nobody the
operator trusts chose them. The table must show them as they are (rich markup is text, not
style), never crash on them, and never pass a control sequence on to the operator's terminal."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from rich.console import Console
from rich.errors import MarkupError

from builders import onnx_constant, onnx_descriptor
from streamserve.api.server import ApiServer
from streamserve.api.status import print_status
from streamserve.descriptor import ModelDescriptor
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

MARKUP_KEY = "[bold]wine[/bold]"
CLOSING_TAG_KEY = "fraud[/x]"
TITLE_ESCAPE = "\x1b]0;owned\x07"  # sets the terminal's title
CLEAR_SCREEN = "\x1b[2J"
BIDI_OVERRIDE = "\u202e"  # shows what follows right to left: "evil" reads "live"


@contextmanager
def _serving(core: ServingCore, descriptors: list[ModelDescriptor]) -> Iterator[str]:
    for descriptor in descriptors:
        core.submit_model(descriptor)
    assert core.wait_for_models(60)
    server = ApiServer(core, ApiSettings(port=0), lambda: True)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _model(name: str, key: str, version: str = "") -> ModelDescriptor:
    return onnx_descriptor(name, onnx_constant(11, 1.0), key, version=version)


def _status(url: str) -> tuple[int, str]:
    out = io.StringIO()
    console = Console(file=out, width=300, force_terminal=True, color_system=None)
    code = print_status(console, url)
    return code, out.getvalue()


def test_markup_in_a_key_or_model_name_is_printed_as_text(core: ServingCore) -> None:
    models = [_model("[red]tree[/red]", MARKUP_KEY), _model("m", CLOSING_TAG_KEY)]
    try:
        with _serving(core, models) as url:
            code, printed = _status(url)
    except MarkupError as err:
        pytest.fail(f"streamserve status crashed on a key from a model message: {err!r}")
    assert code == 0
    assert MARKUP_KEY in printed, "a key's square brackets were taken as rich markup"
    assert "[red]tree[/red]" in printed
    assert CLOSING_TAG_KEY in printed


def test_control_sequences_in_names_never_reach_the_terminal(core: ServingCore) -> None:
    model = _model(
        f"graph{TITLE_ESCAPE}{CLEAR_SCREEN}", f"tty{BIDI_OVERRIDE}evil", f"v1{CLEAR_SCREEN}"
    )
    with _serving(core, [model]) as url:
        code, printed = _status(url)
    assert code == 0
    assert "\x1b" not in printed, "an escape sequence from a model name reached the terminal"
    assert "\x07" not in printed
    assert BIDI_OVERRIDE not in printed, "a bidi override from a key reached the terminal"
    assert "graph" in printed  # the model is listed, its control characters shown escaped
    assert r"\x1b" in printed
