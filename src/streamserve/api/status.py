"""``streamserve status``: the FLIP-23-style statistics table of a running server."""

from __future__ import annotations

import ssl
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from streamserve.serving.slot import ModelRole

FETCH_TIMEOUT_S = 10.0
# What may not reach the terminal as it is: control characters (escape sequences set the title,
# clear the screen, write the clipboard) and format characters (a bidi override reorders text).
UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def print_status(
    console: Console,
    url: str,
    *,
    ca_file: Path | None = None,
    client_cert: Path | None = None,
) -> int:
    """Prints the statistics table of the server at ``url``, every key (read a page of
    ``/keys`` at a time); 2 if it cannot be read.

    An ``https`` URL is verified against ``ca_file`` (default: the system's CA certificates,
    or ``SSL_CERT_FILE``); ``client_cert`` (a PEM file holding the key and the certificate) is
    presented to a server that asks for one (``api.tls_ca_certs``).
    """
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if client_cert is not None:
            context.load_cert_chain(client_cert)
        # Pages of the server's own size (api.keys_page_size), which any server accepts.
        state = _read_json(f"{url.rstrip('/')}/keys", context)
        slots = list(state["keys"])
        while state.get("next_after") is not None:
            after = urllib.parse.quote(state["next_after"], safe="")
            state = _read_json(f"{url.rstrip('/')}/keys?after={after}", context)
            slots += state["keys"]
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError, KeyError) as err:
        reason = f"cannot read the serving state from {url}: {err}"
        console.print(f"streamserve: {printable(reason)}", markup=False, highlight=False)
        return 2
    title = f"Serving statistics at {escape(printable(url))} (µs per record, amortized per batch)"
    table = Table(title=title)
    for column in (
        "key",
        "model",
        "version",
        "state",
        "since",
        "invocations",
        "errors",
        "avg µs",
        "min µs",
        "max µs",
    ):
        table.add_column(column, no_wrap=True)
    for slot in slots:
        for role in ModelRole:  # the document has one entry per role, null if none holds it
            if slot[role] is not None:
                cells = [slot["key"], *_cells(slot[role], role)]
                table.add_row(*(Text(printable(cell)) for cell in cells))
    console.print(table)
    counts = state["counts"]
    console.print(
        f"{counts.get('records', 0):,} records, {counts.get('results', 0):,} results, "
        f"{counts.get('errors', 0):,} errors; {state['loads_pending']} loads pending"
    )
    return 0


def printable(text: str) -> str:
    """``text`` safe to print: keys and model names come from model messages, so a control or
    format character is shown escaped (``\\x1b``, ``\\u202e``), never passed to the terminal."""
    return "".join(_code(char) if _unprintable(char) else char for char in text)


def _unprintable(char: str) -> bool:
    return unicodedata.category(char) in UNPRINTABLE_CATEGORIES


def _code(char: str) -> str:
    point = ord(char)
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


def _read_json(url: str, context: ssl.SSLContext) -> Any:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S, context=context) as reply:  # noqa: S310 - the operator's URL
        return orjson.loads(reply.read())


def _cells(model: dict[str, Any], role: ModelRole) -> list[str]:
    since = datetime.fromtimestamp(model["since"]).strftime("%H:%M:%S") if model["since"] else "-"
    return [
        model["name"],
        model["version"],
        str(role),
        since,
        f"{model['invocations']:,}",
        f"{model['errors']:,}",
        f"{model['average_duration_s'] * 1e6:.2f}",
        f"{model['min_duration_s'] * 1e6:.2f}",
        f"{model['max_duration_s'] * 1e6:.2f}",
    ]
